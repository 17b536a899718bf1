"""Capture: what a running server compiles after it is ready, as a delta on its bundle.

Warm-up traffic never covers every shape production sends; each miss compiles on a serving
replica and is lost when the replica goes. `warmer capture` runs beside the server (a
sidecar, or `capture()` from Python), watches its cache roots and keeps what was written
after it started watching (start it once the server reports ready: what start-up restored
or compiled is the deployed bundle's already).

Watching is polling, stdlib only (inotify is not everywhere, and not in every container):
each scan only lists and stats the roots, and the pause before the next scan is at least
ten times what the scan took, so watching costs at most ~10% of one core however large the
caches grow. A batch of new files is taken once nothing changed for `settle_s` (a compile
writes a burst of files: the debounce takes the burst whole). Only then are the files read:
each is stored, and a file whose content the base already holds at that path is dropped.

The capture is committed as a snapshot of the base's name and environment holding the
base's files plus the new ones, so its ref (`NAME@ENV_TAG`) moves on, and, with a registry,
pushed to the base's tag: the registry cuts layers against what that tag published, so only
the new files travel, as one more layer on the deployed bundle's. `warmer run --fold REF`
adds a capture's files to the next bundle of a job (`fold`), so the next warm-up's bundle
carries what production compiled.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from warmer.caches import CacheRoot
from warmer.errors import UsageError
from warmer.harvest import collect_host_files, walk_roots
from warmer.progress import Progress, silent
from warmer.store import SnapshotInfo, Store
from warmer.store.manifest import Manifest

#: a scan may take at most this share of the time between scans
SCAN_SHARE = 0.1

#: path -> (size, mtime in ns): what a scan saw of a file
Seen = dict[str, tuple[int, int]]


@dataclass
class Captured:
    """One capture: the snapshot it committed and, with a registry, its push."""

    ref: str
    snapshot: str
    added: list[str]
    bytes: int
    push: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Watcher:
    """The cache roots of a running server, polled (see the module doc)."""

    roots: Sequence[CacheRoot]
    interval_s: float = 1.0
    settle_s: float = 2.0
    #: what counts as already there: the first scan, then each batch taken
    known: Seen = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.known = self.scan()

    def scan(self) -> Seen:
        """Every file under the roots with its size and modification time (stat only)."""
        seen: Seen = {}
        for path, kind in walk_roots(self.roots):
            try:
                info = os.lstat(path)
            except FileNotFoundError:  # removed between listing and stat: a temp file
                continue
            seen[path] = (info.st_size, info.st_mtime_ns)
            self.kinds[path] = kind
        return seen

    def changed(self, seen: Seen) -> Seen:
        return {path: state for path, state in seen.items() if self.known.get(path) != state}

    def next_batch(self, stop: threading.Event, deadline: float | None = None) -> Seen:
        """Wait until files changed and then nothing changed for `settle_s`; return them
        (empty when `stop` is set or the deadline passed first)."""
        pending: Seen = {}
        quiet_since = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            current = self.changed(self.scan())
            took = time.monotonic() - started
            now = time.monotonic()
            if current != pending:
                pending, quiet_since = current, now
            elif pending and now - quiet_since >= self.settle_s:
                return pending
            if deadline is not None and now >= deadline:
                return {}
            stop.wait(max(self.interval_s, took / SCAN_SHARE))
        return {}

    def taken(self, batch: Seen) -> None:
        """Count `batch` as known: the next batch holds only what changes after it."""
        self.known.update(batch)


def add_files(
    store: Store, base: Manifest, batch: Mapping[str, str]
) -> tuple[SnapshotInfo, Manifest, list[str]]:
    """Store the files of `batch` (path -> kind) and commit the base plus them; returns the
    snapshot and the paths whose content the base did not hold."""
    harvest = collect_host_files(store, sorted(batch.items()))
    files = {entry.path: entry for entry in base.files}
    added = [e.path for e in harvest.entries if files.get(e.path) != e]
    files.update({entry.path: entry for entry in harvest.entries})
    manifest = dataclasses.replace(base, files=tuple(files.values()), verify=None)
    return store.commit(manifest), manifest, sorted(added)


def capture(
    store: Store,
    base_ref: str,
    roots: Sequence[CacheRoot],
    *,
    registry: str | None = None,
    insecure: bool = False,
    once: bool = False,
    duration_s: float | None = None,
    interval_s: float = 1.0,
    settle_s: float = 2.0,
    stop: threading.Event | None = None,
    on_event: Progress | None = None,
) -> list[Captured]:
    """Watch `roots` and commit (and push to `registry`, REGISTRY/PREFIX) each settled batch
    of new files as a delta on `base_ref`, until `stop`, `duration_s`, or after one batch with
    `once`. Reports `watching` once the first scan (what counts as already there) is done,
    then `captured` for each batch."""
    from warmer.registry import push, tier_reference
    from warmer.sources import in_store

    say = on_event or silent
    stop = stop or threading.Event()
    info, base = in_store(store, base_ref, insecure=insecure)
    if not roots:
        raise UsageError("capture: no cache roots to watch")
    watcher = Watcher(roots, interval_s=interval_s, settle_s=settle_s)
    say("watching", {"roots": [root.path for root in roots], "files": len(watcher.known)})
    deadline = time.monotonic() + duration_s if duration_s is not None else None
    results: list[Captured] = []
    while not stop.is_set():
        batch = watcher.next_batch(stop, deadline)
        if not batch:
            break
        watcher.taken(batch)
        info, base, added = add_files(store, base, {p: watcher.kinds[p] for p in batch})
        if not added:
            continue
        new = set(added)
        size = sum(e.size for e in base.files if e.path in new)
        result = Captured(info.ref, info.snapshot, added, size)
        say("captured", {"ref": info.ref, "files": len(added), "bytes": size})
        if registry:
            target = tier_reference(registry, base.name, base.env_tag)
            result.push = push(store, info.ref, target, insecure=insecure).to_dict()
        results.append(result)
        if once:
            break
    return results


def fold(
    store: Store, ref: str, deltas: Sequence[Manifest]
) -> tuple[SnapshotInfo, Manifest, list[str]]:
    """The snapshot `ref` plus the files of `deltas` it does not hold at their paths (what a
    capture added), committed; returns it and the paths added. A delta of another
    environment is a usage error: its compiled files would not hit there."""
    _info, manifest = store.resolve(ref, touch=False)
    files = {entry.path: entry for entry in manifest.files}
    added = []
    for delta in deltas:
        if delta.env_digest != manifest.env_digest:
            raise UsageError(
                f"--fold {delta.ref}: it is for {delta.env_tag}, the job {manifest.name} "
                f"ran in {manifest.env_tag}: its files would not hit there"
            )
        for entry in delta.files:
            if entry.path not in files:
                files[entry.path] = entry
                added.append(entry.path)
    if not added:
        return _info, manifest, []
    folded = dataclasses.replace(manifest, files=tuple(files.values()))
    return store.commit(folded), folded, sorted(added)
