"""Queries: which kernels a command applies to (a filter), in which order, as SQL over the
index's `entries` joined with `hits`, and the Kernel records built from the rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from warmer.errors import UsageError
from warmer.kernels.formats import Kernel, KernelFile, normalise_arch

LAST_USED = "max(e.mtime, coalesce(h.last_access, 0))"
SORTS = {
    "name": "e.name, e.hash, e.location",
    "size": "e.size DESC, e.name, e.location",
    "age": f"{LAST_USED}, e.name, e.location",
    "hits": "coalesce(h.count, 0) DESC, e.name, e.location",
}
SORT_KEYS = tuple(SORTS)
#: The columns a listing reads: Kernel's fields, in order, but the hits (joined in).
KERNEL_COLUMNS = ", ".join(
    f"e.{f.name}" for f in dataclasses.fields(Kernel) if f.name not in ("hits", "last_access")
)


@dataclass(frozen=True)
class KernelFilter:
    """Which kernels a command applies to; None means any."""

    name: str | None = None
    backend: str | None = None
    arch: str | None = None
    older_than: float | None = None
    younger_than: float | None = None
    hits_below: int | None = None
    hits_above: int | None = None


def select(
    columns: str, kernel_filter: KernelFilter | None, sort: str, now: float
) -> tuple[str, list[object]]:
    """The SELECT of `columns` for one source's kernels (its id is the first parameter, left
    to the caller) that pass `kernel_filter`, in `sort` order; and the other parameters."""
    if sort not in SORTS:
        raise UsageError(f"unknown sort {sort!r}; use one of {', '.join(SORT_KEYS)}")
    where, parameters = _where(kernel_filter or KernelFilter(), now)
    return (
        f"SELECT {columns} FROM entries e LEFT JOIN hits h ON h.hash = e.hash"
        f" WHERE e.source = ? AND e.status = 'kernel'{where} ORDER BY {SORTS[sort]}",
        parameters,
    )


def _where(kernel_filter: KernelFilter, now: float) -> tuple[str, list[object]]:
    """SQL conditions (each starting with AND) and their parameters for a filter."""
    clauses: list[str] = []
    parameters: list[object] = []
    f = kernel_filter
    if f.name is not None:
        clauses.append("e.name GLOB ?")
        parameters.append(f.name.replace("[!", "[^"))  # fnmatch's negation in GLOB's spelling
    if f.backend is not None:
        clauses.append("e.backend = ?")
        parameters.append(f.backend)
    if f.arch is not None:
        clauses.append("e.arch = ?")
        parameters.append(normalise_arch(f.arch))
    if f.older_than is not None:
        clauses.append(f"{LAST_USED} < ?")
        parameters.append(now - f.older_than)
    if f.younger_than is not None:
        clauses.append(f"{LAST_USED} >= ?")
        parameters.append(now - f.younger_than)
    if f.hits_below is not None:
        clauses.append("coalesce(h.count, 0) < ?")
        parameters.append(f.hits_below)
    if f.hits_above is not None:
        clauses.append("coalesce(h.count, 0) > ?")
        parameters.append(f.hits_above)
    return "".join(f" AND {clause}" for clause in clauses), parameters


def to_kernel(row: Sequence[Any], root: str | None) -> Kernel:
    """A Kernel from a row of `KERNEL_COLUMNS` + hits (values typed by the index itself)."""
    (key, name, backend, arch, warp_size, num_warps, num_stages, num_ctas, shared, version,
     files, size, mtime, binary_digest, location, stale, hits, last_access) = row  # fmt: skip
    return Kernel(
        hash=key,
        name=name,
        backend=backend,
        arch=arch,
        warp_size=warp_size,
        num_warps=num_warps,
        num_stages=num_stages,
        num_ctas=num_ctas,
        shared=shared,
        triton_version=version,
        files=tuple(map(KernelFile._make, json.loads(files))),
        size=size,
        mtime=mtime,
        binary_digest=binary_digest,
        location=os.path.join(root, location) if root else location,
        stale_group=bool(stale),
        hits=hits,
        last_access=last_access,
    )
