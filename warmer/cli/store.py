"""`warmer ls | show | verify | gc | prune | rm`: look into the store and keep it small."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from warmer.cli.options import complete_ref, current_settings, json_option, store_option
from warmer.cli.output import ago, console, emit_json, table
from warmer.errors import BundleError, StoreError, UsageError, printable
from warmer.units import format_duration, format_size, parse_duration, parse_size

if TYPE_CHECKING:
    from warmer.store import PrunePlan, RemoveResult, SnapshotInfo, Store
    from warmer.store.manifest import Manifest

#: Problems listed for people before "… and N more" (JSON lists them all).
_PROBLEMS_SHOWN = 20


def _open_store(root: Path | None) -> Store:
    from warmer.store import Store

    return Store(root)


def _snapshot_json(info: SnapshotInfo) -> dict[str, object]:
    return dataclasses.asdict(info)


@click.command("ls")
@click.argument("refs", nargs=-1, metavar="[REF]...")
@click.option("-q", "--quiet", is_flag=True, help="Print only refs, one per line.")
@click.option(
    "-a",
    "--all",
    "history",
    is_flag=True,
    help="Also list the earlier snapshots of each ref (kept until pruned or removed).",
)
@store_option
@json_option
def ls(
    refs: tuple[str, ...], quiet: bool, history: bool, store: Path | None, as_json: bool
) -> None:
    """List the snapshots in the store (only REF... when given), and what gc would remove."""
    with _open_store(store) as opened:
        infos = opened.list()
        earlier = opened.history()
        if refs:
            wanted = {opened.resolve(ref, touch=False)[0].ref for ref in refs}
            infos = [info for info in infos if info.ref in wanted]
            earlier = [info for info in earlier if info.ref in wanted]
        stored = opened.stored_size()
        shown = sorted([*infos, *earlier], key=_listed) if history else infos
        if quiet and not as_json:  # ids for scripts: no scan of the objects
            for info in shown:
                click.echo(info.ref if info.replaced is None else info.short_id)
            return
        garbage = opened.unreferenced()
    referenced = sum(info.size for info in infos)
    unreferenced = garbage.objects_removed + garbage.temp_files_removed
    if as_json:
        emit_json(
            {
                "snapshots": [_snapshot_json(info) for info in infos],
                "history": [_snapshot_json(info) for info in earlier],
                "referenced": referenced,
                "stored": stored,
                "unreferenced": {"files": unreferenced, "bytes": garbage.bytes_freed},
            }
        )
        return
    if not shown:
        console.print(f"No snapshots in {opened.root}.")
    else:
        plural = "" if len(infos) == 1 else "s"
        footer = f"{len(infos)} snapshot{plural}, {format_size(referenced)} referenced, "
        footer += f"{format_size(stored)} stored"
        if earlier and not history:
            footer += f"; {len(earlier)} earlier (warmer ls --all)"
        table(
            ["REF", "ID", "FILES", "SIZE", "CREATED", "LAST USED", "PINNED"],
            [_ls_row(info) for info in shown],
            right=["FILES", "SIZE"],
            footer=footer,
        )
    if unreferenced:
        console.print(
            f"{unreferenced} unreferenced file(s), {format_size(garbage.bytes_freed)}: "
            "warmer gc removes them"
        )


def _listed(info: SnapshotInfo) -> tuple[str, int, float]:
    """A ref, then its earlier snapshots, the most recently replaced first."""
    return (info.ref, info.replaced is not None, -(info.replaced or 0))


def _label(info: SnapshotInfo) -> str:
    """A ref, or `REF (earlier)` for one of its earlier snapshots, in a plan's table."""
    return info.ref if info.replaced is None else f"{info.ref} (earlier)"


def _ls_row(info: SnapshotInfo) -> tuple[object, ...]:
    ref = info.ref if info.replaced is None else f"  earlier, replaced {ago(info.replaced)}"
    pinned = "yes" if info.pinned else ""
    return (ref, info.short_id, info.files, format_size(info.size), ago(info.created),
            ago(info.last_access), pinned)  # fmt: skip


def _kind_totals(manifest: Manifest) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"files": 0, "size": 0})
    for entry in manifest.files:
        totals[entry.kind]["files"] += 1
        totals[entry.kind]["size"] += entry.size
    return dict(sorted(totals.items()))


def _describe_verify(verify: dict[str, object] | None) -> str:
    if not verify:
        return "not verified"
    parts = []
    hit_rate, cold, warm = verify.get("hit_rate"), verify.get("cold_s"), verify.get("warm_s")
    if isinstance(hit_rate, int | float):
        parts.append(
            f"hit rate {hit_rate:.0%} ({verify.get('hits')} hits, {verify.get('misses')} misses)"
        )
    if isinstance(cold, int | float) and isinstance(warm, int | float):
        parts.append(f"cold {format_duration(cold)} -> warm {format_duration(warm)}")
    return ", ".join(parts) or str(verify)


def _describe_provenance(provenance: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Lines of `warmer show` for a kept statement: what made it, from which image, who
    signed it (key ids as the envelope states them: `--trust` is what verifies them)."""
    if provenance is None:
        return [("provenance", "none kept")]
    predicate = provenance["statement"]["predicate"]
    build = _mapping(predicate.get("buildDefinition"))
    inner = _mapping(build.get("internalParameters"))
    builder = _mapping(_mapping(predicate.get("runDetails")).get("builder"))
    version = _mapping(builder.get("version")).get("warmer")
    made = f"{build.get('buildType')} by warmer {version}"
    if inner.get("runtime"):
        made += f", {inner.get('runtime')} on {inner.get('host')}"
    lines = [("provenance", made)]
    for item in build.get("resolvedDependencies") or []:
        digest = _mapping(_mapping(item).get("digest")).get("sha256")
        image = f"{_mapping(item).get('name')}" + (f" (sha256:{digest})" if digest else "")
        lines.append(("image", image))
    signers = provenance["signatures"]
    lines.append(("signed by", ", ".join(signers) if signers else "unsigned"))
    return lines


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@click.command("show")
@click.argument("ref", shell_complete=complete_ref)
@click.option("--files", "list_files", is_flag=True, help="List every file.")
@store_option
@json_option
def show(ref: str, list_files: bool, store: Path | None, as_json: bool) -> None:
    """Describe the snapshot REF (a ref, a name, or an id prefix)."""
    from warmer.cli.output import progress_bar
    from warmer.provenance import describe, kept
    from warmer.sources import local_or_tier

    with _open_store(store) as opened, progress_bar("pulling") as printer:
        info, manifest = local_or_tier(
            opened, ref, touch=False, progress=printer, note=console.print
        )
        envelope = kept(opened, manifest)
        provenance = describe(envelope, info.ref) if envelope is not None else None
    kinds = _kind_totals(manifest)
    job_name = manifest.job.get("name") if manifest.job else None
    if as_json:
        document: dict[str, object] = {
            **_snapshot_json(info),
            "env": manifest.env,
            "env_digest": manifest.env_digest,
            "job": manifest.job,
            "verify": manifest.verify,
            "kinds": kinds,
            "provenance": provenance,
        }
        if list_files:
            document["file_list"] = [entry.to_dict() for entry in manifest.files]
        emit_json(document)
        return
    # a pulled or imported manifest's own text: shown escaped
    env = printable("  ".join(f"{k}={v}" for k, v in sorted(manifest.env.items()) if v))
    fields = [
        ("name", info.name),
        ("ref", info.ref),
        ("snapshot", info.snapshot),
        ("content id", info.content_id),
        ("env tag", info.env_tag),
        ("env", env),
        ("job", job_name or "-"),
        ("verify", _describe_verify(manifest.verify)),
        ("created", ago(info.created)),
        ("last used", ago(info.last_access)),
        ("pinned", "yes" if info.pinned else "no"),
        *_describe_provenance(provenance),
    ]
    for label, value in fields:
        click.echo(f"{label + ':':<12} {value}")  # plain lines: long digests must not wrap
    click.echo()
    rows = [(kind, totals["files"], format_size(totals["size"])) for kind, totals in kinds.items()]
    table(
        ["KIND", "FILES", "SIZE"],
        rows,
        right=["FILES", "SIZE"],
        footer=f"{info.files} files, {format_size(info.size)}",
    )
    if list_files:
        click.echo()
        table(
            ["PATH", "KIND", "SIZE", "MODE"],
            [(e.path, e.kind, format_size(e.size), f"{e.mode:o}") for e in manifest.files],
            right=["SIZE"],
        )


@click.command("verify")
@click.argument("source", required=False, metavar="[BUNDLE|REF]")
@store_option
@json_option
def verify(source: str | None, store: Path | None, as_json: bool) -> None:
    """Check the store (every object re-hashed), one snapshot REF of it, or a BUNDLE file."""
    from warmer.sources import is_bundle

    if source is not None and is_bundle(source):
        _verify_bundle(Path(source), as_json)
        return
    with _open_store(store) as opened:
        report = opened.verify() if source is None else opened.verify_snapshot(source)
    what = "the store" if source is None else source
    if as_json:
        emit_json({**dataclasses.asdict(report), "ok": report.ok})
    else:
        _print_problems(report.problems)
        console.print(
            f"Checked {report.objects_checked} objects: "
            + ("no problems." if report.ok else f"{len(report.problems)} problem(s).")
        )
        if report.garbage:
            console.print(
                f"{report.garbage} leftover file(s) that no snapshot uses; warmer gc removes them."
            )
    if not report.ok:
        raise StoreError(f"{what} has {len(report.problems)} problem(s)")


def _verify_bundle(bundle: Path, as_json: bool) -> None:
    from warmer.bundle import verify_bundle

    problems = verify_bundle(bundle)
    if as_json:
        emit_json({"bundle": str(bundle), "problems": problems, "ok": not problems})
    else:
        _print_problems(problems)
        console.print(
            f"{bundle}: " + (f"{len(problems)} problem(s)." if problems else "no problems.")
        )
    if problems:
        raise BundleError(f"{bundle} has {len(problems)} problem(s)")


def _print_problems(problems: list[str]) -> None:
    for problem in problems[:_PROBLEMS_SHOWN]:
        console.print(f"  {problem}")
    if len(problems) > _PROBLEMS_SHOWN:
        console.print(f"  … and {len(problems) - _PROBLEMS_SHOWN} more (--json lists them all)")


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@store_option
@json_option
def gc(dry_run: bool, store: Path | None, as_json: bool) -> None:
    """Remove objects no snapshot uses and files that interrupted writes left."""
    with _open_store(store) as opened:
        result = opened.gc(dry_run=dry_run)
    if as_json:
        emit_json(dataclasses.asdict(result))
        return
    verb = "Would remove" if dry_run else "Removed"
    console.print(
        f"{verb} {result.objects_removed} object(s) and {result.temp_files_removed} temp file(s): "
        f"{format_size(result.bytes_freed)}."
    )


@click.command("prune")
@click.option("--max-size", help="Keep the store's referenced bytes under this size (e.g. 20G).")
@click.option("--older-than", help="Drop snapshots unused for this long (e.g. 30d).")
@click.option("--dry-run", is_flag=True, help="Show the plan; delete nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@store_option
@json_option
def prune(
    max_size: str | None,
    older_than: str | None,
    dry_run: bool,
    yes: bool,
    store: Path | None,
    as_json: bool,
) -> None:
    """Drop least recently used snapshots (never pinned ones), then their content."""
    budget, age = _prune_limits(max_size, older_than)
    if as_json and not (yes or dry_run):
        raise UsageError("prune --json cannot ask for confirmation: pass -y (or --dry-run)")
    with _open_store(store) as opened:
        plan = opened.plan_prune(max_size=budget, older_than=age)
        size = format_size(plan.expected_freed)
        if not as_json and plan.items:
            table(
                ["REF", "ID", "SIZE", "LAST USED"],
                [
                    (_label(i), i.short_id, format_size(i.size), ago(i.last_access))
                    for i in plan.items
                ],
                right=["SIZE"],
            )
        result = _confirm_and_execute(plan, dry_run=dry_run, yes=yes)
    if result is None and not (dry_run or not plan.items):
        return
    if as_json:
        emit_json(
            {
                "refs": [_snapshot_json(info) for info in plan.items],
                "expected_freed": plan.expected_freed,
                "freed": result.freed if result else 0,
                "kept": [_snapshot_json(info) for info in result.kept] if result else [],
                "dry_run": dry_run,
            }
        )
    elif not plan.items:
        console.print("Nothing to prune.")
    elif result is None:
        console.print(f"Would delete {len(plan.items)} snapshot(s), {size}.")
    else:
        _print_kept(result)
        console.print(
            f"Deleted {len(result.removed)} snapshot(s), freed {format_size(result.freed)}."
        )


def _confirm_and_execute(
    plan: PrunePlan[SnapshotInfo, RemoveResult], *, dry_run: bool, yes: bool
) -> RemoveResult | None:
    """Execute the plan once confirmed (`-y` or the prompt); None when nothing ran.

    The prompt waits with the shared lock held, so another process may pin, move or use a
    planned ref meanwhile: execution checks again and keeps those (`RemoveResult.kept`).
    """
    if not plan.items or dry_run:
        return None
    count = len(plan.items)
    prompt = f"About to delete {count} snapshot{'' if count == 1 else 's'}, "
    if yes or click.confirm(f"{prompt}{format_size(plan.expected_freed)}. Proceed?", err=True):
        return plan.execute()
    console.print("Nothing deleted.")
    return None


def _print_kept(result: RemoveResult) -> None:
    for info in result.kept:
        console.print(f"kept {info.ref} {info.short_id}: pinned, moved or used since the plan")


@click.command("rm")
@click.argument("refs", nargs=-1, metavar="REF...")
@click.option("--force", is_flag=True, help="Remove pinned refs too.")
@click.option("--dry-run", is_flag=True, help="Show what would go; remove nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@store_option
@json_option
def rm(
    refs: tuple[str, ...],
    force: bool,
    dry_run: bool,
    yes: bool,
    store: Path | None,
    as_json: bool,
) -> None:
    """Remove the refs REF... (with their earlier snapshots), or an earlier snapshot by id.

    Pinned refs need --force. The content stays until `warmer gc`, which frees what no
    other snapshot uses.
    """
    if as_json and not (yes or dry_run):
        raise UsageError("rm --json cannot ask for confirmation: pass -y (or --dry-run)")
    with _open_store(store) as opened:
        plan = opened.plan_remove(refs, force=force)
        if not as_json:
            table(
                ["REF", "ID", "SIZE", "CREATED", "PINNED"],
                [
                    (
                        _label(info),
                        info.short_id,
                        format_size(info.size),
                        ago(info.created),
                        "yes" if info.pinned else "",
                    )
                    for info in plan.items
                ],
                right=["SIZE"],
            )
        result = _confirm_and_execute(plan, dry_run=dry_run, yes=yes)
    if result is None and not dry_run:
        return
    if as_json:
        emit_json(
            {
                "refs": [_snapshot_json(info) for info in plan.items],
                "removed": [_snapshot_json(info) for info in result.removed] if result else [],
                "kept": [_snapshot_json(info) for info in result.kept] if result else [],
                "gc_frees": plan.expected_freed,
                "dry_run": dry_run,
            }
        )
    elif result is None:
        console.print(
            f"Would remove {len(plan.items)} snapshot(s); "
            f"warmer gc would then free {format_size(plan.expected_freed)}."
        )
    else:
        _print_kept(result)
        console.print(
            f"Removed {len(result.removed)} snapshot(s); "
            f"warmer gc frees {format_size(plan.expected_freed)}."
        )


def _prune_limits(max_size: str | None, older_than: str | None) -> tuple[int | None, float | None]:
    """Parse the options; with neither, fall back to the configured budget."""
    size_source = "--max-size"
    if max_size is None and older_than is None:
        max_size, size_source = current_settings().max_size, "$WARMER_MAX_SIZE or store.max_size"
        if max_size is None:
            raise UsageError(
                "prune needs --max-size or --older-than "
                "(or a budget: $WARMER_MAX_SIZE, store.max_size in the config)"
            )
    try:
        budget = parse_size(max_size) if max_size is not None else None
    except ValueError as exc:
        raise UsageError(f"{size_source}: {exc}") from exc
    try:
        age = parse_duration(older_than) if older_than is not None else None
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from exc
    return budget, age
