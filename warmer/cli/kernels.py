"""`warmer kernels ls | prune`: the Triton kernels of a cache directory, a snapshot or a bundle."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from warmer.cli.options import complete_ref, current_settings, json_option, store_option
from warmer.cli.output import ago, console, emit_json, table
from warmer.errors import UsageError, WarmerError
from warmer.kernels import (
    SORT_KEYS,
    Kernel,
    KernelFilter,
    KernelIndex,
    KernelPrunePlan,
    Source,
    default_cache_dir,
    plan_prune,
)
from warmer.units import format_size, parse_duration

F = TypeVar("F", bound=Callable[..., object])

#: What `ls -q` prints (a prefix of a kernel key) and `prune` accepts.
_KERNEL_ID_RE = re.compile(r"^[A-Z2-7]{4,52}$")


def _duration(_ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _filter_options(function: F) -> F:
    """The filters that `ls` and `prune` share, handed to the command as `kernel_filter`."""

    @functools.wraps(function)
    def command(**kwargs: Any) -> object:
        backend = kwargs.pop("backend")
        kwargs["kernel_filter"] = KernelFilter(
            name=kwargs.pop("name"),
            backend="hip" if backend == "rocm" else backend,
            arch=kwargs.pop("arch"),
            older_than=kwargs.pop("older_than"),
            younger_than=kwargs.pop("younger_than"),
            hits_below=kwargs.pop("hits_below"),
            hits_above=kwargs.pop("hits_above"),
        )
        return function(**kwargs)

    options = [
        click.option("--name", metavar="GLOB", help="Kernel name pattern, e.g. 'add*'."),
        click.option(
            "--backend",
            type=click.Choice(["cuda", "hip", "rocm"]),
            help="GPU backend (rocm is hip).",
        ),
        click.option("--arch", help="Target arch: 90 (or sm_90), gfx942."),
        click.option(
            "--older-than",
            callback=_duration,
            metavar="AGE",
            help="Last used (hit, else compiled) longer ago than this, e.g. 7d.",
        ),
        click.option(
            "--younger-than",
            callback=_duration,
            metavar="AGE",
            help="Last used more recently than this, e.g. 2w.",
        ),
        click.option(
            "--hits-below",
            type=click.IntRange(min=0),
            metavar="N",
            help="Fewer than N recorded hits.",
        ),
        click.option(
            "--hits-above",
            type=click.IntRange(min=0),
            metavar="N",
            help="More than N recorded hits.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command  # type: ignore[return-value]


def _cache_dir_option(function: F) -> F:
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="A Triton cache (or an Inductor or vLLM cache holding one) "
        "[default: $TRITON_CACHE_DIR or ~/.triton/cache].",
    )(function)


def _source(argument: str | None, cache_dir: Path | None, store: Path | None) -> Source:
    """A bundle file, else a store ref; with neither, the cache directory."""
    if argument is not None and cache_dir is not None:
        raise UsageError("give --cache-dir or a REF/BUNDLE, not both")
    if argument is None:
        directory = cache_dir or default_cache_dir()
        if not directory.is_dir():
            raise UsageError(
                f"{directory}: no such cache directory (pass --cache-dir or set TRITON_CACHE_DIR)"
            )
        return Source("dir", directory)
    if Path(argument).is_file():
        return Source("bundle", Path(argument))
    if argument.endswith((".tar.zst", ".tar.gz", ".tar")):
        raise UsageError(f"{argument}: no such bundle")
    return Source("store", argument, store_root=store)


def _table(kernels: list[Kernel]) -> None:
    total = sum(k.size for k in kernels)
    rows = [
        (
            k.short_id,
            k.name,
            k.backend,
            k.arch,
            k.num_warps,
            k.num_stages,
            format_size(k.shared or 0),
            k.kinds_str,
            format_size(k.size),
            k.hits,
            ago(k.last_used),
        )
        for k in kernels
    ]
    plural = "" if len(kernels) == 1 else "s"
    columns = ("ID", "NAME", "BACKEND", "ARCH", "WARPS", "STAGES", "SHARED", "FILES", "SIZE")
    table(
        [*columns, "HITS", "LAST USED"],
        rows,
        right=["WARPS", "STAGES", "SHARED", "SIZE", "HITS"],
        footer=f"{len(kernels)} kernel{plural}, {format_size(total)} total",
    )


@click.group("kernels")
def kernels() -> None:
    """Triton kernels: list, filter, prune and dedupe a cache; hits come from
    TRITON_CACHE_MANAGER=warmer.tracking:TrackingCacheManager."""


@kernels.command("ls")
@click.argument("source", required=False, metavar="[REF|BUNDLE]", shell_complete=complete_ref)
@_cache_dir_option
@_filter_options
@click.option(
    "--sort",
    type=click.Choice(SORT_KEYS),
    default="name",
    show_default=True,
    help="size and hits: largest first; age: least recently used first.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only kernel ids, one per line.")
@store_option
@json_option
def ls(
    source: str | None,
    cache_dir: Path | None,
    sort: str,
    quiet: bool,
    store: Path | None,
    as_json: bool,
    kernel_filter: KernelFilter,
) -> None:
    """List the kernels of a cache directory, a store snapshot (REF) or a BUNDLE."""
    where = _source(source, cache_dir, store)
    with KernelIndex(current_settings().state_dir) as index:
        scan = index.scan(where)
        if quiet and not as_json:
            click.echo(
                "".join(f"{key[:10]}\n" for key in index.kernel_ids(scan, kernel_filter, sort)),
                nl=False,
            )
            found = None
        else:
            found = index.kernels(scan, kernel_filter, sort)
    summary = scan.summary()
    if found is not None and as_json:
        emit_json(
            {
                "kernels": [kernel.to_json() for kernel in found],
                "total": len(found),
                "bytes": sum(kernel.size for kernel in found),
                "warning": summary,
            }
        )
    elif found is not None:
        _table(found)
    if summary:
        console.print(f"warning: {summary}", soft_wrap=True)


@kernels.command("prune")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@_cache_dir_option
@_filter_options
@click.option("--full", is_flag=True, help="Remove whole entries, not only their IR.")
@click.option(
    "--dedupe",
    is_flag=True,
    help="Remove entries whose binary is byte-identical to another's; keep the last used.",
)
@click.option("--all", "everything", is_flag=True, help="Select every kernel (no ids, no filters).")
@click.option("--dry-run", is_flag=True, help="Show the plan; delete nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def prune(
    ids: tuple[str, ...],
    cache_dir: Path | None,
    full: bool,
    dedupe: bool,
    everything: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    kernel_filter: KernelFilter,
) -> None:
    """Prune the kernels of a cache directory (IDs from `ls -q`, and/or the filters).

    By default only the IR goes (.source .ttir .ttgir .llir): every kernel still loads.
    With no ID and no filter nothing is selected: --all says every kernel (--dedupe alone
    needs none, as it keeps one of each binary).
    """
    not_ids = [value for value in ids if not _KERNEL_ID_RE.match(value)]
    if not_ids:
        raise UsageError(
            f"{not_ids[0]}: not a kernel id. prune changes a cache directory (--cache-dir); "
            "store snapshots and bundles are immutable (prune the store with `warmer prune`)"
        )
    if full and dedupe:
        raise UsageError("--full and --dedupe are different plans: pick one")
    selected = bool(ids) or kernel_filter != KernelFilter()
    if everything and selected:
        raise UsageError("--all selects every kernel: give it without ids or filters")
    if not (selected or everything or dedupe):
        # `prune $(ls -q …)` with an empty list must not mean "every kernel"
        raise UsageError(
            "no kernel selected: give ids (from `warmer kernels ls -q`), a filter "
            "(--name, --older-than, …), or --all for every kernel"
        )
    if as_json and not (yes or dry_run):
        raise UsageError("prune --json cannot ask for confirmation: pass -y (or --dry-run)")
    where = _source(None, cache_dir, None)
    with KernelIndex(current_settings().state_dir) as index:
        scan = index.scan(where)
        found = index.kernels(scan, kernel_filter)
    if ids:
        found = [k for k in found if k.hash.startswith(ids)]
    plan = plan_prune(Path(where.location), found, "dedupe" if dedupe else "full" if full else "ir")
    summary = scan.summary()
    if summary:
        console.print(f"warning: {summary}", soft_wrap=True)
    if not as_json and plan.items:
        _plan_table(plan)
    if not plan.items or dry_run:
        result = None
    elif yes or click.confirm(f"About to delete {plan.describe()}. Proceed?", err=True):
        result = plan.execute()
    else:
        console.print("Nothing deleted.")
        return
    if as_json:
        emit_json(
            {
                "mode": plan.mode,
                "dry_run": dry_run,
                "kernels": [action.to_json() for action in plan.items],
                "files": plan.file_count,
                "expected_freed": plan.expected_freed,
                "freed": result.freed if result else 0,
                "errors": list(result.errors) if result else [],
            }
        )
    elif not plan.items:
        console.print("Nothing to prune.")
    elif result is None:
        console.print(f"Would delete {plan.describe()}.")
    else:
        console.print(
            f"Deleted {result.files} files of {result.entries} kernels, "
            f"freed {format_size(result.freed)}."
        )
    if result and result.errors:
        for error in result.errors:
            console.print(f"error: {error}")
        raise WarmerError(f"{len(result.errors)} kernel(s) could not be pruned")


def _plan_table(plan: KernelPrunePlan) -> None:
    rows = [
        (
            action.kernel.short_id,
            action.kernel.name,
            action.kernel.backend,
            action.kernel.arch,
            "whole entry" if action.whole else " ".join(f.kind for f in action.files),
            action.reason,
            format_size(action.freed),
        )
        for action in plan.items
    ]
    table(
        ["ID", "NAME", "BACKEND", "ARCH", "REMOVES", "WHY", "SIZE"],
        rows,
        right=["SIZE"],
        footer=f"{plan.describe()} to free",
    )
