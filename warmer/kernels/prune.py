"""Pruning a cache directory: IR only, whole entries, or duplicates of the same binary.

A plan is built first (`warmer.store.gc.PrunePlan`, the shape `warmer prune` uses too), so a
command can show it, ask, and only then delete.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from warmer.files import atomic_file
from warmer.kernels.formats import IR_KINDS, Kernel, KernelFile
from warmer.store.gc import PrunePlan
from warmer.units import format_size

PruneMode = Literal["ir", "full", "dedupe"]


@dataclass(frozen=True)
class PruneAction:
    """What goes from one entry: some files, or the whole directory (`whole`)."""

    kernel: Kernel
    files: tuple[KernelFile, ...]
    whole: bool
    reason: str

    @property
    def freed(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.kernel.short_id,
            "hash": self.kernel.hash,
            "name": self.kernel.name,
            "location": self.kernel.location,
            "whole": self.whole,
            "reason": self.reason,
            "files": [f.name for f in self.files],
            "bytes": self.freed,
        }


@dataclass(frozen=True)
class PruneResult:
    """What an executed plan removed, and what it could not (one message per entry)."""

    entries: int
    files: int
    freed: int
    errors: tuple[str, ...]


@dataclass(frozen=True)
class KernelPrunePlan(PrunePlan[PruneAction, PruneResult]):
    """Deletions planned for a cache directory: shown (`--dry-run`), confirmed, executed."""

    mode: PruneMode

    @property
    def file_count(self) -> int:
        return sum(len(action.files) for action in self.items)

    def describe(self) -> str:
        """`12 files of 4 kernels (IR only), 123.4K` for prompts and summaries."""
        what = {"ir": "IR only", "full": "whole entries", "dedupe": "duplicates"}[self.mode]
        return (
            f"{self.file_count} files of {len(self.items)} kernels ({what}), "
            f"{format_size(self.expected_freed)}"
        )


def _execute(root: Path, actions: tuple[PruneAction, ...]) -> PruneResult:
    """Delete references before content, so an interrupted prune never leaves a group that
    lists a missing file: IR-only rewrites the group first, a whole entry loses its group
    first. Errors are collected per entry; the others still go."""
    inside = os.path.realpath(root)
    entries = files = freed = 0
    errors: list[str] = []
    for action in actions:
        directory = Path(action.kernel.location)
        try:
            if not os.path.realpath(directory).startswith(inside + os.sep):
                raise OSError(f"{directory} is not inside {inside}")
            if action.whole:
                _remove_entry(directory, action.kernel)
            else:
                _remove_files(directory, action.kernel, {f.name for f in action.files})
        except (OSError, ValueError) as exc:
            errors.append(f"{action.kernel.short_id} {action.kernel.name}: {exc}")
            continue
        entries += 1
        files += len(action.files)
        freed += action.freed
    return PruneResult(entries, files, freed, tuple(errors))


def plan_prune(root: Path, kernels: Sequence[Kernel], mode: PruneMode) -> KernelPrunePlan:
    """Plan what `mode` removes from `kernels` (already filtered) of the cache at `root`.

    `ir` drops the compiler intermediates of each kernel, `full` whole entries, and
    `dedupe` every entry whose binary is byte-identical to another one's, keeping the one
    used last (then the most hit). A removed duplicate's key misses and recompiles.
    """
    actions: list[PruneAction] = []
    if mode == "ir":
        for kernel in kernels:
            ir = tuple(f for f in kernel.files if f.kind in IR_KINDS)
            if ir:
                actions.append(PruneAction(kernel, ir, whole=False, reason="IR"))
    elif mode == "full":
        actions = [PruneAction(k, k.files, whole=True, reason="selected") for k in kernels]
    else:
        by_binary: dict[str, list[Kernel]] = defaultdict(list)
        for kernel in kernels:
            by_binary[kernel.binary_digest].append(kernel)
        for same in by_binary.values():
            keep, *drop = sorted(same, key=lambda k: (k.last_used, k.hits, k.hash), reverse=True)
            reason = f"duplicate of {keep.short_id}"
            actions += [PruneAction(k, k.files, whole=True, reason=reason) for k in drop]
        actions.sort(key=lambda action: (action.kernel.name, action.kernel.location))
    return KernelPrunePlan(
        items=tuple(actions),
        expected_freed=sum(action.freed for action in actions),
        _execute=functools.partial(_execute, root),
        mode=mode,
    )


def _group_path(directory: Path, kernel: Kernel) -> Path:
    (group,) = (f.name for f in kernel.files if f.kind == "grp")
    return directory / group


def _remove_files(directory: Path, kernel: Kernel, names: set[str]) -> None:
    """Rewrite the group to list what stays (at this entry's paths), then delete the rest."""
    group_path = _group_path(directory, kernel)
    group = json.loads(group_path.read_text())
    children = group.get("child_paths") if isinstance(group, dict) else None
    if not isinstance(children, dict):
        raise ValueError(f"{group_path.name} changed since it was indexed")
    group["child_paths"] = {c: str(directory / c) for c in children if c not in names}
    _replace_file(group_path, json.dumps(group).encode())
    for name in sorted(names):
        (directory / name).unlink(missing_ok=True)


def _remove_entry(directory: Path, kernel: Kernel) -> None:
    """The group first (Triton then misses cleanly), then the directory."""
    _group_path(directory, kernel).unlink(missing_ok=True)
    shutil.rmtree(directory)


def _replace_file(path: Path, data: bytes) -> None:
    """Write `path` atomically, keeping its permission bits."""
    with atomic_file(path, mode=path.stat().st_mode & 0o777) as out:
        out.write(data)
