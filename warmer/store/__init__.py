"""The content-addressed store: blake3 objects, manifests as objects, refs in a sqlite index.

Layout: `<root>/store-v1/{CACHEDIR.TAG, lock, objects/ab/<62 hex>, index.sqlite,
attestations/<snapshot hex>.intoto.jsonl}`. Puts stage
their objects as temp files; a commit stages the manifest object, publishes everything staged
in one batch (synced, renamed, directories synced) and only then writes the ref row in one
transaction, so a process or machine killed at any point leaves only unreferenced objects or
temp files: garbage for `gc`, never damage for `verify`.

A `Store` takes the shared lock on first use and keeps it until `close()` (or the end of a
`with` block, or the process): objects written but not yet committed are then safe from a
`gc` in another process, which needs the lock alone.
"""

from __future__ import annotations

import builtins
import dataclasses
import re
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from warmer.errors import BundleError, NotFound, StoreError, UsageError
from warmer.files import atomic_file
from warmer.store.cas import ObjectStore, digest_bytes
from warmer.store.gc import (
    GcResult,
    PrunePlan,
    RemoveResult,
    VerifyReport,
    plan_prune,
    sweep,
    verify,
    verify_snapshot,
)
from warmer.store.index import Index, SnapshotInfo, peek_refs
from warmer.store.locks import StoreLock
from warmer.store.manifest import FileEntry, Manifest

__all__ = [
    "FileEntry",
    "GcResult",
    "Manifest",
    "PrunePlan",
    "RemoveResult",
    "SnapshotInfo",
    "Store",
    "VerifyReport",
]

LAYOUT = "store-v1"
CACHEDIR_TAG = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This file is a cache directory tag created by warmer.\n"
    b"# For information about cache directory tags see https://bford.info/cachedir/\n"
)
#: Shortest snapshot or content id prefix that `resolve` accepts.
MIN_ID_PREFIX = 6
_HEX_ID_RE = re.compile(r"^[0-9a-f]+$")


class Store:
    """The store at `root` (default: `warmer.config.default_store_root()`)."""

    def __init__(self, root: Path | None = None, *, lock_timeout: float = 30.0) -> None:
        if root is None:
            from warmer.config import default_store_root  # the settings load pydantic

            root = default_store_root()
        self.root = Path(root) / LAYOUT
        self.objects = ObjectStore(self.root / "objects")
        self._lock = StoreLock(self.root / "lock", exclusive_timeout=lock_timeout)
        self._lock_timeout = lock_timeout
        self._index: Index | None = None
        #: whether `_index` stands in (empty, in memory) for a store not created yet
        self._absent = False
        self._opening = threading.Lock()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def peek_refs(self) -> list[str]:
        """Every ref, read without creating, locking or migrating anything (shell completion)."""
        return peek_refs(self.root / "index.sqlite")

    def busy(self) -> bool:
        """Whether a gc or prune holds the store alone now (`warmer doctor` asks, never waits)."""
        return self._lock.busy()

    def close(self) -> None:
        """Drop what was put and never committed, release the index and the lock.

        The next use takes them again.
        """
        self.objects.discard()
        with self._opening:
            if self._index is not None:
                self._index.close()
                self._index = None
            self._lock.close()

    # -- objects ---------------------------------------------------------------------------

    def put_file(self, src: Path) -> tuple[str, int]:
        self._use(write=True)
        return self.objects.put_file(src)

    def put_stream(
        self, stream: BinaryIO, size: int | None = None, *, repair: bool = False
    ) -> tuple[str, int]:
        self._use(write=True)
        return self.objects.put_stream(stream, size, repair=repair)

    def put_bytes(self, data: bytes) -> str:
        self._use(write=True)
        return self.objects.put_bytes(data)

    def discard(self, digests: Iterable[str]) -> None:
        """Drop objects put and not committed yet (a harvest that found a secret in them)."""
        self.objects.discard(digests)

    def open_object(self, digest: str) -> BinaryIO:
        self._use()
        return self.objects.open(digest)

    def has(self, digest: str) -> bool:
        self._use()
        return self.objects.has(digest)

    # -- snapshots -------------------------------------------------------------------------

    def commit(self, manifest: Manifest) -> SnapshotInfo:
        """Point `manifest.ref` at this manifest; every file object must be stored already."""
        index = self._use(write=True)
        missing = sorted({e.digest for e in manifest.files if not self.objects.has(e.digest)})
        if missing:
            raise StoreError(
                f"cannot commit {manifest.ref}: {len(missing)} object(s) are not in the store "
                f"(first: {missing[0]})"
            )
        data = manifest.to_bytes()
        self.objects.put_bytes(data, repair=True)  # a manifest is small: check, repair
        self.objects.publish()
        return index.put(manifest, len(data), time.time())

    def resolve(self, ref: str, *, touch: bool = True) -> tuple[SnapshotInfo, Manifest]:
        """Find a snapshot by ref, bare name, snapshot id prefix or content id prefix.

        `touch` records the access for LRU pruning; inspection (`warmer show`) passes False.
        """
        info = self._lookup(ref)
        with self.objects.open(info.snapshot) as handle:
            data = handle.read()
        if digest_bytes(data) != info.snapshot:
            raise StoreError(
                f"manifest {info.snapshot} of {info.ref} is corrupt; run warmer verify"
            )
        try:
            manifest = Manifest.from_bytes(data)
        except BundleError as exc:
            raise StoreError(f"manifest of {info.ref} is unreadable: {exc}") from exc
        if touch:
            now = time.time()
            self._use().touch(info, now)
            info = dataclasses.replace(info, last_access=now)
        return info, manifest

    def list(self) -> list[SnapshotInfo]:
        """Every ref, sorted by ref."""
        return self._use().all()

    def history(self, ref: str | None = None) -> builtins.list[SnapshotInfo]:
        """The snapshots that `ref` (every ref when None) pointed at before, newest first."""
        return self._use().history(ref)

    def unreferenced(self) -> GcResult:
        """What `gc` would remove now (counted without the exclusive lock: for display)."""
        return sweep(self.objects, self._use().live_objects(), dry_run=True)

    def stored_size(self) -> int:
        """Bytes of the distinct objects that refs reach (referenced bytes after dedup)."""
        return self._use().stored_size()

    def touch(self, ref: str) -> None:
        self._use().touch(self._lookup(ref), time.time())

    def pin(self, ref: str, pinned: bool = True) -> None:
        """A pinned ref is never pruned (nor removed without force)."""
        info = self._lookup(ref)
        if info.replaced is not None:
            raise UsageError(f"{ref!r} is an earlier snapshot of {info.ref}: pin the ref itself")
        self._use().set_pinned(info.ref, pinned)

    def remove_ref(self, ref: str) -> None:
        """Drop a ref and its history, pinned or not; the content stays until `gc`."""
        self.plan_remove([ref], force=True).execute()

    def plan_remove(
        self, specs: Sequence[str], *, force: bool
    ) -> PrunePlan[SnapshotInfo, RemoveResult]:
        """Plan `warmer rm`: each spec is a ref (with its history), a name or an id (an
        earlier snapshot alone). Pinned refs are refused unless `force`; nothing is
        selected by an empty list. The content stays until `gc`."""
        if not specs:
            raise UsageError("nothing to remove: give one or more refs (warmer ls -q lists them)")
        index = self._use()
        chosen: dict[tuple[str, str, bool], SnapshotInfo] = {}
        for spec in specs:
            info = self._lookup(spec)
            rows = [info] if info.replaced is not None else [info, *index.history(info.ref)]
            for row in rows:
                chosen[(row.ref, row.snapshot, row.replaced is None)] = row
        pinned = [info.ref for info in chosen.values() if info.pinned]
        if pinned and not force:
            raise UsageError(
                f"{', '.join(pinned)} {'is' if len(pinned) == 1 else 'are'} pinned: "
                "warmer unpin it first, or pass --force"
            )
        items = tuple(chosen.values())
        freed = self._freed_by(items)

        def execute(rows: tuple[SnapshotInfo, ...]) -> RemoveResult:
            removed = index.remove(rows, keep_pinned=not force, keep_used=False)
            return RemoveResult(tuple(removed), _kept(rows, removed), 0)

        return PrunePlan(items=items, expected_freed=freed, _execute=execute)

    def verify_snapshot(self, ref: str) -> VerifyReport:
        """Re-hash the manifest and every object of one snapshot."""
        info = self._lookup(ref)
        return verify_snapshot(self.objects, info)

    # -- attestations: a snapshot's signed provenance (warmer.provenance), removed by gc with it

    def put_attestation(self, snapshot: str, data: bytes) -> None:
        """Keep the signature envelope of a committed snapshot (bytes this module never reads)."""
        self._use()
        path = self._attestation_path(snapshot)
        path.parent.mkdir(exist_ok=True)
        with atomic_file(path, durable=True) as out:
            out.write(data)

    def attestation(self, snapshot: str) -> bytes | None:
        """The envelope kept for `snapshot`, None when there is none."""
        self._use()
        try:
            return self._attestation_path(snapshot).read_bytes()
        except FileNotFoundError:
            return None

    def _attestation_path(self, snapshot: str) -> Path:
        algorithm, _, hex_id = snapshot.partition(":")
        if algorithm != "blake3" or not _HEX_ID_RE.match(hex_id):
            raise StoreError(f"not a snapshot id: {snapshot!r}")
        return self.root / "attestations" / f"{hex_id}.intoto.jsonl"

    def _sweep_attestations(self, live: set[str], *, dry_run: bool) -> None:
        """Drop the envelopes of snapshots no ref reaches (with the store held alone)."""
        directory = self.root / "attestations"
        if dry_run or not directory.is_dir():
            return
        for path in directory.iterdir():
            if f"blake3:{path.name.split('.', 1)[0]}" not in live:
                path.unlink(missing_ok=True)

    # -- upkeep ----------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        return verify(self.objects, self._use())

    def gc(self, *, dry_run: bool = False) -> GcResult:
        """Remove what no ref reaches and what killed writers left; needs the store alone."""
        index = self._use(write=self.root.is_dir())  # a store made halfway is swept as usual
        if self._absent:
            return GcResult(0, 0, 0, dry_run)
        with self._lock.exclusive():
            self.objects.publish()  # uncommitted puts are unreferenced objects, as on disk
            live = index.live_objects()
            self._sweep_attestations(live, dry_run=dry_run)
            return sweep(self.objects, live, dry_run=dry_run)

    def plan_prune(
        self, *, max_size: int | None, older_than: float | None
    ) -> PrunePlan[SnapshotInfo, RemoveResult]:
        """Plan an LRU prune (pinned refs are kept); see `warmer.store.gc.plan_prune`."""
        if max_size is None and older_than is None:
            raise UsageError("prune needs a size budget or an age (max_size or older_than)")
        if max_size is not None and max_size < 0:
            raise UsageError(f"max_size must not be negative: {max_size}")
        if older_than is not None and older_than <= 0:
            raise UsageError(f"older_than must be positive: {older_than}")
        return plan_prune(
            self._use(), max_size=max_size, older_than=older_than, execute=self._prune
        )

    def _prune(self, refs: tuple[SnapshotInfo, ...]) -> RemoveResult:
        """Refs first, content last, all under the exclusive lock. The plan is checked again
        there: a ref pinned, moved or used since it was planned is kept (another process may
        have done that while this one showed the plan and asked)."""
        index = self._use()
        with self._lock.exclusive():
            self.objects.publish()
            removed = index.remove(refs, keep_pinned=True, keep_used=True)
            live = index.live_objects()
            self._sweep_attestations(live, dry_run=False)
            freed = sweep(self.objects, live, dry_run=False).bytes_freed
        return RemoveResult(tuple(removed), _kept(refs, removed), freed)

    def _freed_by(self, rows: Sequence[SnapshotInfo]) -> int:
        """Bytes that only `rows` hold: what gc frees once they are gone."""
        index = self._use()
        gone = {(info.ref, info.snapshot, info.replaced is None) for info in rows}
        kept = [
            info.snapshot
            for info in [*index.all(), *index.history()]
            if (info.ref, info.snapshot, info.replaced is None) not in gone
        ]
        contents = index.objects_of([*kept, *(info.snapshot for info in rows)])
        still = {digest for snapshot in kept for digest, _ in contents[snapshot]}
        freeing = {
            digest: size
            for info in rows
            for digest, size in contents[info.snapshot]
            if digest not in still
        }
        return sum(freeing.values())

    # -- internals -------------------------------------------------------------------------

    def _use(self, *, write: bool = False) -> Index:
        """The index: on the first write, or the first use of a store that exists, create the
        layout, take the shared lock and open the index.

        Reading a store that does not exist creates nothing (it reads as empty, through an
        index in memory), so that a command refused after a lookup leaves no directory behind;
        a later write opens the real one. Harvests put objects from worker threads, so the
        first use may race with itself.
        """
        with self._opening:
            if self._index is not None and not (write and self._absent):
                return self._index
            if self._index is not None:
                self._index.close()
            if not write and not (self.root / "index.sqlite").is_file():
                self._index, self._absent = Index(Path(":memory:"), busy_timeout=0), True
                return self._index
            try:
                self.objects.root.mkdir(parents=True, exist_ok=True)
                tag = self.root / "CACHEDIR.TAG"
                if not tag.is_file() or tag.read_bytes() != CACHEDIR_TAG:
                    with atomic_file(tag) as out:  # whole, even if this process is killed
                        out.write(CACHEDIR_TAG)
                self._lock.acquire_shared()
            except OSError as exc:
                raise StoreError(f"cannot use the store at {self.root}: {exc}") from exc
            self._index = Index(self.root / "index.sqlite", busy_timeout=self._lock_timeout)
            self._absent = False
            return self._index

    def _lookup(self, spec: str) -> SnapshotInfo:
        """The ref `spec` names, or a ref's earlier snapshot by id (not shadowed by a ref)."""
        index = self._use()
        spec = spec.strip()
        exact = index.get(spec)
        if exact is not None:
            return exact
        candidates: list[SnapshotInfo] = []
        if "@" not in spec:
            candidates = index.by_name(spec)
        hex_id = spec.removeprefix("blake3:").lower()
        if not candidates and len(hex_id) >= MIN_ID_PREFIX and _HEX_ID_RE.match(hex_id):
            candidates = index.by_hex_prefix(hex_id) or index.history_by_hex_prefix(hex_id)
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            listed = "\n  ".join(f"{info.ref} {info.short_id}" for info in candidates)
            raise UsageError(f"{spec!r} matches {len(candidates)} snapshots; pick one:\n  {listed}")
        raise NotFound(
            f"no snapshot matches {spec!r}: give a ref (name@env-tag), a name, or at least "
            f"{MIN_ID_PREFIX} hex characters of an id (warmer ls lists them)"
        )


def _kept(
    planned: Sequence[SnapshotInfo], removed: Sequence[SnapshotInfo]
) -> tuple[SnapshotInfo, ...]:
    """What a plan chose and its execution kept (pinned, moved or used meanwhile)."""
    gone = {(info.ref, info.snapshot) for info in removed}
    return tuple(info for info in planned if (info.ref, info.snapshot) not in gone)
