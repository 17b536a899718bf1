"""The `warmer` command. Subcommands load lazily so that `--help` stays fast."""

from __future__ import annotations

import importlib
import sys

import click

from warmer import __version__
from warmer.cli.options import App
from warmer.errors import WarmerError, printable

#: command name -> "module:attribute" under warmer.cli
COMMANDS = {
    "run": "run:run",
    "validate": "validate:validate",
    "env": "env:env",
    "save": "bundles:save",
    "export": "bundles:export",
    "import": "bundles:import_",
    "restore": "bundles:restore",
    "ls": "store:ls",
    "show": "store:show",
    "verify": "store:verify",
    "gc": "store:gc",
    "prune": "store:prune",
    "rm": "store:rm",
    "kernels": "kernels:kernels",
    "push": "registry:push",
    "pull": "registry:pull",
    "pin": "registry:pin",
    "unpin": "registry:unpin",
    "check": "check:check",
    "doctor": "doctor:doctor",
    "key": "keys:key",
    "capture": "capture:capture",
    "k8s": "k8s:k8s",
}


class LazyGroup(click.Group):
    """A group whose commands are imported only when used, and whose errors become exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        module = importlib.import_module(f"warmer.cli.{module_name}")
        command = getattr(module, attribute)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> object:
        as_json = "--json" in [*ctx.protected_args, *ctx.args]
        try:
            return super().invoke(ctx)
        except WarmerError as exc:
            # its message may carry text from outside (a registry, a bundle): shown escaped
            click.echo(f"error: {printable(exc, keep=chr(10))}", err=True)
            log_tail = getattr(exc, "log_tail", "")
            if log_tail:
                click.echo("--- last lines of the log ---", err=True)
                click.echo(log_tail.rstrip("\n"), err=True)
            fail(ctx, str(exc), exc.exit_code, as_json)
        except OSError as exc:  # the machine's own: no space left, no permission, an I/O error
            click.echo(f"error: {exc}", err=True)
            fail(ctx, str(exc), 1, as_json)
        except (KeyboardInterrupt, click.exceptions.Abort):
            # click turns Ctrl-C into Abort ("Aborted!", exit 1); the documented code is 130
            click.echo("interrupted", err=True)
            fail(ctx, "interrupted", 130, as_json)
        raise AssertionError("unreachable")


def fail(ctx: click.Context, message: str, exit_code: int, as_json: bool) -> None:
    """Exit with `exit_code`; under `--json`, a script reading stdout gets the error as a
    document (`{"error": …, "exit": N}`) instead of nothing."""
    if as_json:
        from warmer.cli.output import emit_json_error

        emit_json_error(message, exit_code)
    ctx.exit(exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="warmer")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Plain progress lines every second, also on a terminal (in place of the bar).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Warm compile caches in a container, store them, ship them as bundles.

    Exit codes: 0 ok, 1 unexpected failure, 2 bad usage or invalid spec/bundle,
    3 the warm-up job failed or timed out, 4 environment mismatch on restore,
    5 nothing to restore for this environment, 130 interrupted.
    """
    ctx.ensure_object(App).verbose = verbose


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="warmer")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
