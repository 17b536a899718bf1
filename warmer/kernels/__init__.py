"""Triton kernel index: list, filter, prune and dedupe the kernels of a cache, snapshot or bundle.

A Triton cache holds one directory per kernel key (52 upper-case base32 characters) with the
kernel's IR, its binary (`.cubin` or `.hsaco`), a metadata JSON and a group file that lists the
files Triton loads on a hit. The index reads only the small JSON files; sizes come from the
directory listing or the manifest. For a cache directory the result is kept in sqlite under
warmer's state directory (never inside the cache, which Triton owns) and refreshed only for
entries whose directory mtime changed, so a warm listing of 100,000 kernels is a walk and one
query. Entries that are broken or not kernels become problems summarised in one line.

Hits come from `warmer.tracking`: Triton processes append fixed-size lines to per-process logs
in `<state>/hits/`; `fold_hits` adds them to the `hits` table, keyed by kernel key, so one
count covers every cache and snapshot that holds the kernel.

Modules: `formats` (what is on disk, the state directory, the hit log format), `entries`
(reading one entry into an index row), `query` (filters and sort order as SQL), `index` (the
sqlite index: scans and hits), `prune` (plans and their execution).
"""

from warmer.kernels.formats import (
    HIT_LOG_SUFFIX,
    Kernel,
    KernelFile,
    default_cache_dir,
    hit_line,
    hit_log_dir,
    state_dir,
)
from warmer.kernels.index import EntryProblem, KernelIndex, Scan, Source
from warmer.kernels.prune import KernelPrunePlan, PruneAction, PruneMode, PruneResult, plan_prune
from warmer.kernels.query import SORT_KEYS, KernelFilter

__all__ = [
    "HIT_LOG_SUFFIX",
    "SORT_KEYS",
    "EntryProblem",
    "Kernel",
    "KernelFile",
    "KernelFilter",
    "KernelIndex",
    "KernelPrunePlan",
    "PruneAction",
    "PruneMode",
    "PruneResult",
    "Scan",
    "Source",
    "default_cache_dir",
    "hit_line",
    "hit_log_dir",
    "plan_prune",
    "state_dir",
]
