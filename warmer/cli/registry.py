"""`warmer push | pull | pin | unpin`: bundles through an OCI registry, and the cold tier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from warmer.cli.keys import sign_option, signer_of, trust_of, trust_option
from warmer.cli.options import complete_ref, current_settings, json_option, store_option
from warmer.cli.output import console, emit_json, progress_bar
from warmer.units import format_size

F = TypeVar("F", bound=Callable[..., object])


def insecure_option(function: F) -> F:
    """`--insecure`: plain HTTP to a registry that is not on loopback."""
    return click.option(
        "--insecure",
        is_flag=True,
        default=None,
        help="Allow plain HTTP to a non-loopback registry [default: $WARMER_REGISTRY_INSECURE].",
    )(function)


@click.command()
@click.argument("source", shell_complete=complete_ref)
@click.argument("target", required=False)
@click.option("--as-image", is_flag=True, help="Push the runnable-image form (COPY --from=…).")
@click.option(
    "--base",
    metavar="TAG",
    help="Cut layers against this tag (`none`: no base) [default: the tag itself, else the "
    "closest push of the same job].",
)
@sign_option
@insecure_option
@store_option
@json_option
def push(
    source: str,
    target: str | None,
    as_image: bool,
    base: str | None,
    sign_key: Path | None,
    insecure: bool | None,
    store: Path | None,
    as_json: bool,
) -> None:
    """Push SOURCE (a bundle file, a registry reference or a store ref) to TARGET,
    REGISTRY/REPO[:TAG].

    The tag defaults to the env tag; the push is also tagged <env tag>-<snapshot id>, a tag
    that no later push moves, so an earlier push stays reachable. Without TARGET, the
    configured registry is used (REGISTRY/PREFIX/<job name>:<env tag>, see
    configs/warmer.yaml). A signed provenance (kept in the store, beside a bundle file, or
    made by --sign) goes along as a referrer of the pushed manifest (tag sha256-<hex>.att).
    """
    from warmer.errors import UsageError
    from warmer.oci import Reference
    from warmer.provenance import import_signed, sign_kept
    from warmer.registry import push as push_bundle
    from warmer.registry import tier_reference
    from warmer.sources import allow_insecure, in_store, is_bundle
    from warmer.store import Store

    explicit = Reference.parse(target) if target else None  # checked before any work
    registry = current_settings().registry
    if explicit is None and not registry:
        raise UsageError(
            "no TARGET given and no registry configured (WARMER_REGISTRY or registry.url)"
        )
    signer = signer_of(sign_key)
    with Store(store) as opened:
        if is_bundle(source):
            info = import_signed(opened, Path(source), None)
        else:
            with progress_bar("pulling") as printer:
                info = in_store(
                    opened, source, insecure=insecure, progress=printer, note=console.print
                )[0]
        reference = explicit or tier_reference(str(registry), info.name, info.env_tag)
        if signer is not None:
            sign_kept(opened, opened.resolve(info.ref, touch=False)[1], signer)
        with progress_bar("pushing") as printer:
            report = push_bundle(
                opened,
                info.ref,
                reference,
                form="image" if as_image else "artifact",
                insecure=allow_insecure(insecure),
                base=base,
                progress=printer,
            )
    if as_json:
        emit_json(report.to_dict())
        return
    console.print(
        f"pushed {info.ref} -> {report.reference} ({report.form}, {report.digest[:19]}…): "
        f"{report.layers} layers, {report.layers_reused} reused from "
        f"{report.base or 'no base'}, {format_size(report.bytes_sent)} sent of "
        f"{format_size(report.bytes)}; also tagged {report.snapshot_tag} (never moved)"
    )
    if report.attestation:
        console.print(f"signature -> {report.attestation}")


@click.command()
@click.argument("source")
@click.option("--auto", is_flag=True, help="Pick the tag whose env key matches this machine.")
@trust_option
@insecure_option
@store_option
@json_option
def pull(
    source: str,
    auto: bool,
    trust_keys: tuple[Path, ...],
    insecure: bool | None,
    store: Path | None,
    as_json: bool,
) -> None:
    """Pull SOURCE, REGISTRY/REPO[:TAG], into the local store (every digest checked), with
    its signature; --trust refuses it, before a layer is fetched, unless a trusted key signed
    it."""
    from warmer.sources import pull as pull_source
    from warmer.store import Store

    trust = trust_of(trust_keys)
    with Store(store) as opened, progress_bar("pulling") as printer:
        report = pull_source(
            opened, source, auto=auto, insecure=insecure, progress=printer, trust=trust
        )
    if as_json:
        emit_json(report.to_dict())
        return
    console.print(
        f"pulled {report.reference} -> {report.ref}: {report.files} files, "
        f"{format_size(report.bytes)} ({report.layers_fetched} layers, "
        f"{format_size(report.bytes_received)} received)"
    )
    if report.signed_by:
        verified = "verified" if trust is not None else "not verified: no --trust"
        console.print(f"signed by {', '.join(k[:16] for k in report.signed_by)} ({verified})")


def _pin_command(pinned: bool) -> click.Command:
    verb = "pin" if pinned else "unpin"

    @click.command(verb)
    @click.argument("ref", shell_complete=complete_ref)
    @store_option
    @json_option
    def command(ref: str, store: Path | None, as_json: bool) -> None:
        from warmer.store import Store

        with Store(store) as opened:
            info = opened.resolve(ref, touch=False)[0]
            opened.pin(info.ref, pinned)
        result: dict[str, Any] = {"ref": info.ref, "pinned": pinned}
        if as_json:
            emit_json(result)
        else:
            console.print(f"{verb}ned {info.ref}")

    command.help = (
        "Keep REF through every `warmer prune`." if pinned else "Let `warmer prune` drop REF again."
    )
    return command


pin = _pin_command(True)
unpin = _pin_command(False)
