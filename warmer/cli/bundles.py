"""`warmer save | export | import | restore`: bundles in and out of the store and this machine."""

from __future__ import annotations

from pathlib import Path

import click

from warmer.cli.keys import sign_option, signer_of, trust_of, trust_option
from warmer.cli.options import complete_ref, current_settings, json_option, store_option
from warmer.cli.output import console, emit_json, progress_bar
from warmer.cli.registry import insecure_option
from warmer.units import format_size

FORMAT_CHOICE = click.Choice(["zst", "gz"])


@click.command()
@click.option("--name", default="local", show_default=True, help="Snapshot name (job name).")
@click.option(
    "--kinds",
    help="Comma-separated cache kinds to take (triton, inductor, vllm, …); default: all found.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory for the bundle.",
)
@click.option(
    "--format",
    "fmt",
    type=FORMAT_CHOICE,
    default=None,
    help="Bundle compression [default: $WARMER_BUNDLE_FORMAT, bundle.format, else zst].",
)
@sign_option
@store_option
@json_option
def save(
    name: str,
    kinds: str | None,
    out: Path,
    fmt: str | None,
    sign_key: Path | None,
    store: Path | None,
    as_json: bool,
) -> None:
    """Snapshot this machine's compile caches into the store and export a bundle."""
    import time

    from warmer.provenance import Made, host_name, record, write_sidecar
    from warmer.saving import save as save_caches
    from warmer.store import Store
    from warmer.store.manifest import check_name

    check_name(name, "--name")
    signer = signer_of(sign_key)  # a wrong passphrase stops before any work
    kind_list = [k.strip() for k in kinds.split(",") if k.strip()] if kinds else None
    started = time.time()
    with Store(store) as opened:
        with progress_bar("saving") as update:
            result = save_caches(
                name=name,
                kinds=kind_list,
                out=out,
                store=opened,
                fmt=fmt or current_settings().bundle_format,  # type: ignore[arg-type]
                progress=update,
            )
        made = Made("save", runtime="host", host=host_name(), started=started, finished=time.time())
        envelope = record(opened, result.manifest, made, signer)
    signature = write_sidecar(result.bundle, envelope) if result.bundle else None
    if as_json:
        emit_json({**result.to_dict(), "signature": str(signature) if signature else None})
        return
    for kind, totals in sorted(result.harvest.kinds().items()):
        console.print(f"  {kind:<18} {totals['files']:>7} files {format_size(totals['bytes']):>9}")
    console.print(
        f"saved {result.snapshot.ref}: {len(result.manifest.files)} files, "
        f"{format_size(result.manifest.total_size)} -> {result.bundle}"
    )
    if signature:
        console.print(f"signed by {', '.join(k[:16] for k in envelope.signatures)} -> {signature}")


@click.command()
@click.argument("ref", shell_complete=complete_ref)
@click.option(
    "-o",
    "--output",
    default=".",
    show_default=True,
    help="Bundle file (its suffix must match the format), or a directory (an existing one, "
    "or a name ending in /) to put it in under its canonical name.",
)
@click.option(
    "--format",
    "fmt",
    type=FORMAT_CHOICE,
    default=None,
    help="Default: from -o's suffix, else $WARMER_BUNDLE_FORMAT, bundle.format, else zst.",
)
@sign_option
@store_option
@json_option
def export(
    ref: str,
    output: str,
    fmt: str | None,
    sign_key: Path | None,
    store: Path | None,
    as_json: bool,
) -> None:
    """Export the snapshot REF from the store as a bundle (with its signature beside it,
    BUNDLE.intoto.jsonl, when the store keeps a signed one or --sign signs it)."""
    from warmer.bundle import export_bundle, format_of_name
    from warmer.errors import UsageError
    from warmer.provenance import kept, sign_kept, write_sidecar
    from warmer.store import Store

    signer = signer_of(sign_key)
    destination = Path(output)
    directory = output.endswith("/") or destination.is_dir()
    if directory:
        fmt = fmt or current_settings().bundle_format
    else:
        named = format_of_name(destination.name)
        fmt = fmt or named or current_settings().bundle_format
        if named != fmt:
            wanted = {"zst": ".tar.zst", "gz": ".tar.gz or .tgz", "tar": ".tar"}[fmt]
            raise UsageError(
                f"-o {output}: a {fmt} bundle's file name ends in {wanted} "
                "(end -o with / to write into a directory under the canonical name)"
            )
    with Store(store) as opened:
        path = export_bundle(opened, ref, destination, fmt, directory=directory)  # type: ignore[arg-type]
        _info, manifest = opened.resolve(ref, touch=False)
        envelope = sign_kept(opened, manifest, signer) if signer else kept(opened, manifest)
    signature = write_sidecar(path, envelope)
    if as_json:
        emit_json(
            {
                "bundle": str(path),
                "bytes": path.stat().st_size,
                "signature": str(signature) if signature else None,
            }
        )
    else:
        console.print(f"exported {ref} -> {path} ({format_size(path.stat().st_size)})")
        if signature:
            console.print(f"signature -> {signature}")


@click.command(name="import")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@trust_option
@store_option
@json_option
def import_(bundle: Path, trust_keys: tuple[Path, ...], store: Path | None, as_json: bool) -> None:
    """Add a bundle to the store (every file's hash checked), with the signature beside it
    (BUNDLE.intoto.jsonl); --trust refuses it unless a trusted key signed it."""
    from warmer.provenance import import_signed
    from warmer.store import Store

    trust = trust_of(trust_keys)
    with Store(store) as opened:  # a bundle found corrupt halfway leaves no temp files
        info = import_signed(opened, bundle, trust)
    if as_json:
        emit_json(
            {"ref": info.ref, "snapshot": info.snapshot, "files": info.files, "bytes": info.size}
        )
    else:
        console.print(f"imported {info.ref}: {info.files} files, {format_size(info.size)}")


@click.command()
@click.argument("source", shell_complete=complete_ref)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Restore under this prefix instead of / (image builds, tests).",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="OLD=NEW",
    help="Put files recorded under OLD under NEW instead (e.g. a different TRITON_CACHE_DIR).",
)
@click.option("--dry-run", is_flag=True, help="Check everything, write nothing.")
@click.option("--force", is_flag=True, help="Restore even when the environment key differs.")
@click.option(
    "--auto", is_flag=True, help="With REGISTRY/REPO: pick the tag that matches this machine."
)
@trust_option
@insecure_option
@store_option
@json_option
def restore(
    source: str,
    root: Path,
    maps: tuple[str, ...],
    dry_run: bool,
    force: bool,
    auto: bool,
    trust_keys: tuple[Path, ...],
    insecure: bool | None,
    store: Path | None,
    as_json: bool,
) -> None:
    """Install SOURCE's caches where this machine's runtimes look for them.

    SOURCE is a bundle file, a registry reference REGISTRY/REPO[:TAG] (pulled into the store
    first; --auto picks the tag), or a store ref (pulled from the configured registry when
    it is not in the store). With --trust, a signature by a trusted key is checked before
    anything is written (docs/trust.md).
    """
    from warmer.errors import UsageError
    from warmer.restoring import restore as restore_bundle
    from warmer.sources import in_store, is_bundle
    from warmer.store import Store

    mapping: dict[str, str] = {}
    for item in maps:
        old, sep, new = item.partition("=")
        if not sep or not old.startswith("/") or not new.startswith("/"):
            raise UsageError(f"--map {item!r}: expected /OLD/PREFIX=/NEW/PREFIX")
        mapping[old] = new
    trust = trust_of(trust_keys)
    options = {"root": root, "force": force, "dry_run": dry_run, "mapping": mapping, "trust": trust}
    if is_bundle(source):
        if auto:
            raise UsageError("--auto picks a tag of a registry repository, not a bundle file")
        with progress_bar("restoring") as update:
            report = restore_bundle(source, progress=update, **options)  # type: ignore[arg-type]
    else:
        with Store(store) as opened:
            with progress_bar("pulling") as printer:
                info = in_store(
                    opened,
                    source,
                    auto=auto,
                    insecure=insecure,
                    progress=printer,
                    note=console.print,
                    restoring=True,
                    trust=trust,
                )[0]
            with progress_bar("restoring") as update:
                report = restore_bundle(info.ref, store=opened, progress=update, **options)  # type: ignore[arg-type]
    if as_json:
        emit_json(report.to_dict())
        return
    for warning in report.warnings:
        console.print(f"warning: {warning}")
    verb = "would write" if dry_run else "wrote"
    console.print(
        f"{report.name} ({report.env_tag}): {verb} {report.written} files "
        f"({format_size(report.bytes_written)}), {report.skipped_identical} already identical, "
        f"{report.rewritten} group files re-pointed, under {report.root}"
    )
