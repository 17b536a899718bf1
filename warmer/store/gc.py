"""Store upkeep: verify (what is damaged), gc (mark from refs, sweep the rest) and prune plans.

All three classify the same files: objects a ref reaches, objects nothing reaches, and temp
files a killed writer left. Only damage to what refs reach, or a corrupt object, is a problem;
the rest is garbage that `gc` removes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from warmer.errors import BundleError, StoreError
from warmer.store.cas import ObjectStore
from warmer.store.index import Index, SnapshotInfo
from warmer.store.manifest import Manifest

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class VerifyReport:
    """What `warmer verify` found: problems are damage; garbage is what `gc` would remove."""

    objects_checked: int
    problems: list[str]
    garbage: int

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class GcResult:
    """What a gc removed (or, with dry_run, would remove)."""

    objects_removed: int
    temp_files_removed: int
    bytes_freed: int
    dry_run: bool


@dataclass(frozen=True)
class RemoveResult:
    """What a prune or `warmer rm` removed, what it kept because it changed since the plan
    (pinned, moved or used meanwhile), and the bytes freed (0 until `gc` for `rm`)."""

    removed: tuple[SnapshotInfo, ...]
    kept: tuple[SnapshotInfo, ...]
    freed: int


@dataclass(frozen=True)
class PrunePlan(Generic[Item, Result]):
    """Deletions planned, then shown (`--dry-run`), confirmed and executed: `warmer prune`
    (refs, least recently used first) and `warmer kernels prune` (kernel entries) both build
    one. Nothing changes until `execute()`, which deletes references before content."""

    items: tuple[Item, ...]
    expected_freed: int
    _execute: Callable[[tuple[Item, ...]], Result] = field(repr=False, compare=False)

    def execute(self) -> Result:
        return self._execute(self.items)


def verify(objects: ObjectStore, index: Index) -> VerifyReport:
    """Re-hash every object and check that every ref's manifest and files are present.

    Refs are read before the scan: a commit during the scan only adds objects, and only gc
    (excluded by the lock) deletes them, so a ref read first never looks damaged.
    """
    refs = index.all()
    live = index.live_objects()
    problems: list[str] = []
    present: set[str] = set()
    garbage = 0
    for path, digest in objects.iter_entries():
        if digest is None:
            garbage += 1
            continue
        present.add(digest)
        if not objects.check(digest):
            problems.append(f"corrupt object {digest} ({path})")
        if digest not in live:
            garbage += 1
    for info in refs:
        problems.extend(_ref_problems(objects, info, present))
    problems.extend(index.problems())
    return VerifyReport(objects_checked=len(present), problems=problems, garbage=garbage)


def verify_snapshot(objects: ObjectStore, info: SnapshotInfo) -> VerifyReport:
    """Re-hash the manifest and every object of one snapshot (`warmer verify REF`)."""
    try:
        with objects.open(info.snapshot) as handle:
            manifest = Manifest.from_bytes(handle.read())
    except (BundleError, StoreError) as exc:
        return VerifyReport(0, [f"{info.ref}: manifest {info.snapshot} is unreadable: {exc}"], 0)
    digests = sorted({info.snapshot, *(entry.digest for entry in manifest.files)})
    present = {digest for digest in digests if objects.path(digest).is_file()}
    problems = [
        f"corrupt object {digest} ({objects.path(digest)})"
        for digest in sorted(present)
        if not objects.check(digest)
    ]
    problems.extend(_ref_problems(objects, info, present))
    return VerifyReport(objects_checked=len(present), problems=problems, garbage=0)


def _ref_problems(objects: ObjectStore, info: SnapshotInfo, present: set[str]) -> list[str]:
    if info.snapshot not in present:
        return [f"{info.ref}: manifest {info.snapshot} is missing"]
    try:
        with objects.open(info.snapshot) as handle:
            manifest = Manifest.from_bytes(handle.read())
    except (BundleError, StoreError) as exc:
        return [f"{info.ref}: manifest {info.snapshot} is unreadable: {exc}"]
    return [
        f"{info.ref}: {entry.path}: object {entry.digest} is missing"
        for entry in manifest.files
        if entry.digest not in present
    ]


def sweep(objects: ObjectStore, live: set[str], *, dry_run: bool) -> GcResult:
    """Remove temp files and objects not in `live`; the caller holds the exclusive lock."""
    removed_objects = removed_temps = freed = 0
    for path, digest in objects.iter_entries():
        if digest is not None and digest in live:
            continue
        try:
            size = path.stat().st_size
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            continue
        freed += size
        if digest is None:
            removed_temps += 1
        else:
            removed_objects += 1
    return GcResult(
        objects_removed=removed_objects,
        temp_files_removed=removed_temps,
        bytes_freed=freed,
        dry_run=dry_run,
    )


def plan_prune(
    index: Index,
    *,
    max_size: int | None,
    older_than: float | None,
    execute: Callable[[tuple[SnapshotInfo, ...]], Result],
) -> PrunePlan[SnapshotInfo, Result]:
    """Pick refs to drop: unpinned ones idle longer than `older_than` seconds, then the least
    recently used until the distinct bytes the kept refs reach fit in `max_size`. Earlier
    snapshots of a ref (history rows) are candidates like refs, by their own last use."""
    refs = sorted(
        [*index.all(), *index.history()],
        key=lambda info: (info.last_access, info.ref, info.replaced or 0),
    )
    contents = index.objects_of(info.snapshot for info in refs)
    sizes = {digest: size for objects in contents.values() for digest, size in objects}
    holders: Counter[str] = Counter(
        digest for info in refs for digest in {digest for digest, _ in contents[info.snapshot]}
    )
    kept_bytes = sum(sizes.values())
    freed = 0
    dropped: dict[tuple[str, str], SnapshotInfo] = {}

    def drop(info: SnapshotInfo) -> None:
        nonlocal kept_bytes, freed
        dropped[(info.ref, info.snapshot)] = info
        for digest in {digest for digest, _ in contents[info.snapshot]}:
            holders[digest] -= 1
            if holders[digest] == 0:
                kept_bytes -= sizes[digest]
                freed += sizes[digest]

    candidates = [info for info in refs if not info.pinned]
    if older_than is not None:
        cutoff = time.time() - older_than
        for info in candidates:
            if info.last_access < cutoff:
                drop(info)
    if max_size is not None:
        for info in candidates:
            if kept_bytes <= max_size:
                break
            if (info.ref, info.snapshot) not in dropped:
                drop(info)
    return PrunePlan(items=tuple(dropped.values()), expected_freed=freed, _execute=execute)
