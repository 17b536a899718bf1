"""Load: what a model server calls at start-up, before `torch.compile` or `vllm serve`.

A restore that answers with a status instead of an exception (anchor: b10-transfer's
`load_compile_cache()`): "nothing there yet" is the normal first start, a mismatch or a
corrupt bundle is a cold start with a reason, and none of them may stop the server. Only a
programming error (a wrong argument) raises.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from warmer.errors import (
    BundleError,
    EnvMismatch,
    NothingToRestore,
    RegistryError,
    StoreError,
    TrustError,
)
from warmer.provenance import Trust
from warmer.restoring import restore
from warmer.sources import is_bundle

#: loaded · nothing_for_env (no bundle, tag or ref for this environment yet) · mismatch (made
#: for another environment; `reasons` say which parts) · refused_corrupt (a bundle that does
#: not verify: nothing was written) · unavailable (the registry, the store or the disk failed)
Status = Literal["loaded", "nothing_for_env", "mismatch", "refused_corrupt", "unavailable"]


@dataclass(frozen=True)
class LoadResult:
    """What `load` did; counts are zero unless it loaded."""

    status: Status
    source: str
    reasons: list[str] = field(default_factory=list)
    ref: str | None = None
    files: int = 0
    written: int = 0
    bytes_written: int = 0
    skipped_identical: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> bool:
        return self.status == "loaded"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def load(
    source: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] = "/",
    store: str | os.PathLike[str] | None = None,
    force: bool = False,
    trust: Sequence[str | os.PathLike[str]] | None = None,
) -> LoadResult:
    """Install the caches that `source` names (a bundle file, REGISTRY/REPO:TAG or a store
    ref, as `warmer restore` takes them) under `root`, and say how it went (`Status`).

    A bundle file that does not exist yet is `nothing_for_env`, as is a ref or tag that no
    store or registry has. Raises TypeError for arguments of the wrong type, and UsageError
    for a source that cannot be meant (a ref that matches several snapshots).
    """
    for name, value in (("source", source), ("root", root)):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path or a string, not {type(value).__name__}")
    label, target = os.fspath(source), os.fspath(root)
    if is_bundle(label) and not Path(label).is_file():
        return LoadResult("nothing_for_env", label, [f"{label}: no such bundle"])
    try:
        required = Trust.of([Path(key) for key in trust] if trust else None)
        if store is None:
            report = restore(label, root=target, force=force, trust=required)
        else:
            from warmer.store import Store

            with Store(Path(store)) as opened:
                report = restore(label, store=opened, root=target, force=force, trust=required)
    except NothingToRestore as exc:
        return LoadResult("nothing_for_env", label, [str(exc)])
    except EnvMismatch as exc:
        return LoadResult("mismatch", label, list(exc.reasons))
    except (BundleError, TrustError) as exc:  # corrupt, or not signed as `trust` requires
        return LoadResult("refused_corrupt", label, [str(exc)])
    except (RegistryError, StoreError, OSError) as exc:
        return LoadResult("unavailable", label, [str(exc)])
    return LoadResult(
        "loaded",
        label,
        ref=f"{report.name}@{report.env_tag}",
        files=report.files,
        written=report.written,
        bytes_written=report.bytes_written,
        skipped_identical=report.skipped_identical,
        warnings=list(report.warnings),
    )
