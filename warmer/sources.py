"""Sources: what a user names when a command wants a snapshot, resolved by one set of rules.

A SOURCE is, in this order:

1. a bundle file: a path to an existing file, or a name with a bundle's suffix (`.tar.zst`,
   `.tar.gz`, `.tar`), so that a missing bundle is reported as one and never looked up in the
   store;
2. a registry reference `REGISTRY/REPO[:TAG]` (`oci.Reference.looks_like`): pulled into the
   store (`auto` picks the tag that fits this machine);
3. otherwise a store ref: `name@env-tag`, a bare name, or a snapshot id prefix. A ref the
   local store lacks is pulled from the cold tier, the configured registry, when there is one.

What a command does with a bundle file (restore it as it is, import it first) is its own
business; `is_bundle` tells it which case it has, `in_store` does the other two.
Third-party packages are imported only inside the functions that reach a registry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from warmer.progress import Progress

if TYPE_CHECKING:
    from warmer.provenance import Trust
    from warmer.registry import PullReport
    from warmer.store import SnapshotInfo, Store
    from warmer.store.manifest import Manifest

#: Names that are bundles even when no such file exists.
BUNDLE_SUFFIXES = (".tar.zst", ".tar.gz", ".tar")

#: A line for the user (the cold tier says when it is consulted).
Note = Callable[[str], None]


def is_bundle(source: str | Path) -> bool:
    """Whether `source` names a bundle file (rule 1)."""
    return Path(source).is_file() or str(source).endswith(BUNDLE_SUFFIXES)


def is_registry(source: str) -> bool:
    """Whether `source` names a registry reference REGISTRY/REPO[:TAG] (rule 2)."""
    from warmer.oci import Reference

    return Reference.looks_like(source)


def allow_insecure(flag: bool | None) -> bool:
    """`--insecure` as given, else the configured default ($WARMER_REGISTRY_INSECURE)."""
    from warmer.config import settings

    return bool(flag) if flag is not None else settings().insecure


def pull(
    store: Store,
    reference: str,
    *,
    auto: bool = False,
    insecure: bool | None = None,
    progress: Progress | None = None,
    trust: Trust | None = None,
) -> PullReport:
    """Pull REGISTRY/REPO[:TAG] (or pick the tag with `auto`) into `store` (with `trust`:
    only when a trusted key signed it, checked before a layer is fetched)."""
    from warmer.oci import Reference
    from warmer.registry import pull as pull_bundle

    return pull_bundle(
        store,
        Reference.parse(reference),
        auto=auto,
        insecure=allow_insecure(insecure),
        progress=progress,
        trust=trust,
    )


def local_or_tier(
    store: Store,
    ref: str,
    *,
    insecure: bool | None = None,
    touch: bool = True,
    progress: Progress | None = None,
    note: Note | None = None,
    restoring: bool = False,
    trust: Trust | None = None,
) -> tuple[SnapshotInfo, Manifest]:
    """`store.resolve(ref)`; a ref missing locally is pulled from the configured cold tier.
    `restoring`: a ref found nowhere is NothingToRestore (exit 5), not NotFound (exit 2)."""
    from warmer.config import settings
    from warmer.errors import NotFound, NothingToRestore

    try:
        return store.resolve(ref, touch=touch)
    except NotFound as exc:
        registry = settings().registry
        if not registry and restoring:
            raise NothingToRestore(str(exc)) from None
        if not registry:
            raise
    from warmer.registry import pull_ref

    if note:
        note(f"{ref} is not in the local store: pulling it from {registry}")
    report = pull_ref(
        store, ref, registry, insecure=allow_insecure(insecure), progress=progress, trust=trust
    )
    return store.resolve(report.ref, touch=touch)


def in_store(
    store: Store,
    source: str,
    *,
    auto: bool = False,
    insecure: bool | None = None,
    touch: bool = True,
    progress: Progress | None = None,
    note: Note | None = None,
    restoring: bool = False,
    trust: Trust | None = None,
) -> tuple[SnapshotInfo, Manifest]:
    """The snapshot that a registry reference or a store ref names (rules 2 and 3), brought
    into `store` when it is not there yet. `restoring`: see `local_or_tier` (a registry says
    NothingToRestore itself for a tag it lacks). A pull under `trust` checks the signature
    first; a snapshot already in the store is the caller's to check."""
    if is_registry(source):
        report = pull(store, source, auto=auto, insecure=insecure, progress=progress, trust=trust)
        return store.resolve(report.ref, touch=touch)
    return local_or_tier(
        store,
        source,
        insecure=insecure,
        touch=touch,
        progress=progress,
        note=note,
        restoring=restoring,
        trust=trust,
    )
