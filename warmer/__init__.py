"""warmer: compile caches as a build step.

Importing this package imports nothing third-party: the in-container agent runs it from a
read-only mount under whatever Python the user's image has.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

__version__ = "0.1.0"

if TYPE_CHECKING:
    from warmer.loading import LoadResult
    from warmer.restoring import RestoreReport
    from warmer.saving import SaveResult

__all__ = ["__version__", "load", "restore", "save"]


def restore(
    path: str,
    *,
    root: str = "/",
    force: bool = False,
    trust: Sequence[str | Path] | None = None,
) -> RestoreReport:
    """Install a bundle's caches into this machine's cache roots (see `warmer.restoring`).

    `path` is a bundle file, or a store ref or registry reference (`warmer.sources`): a ref
    the local store lacks is pulled from the configured cold tier. `trust` (public key files;
    default: the `trust.keys` setting when `trust.require` is set) refuses, before anything
    is written, what no trusted key signed (TrustError, see `warmer.provenance`).
    """
    from warmer.provenance import Trust
    from warmer.restoring import restore as _restore

    return _restore(path, root=root, force=force, trust=Trust.of(trust))


def load(
    source: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] = "/",
    store: str | os.PathLike[str] | None = None,
    force: bool = False,
    trust: Sequence[str | os.PathLike[str]] | None = None,
) -> LoadResult:
    """Install what `source` names, for a server at start-up: returns a status (`loaded`,
    `nothing_for_env`, `mismatch` with reasons, `refused_corrupt` (also: not signed by a key of
    `trust`), `unavailable`) and raises only for a wrong argument (see `warmer.loading`)."""
    from warmer.loading import load as _load

    return _load(source, root=root, store=store, force=force, trust=trust)


def save(
    name: str = "local",
    *,
    roots: Mapping[str, str | os.PathLike[str]] | None = None,
    kinds: Sequence[str] | None = None,
    out: str | os.PathLike[str] | None = ".",
    store: str | os.PathLike[str] | None = None,
    fmt: Literal["zst", "gz"] = "zst",
    push: str | None = None,
    insecure: bool = False,
) -> SaveResult:
    """Snapshot this machine's compile caches into the store (`store`, else the configured
    one) as `name@<env tag>`, and export a bundle to `out` (None: none).

    `roots` limits the save to these cache roots, by kind (`{"inductor": "/cache/inductor"}`);
    without it every root this process's environment points at is taken (`kinds` narrows
    either). `push` (REGISTRY/REPO[:TAG]) also pushes the snapshot there (`result.pushed`).
    """
    from pathlib import Path

    from warmer.caches import CacheRoot
    from warmer.saving import save as _save
    from warmer.store import Store

    chosen = None
    if roots is not None:
        chosen = [CacheRoot(kind, os.path.abspath(os.fspath(path))) for kind, path in roots.items()]
    with Store(Path(store) if store is not None else None) as opened:
        return _save(
            name=name,
            kinds=kinds,
            out=Path(out) if out is not None else None,
            store=opened,
            fmt=fmt,
            roots=chosen,
            push=push,
            insecure=insecure,
        )
