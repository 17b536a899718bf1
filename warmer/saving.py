"""Save: snapshot the compile caches of THIS machine into the store and export a bundle.

What a user runs after warming a model by hand, and what the local runtime does after its
warm-up. Roots come from this process's environment (`warmer.caches.default_roots`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from warmer.agent.probe import key_factors
from warmer.bundle import Format, write_bundle
from warmer.caches import CacheRoot, Facts, default_roots, select
from warmer.envkey import EnvKey
from warmer.errors import UsageError
from warmer.harvest import Harvest, collect_host_files, snapshot, walk_roots
from warmer.progress import Progress
from warmer.store import SnapshotInfo, Store
from warmer.store.manifest import Manifest, check_name

if TYPE_CHECKING:
    from warmer.registry import PushReport


@dataclass(frozen=True)
class SaveResult:
    """A saved snapshot and, when one was asked for, its bundle."""

    bundle: Path | None
    snapshot: SnapshotInfo
    manifest: Manifest
    harvest: Harvest
    pushed: PushReport | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "bundle": str(self.bundle) if self.bundle else None,
            "ref": self.snapshot.ref,
            "snapshot": self.snapshot.snapshot,
            "files": len(self.manifest.files),
            "bytes": self.manifest.total_size,
            "kinds": self.harvest.kinds(),
            "env": self.manifest.env,
            "env_tag": self.manifest.env_tag,
            "pushed": self.pushed.to_dict() if self.pushed else None,
        }


def save(
    *,
    name: str = "local",
    kinds: Sequence[str] | None = None,
    out: Path | None = Path("."),
    store: Store | None = None,
    fmt: Format = "zst",
    roots: Sequence[CacheRoot] | None = None,
    progress: Progress | None = None,
    push: str | None = None,
    insecure: bool = False,
) -> SaveResult:
    """Snapshot this machine's caches (all kinds, or `kinds`) and export a bundle to `out`;
    with `push` (REGISTRY/REPO[:TAG]), push the snapshot there too."""
    check_name(name, "name")  # before the harvest writes anything to the store
    store = store or Store()
    try:
        chosen = select(
            roots if roots is not None else default_roots(Facts.of_this_process()), kinds
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    harvest = collect_host_files(store, walk_roots(chosen), progress=progress)
    if not harvest.entries:
        where = ", ".join(f"{root.kind}: {root.path}" for root in chosen) or "none"
        raise UsageError(f"no compile cache files found (looked in {where})")
    vllm = [root.path for root in chosen if root.kind == "vllm"]
    factors = key_factors(vllm[0] if vllm else None)
    info, manifest = snapshot(store, harvest, name=name, env=EnvKey.probe(), key_factors=factors)
    bundle = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        bundle = write_bundle(manifest, store.open_object, out, fmt)
    pushed = None
    if push is not None:
        from warmer.oci import Reference
        from warmer.registry import push as push_snapshot

        pushed = push_snapshot(store, info.ref, Reference.parse(push), insecure=insecure)
    return SaveResult(
        bundle=bundle, snapshot=info, manifest=manifest, harvest=harvest, pushed=pushed
    )
