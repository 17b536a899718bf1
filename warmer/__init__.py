"""warmer: compile caches as a build step.

Importing this package imports nothing third-party: the in-container agent runs it from a
read-only mount under whatever Python the user's image has.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from warmer.restoring import RestoreReport
    from warmer.saving import SaveResult

__all__ = ["__version__", "restore", "save"]


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


def save(**kwargs: Any) -> SaveResult:
    """Snapshot this machine's compile caches into the store and export a bundle."""
    from warmer.saving import save as _save

    return _save(**kwargs)
