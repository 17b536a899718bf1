"""`warmer key generate`, and the `--sign KEY` / `--trust KEY` options of the commands that
sign bundles (run, save, export, push) and of those that require signatures (restore, pull,
import). See docs/trust.md."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from warmer.cli.options import current_settings, json_option
from warmer.cli.output import console, emit_json

if TYPE_CHECKING:
    from securesystemslib.signer import CryptoSigner

    from warmer.provenance import Trust

F = TypeVar("F", bound=Callable[..., object])


def sign_option(function: F) -> F:
    """`--sign KEY`: sign the bundle's provenance with this private key."""
    return click.option(
        "--sign",
        "sign_key",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Sign the provenance with this private key (passphrase: "
        "$WARMER_SIGNING_PASSPHRASE or a prompt) [default: $WARMER_SIGNING_KEY, signing.key].",
    )(function)


def trust_option(function: F) -> F:
    """`--trust KEY` (repeatable): require a signature by one of these public keys."""
    return click.option(
        "--trust",
        "trust_keys",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Refuse, before writing anything, what no signature by this public key covers "
        "(repeatable) [default: trust.keys when trust.require is set].",
    )(function)


def signer_of(path: Path | None) -> CryptoSigner | None:
    """The signer of `--sign` (else the `signing.key` setting), None when neither is given."""
    from warmer.provenance import passphrase_source
    from warmer.signing import load_signer

    settings = current_settings()
    path = path or settings.signing_key
    if path is None:
        return None
    return load_signer(path, passphrase_source(settings, lambda: _prompt(f"passphrase for {path}")))


def trust_of(paths: tuple[Path, ...]) -> Trust | None:
    """The requirement of `--trust` (else the `trust.*` settings), None when there is none."""
    from warmer.provenance import Trust

    return Trust.of(paths, current_settings())


def _prompt(text: str) -> str | None:
    """A passphrase typed on a terminal (never echoed); None without one."""
    if not sys.stdin.isatty():
        return None
    value: str = click.prompt(text, hide_input=True, err=True)
    return value


@click.group("key")
def key() -> None:
    """Signing keys for the provenance of bundles."""


@key.command("generate")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["ed25519", "ecdsa"]),
    default="ed25519",
    show_default=True,
    help="ecdsa: ECDSA on P-256.",
)
@click.option(
    "-o",
    "--output",
    "prefix",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The private key file (0600); its public key goes to OUTPUT.pub.",
)
@click.option(
    "--encrypt",
    is_flag=True,
    help="Encrypt the private key with a passphrase: $WARMER_SIGNING_PASSPHRASE, else asked "
    "for twice. (With that variable set, the key is always encrypted.)",
)
@json_option
def generate(kind: str, prefix: Path, encrypt: bool, as_json: bool) -> None:
    """Make a key pair: sign with OUTPUT (--sign), trust OUTPUT.pub (--trust)."""
    from warmer.errors import UsageError
    from warmer.signing import generate as generate_pair

    secret = current_settings().signing_passphrase
    passphrase = secret.get_secret_value() if secret is not None else None
    if encrypt and passphrase is None:
        if not sys.stdin.isatty():
            raise UsageError("--encrypt needs $WARMER_SIGNING_PASSPHRASE or a terminal to ask on")
        passphrase = click.prompt("passphrase", hide_input=True, confirmation_prompt=True, err=True)
    public, keyid = generate_pair(kind, prefix, passphrase)  # type: ignore[arg-type]
    if as_json:
        emit_json(
            {
                "private": str(prefix),
                "public": str(public),
                "keyid": keyid,
                "type": kind,
                "encrypted": bool(passphrase),
            }
        )
        return
    state = "encrypted" if passphrase else "NOT encrypted: keep it secret"
    console.print(f"private key {prefix} (0600, {state})")
    console.print(f"public key  {public}  (key id {keyid[:16]}…)")
