"""Reading entries: one Triton entry directory (on this machine, or in a snapshot's manifest)
into the index row of a kernel, a host helper module or a problem that says what is wrong.

Only the small JSON files are read; sizes come from the listing or the manifest, and a group's
child paths are understood by their basename, never followed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import posixpath
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from warmer.kernels.formats import (
    BINARY_KINDS,
    GROUP_PREFIX,
    KEY_RE,
    MODULE_SUFFIXES,
    file_kind,
    normalise_arch,
)
from warmer.store.cas import digest_file

if TYPE_CHECKING:
    from warmer.store.manifest import FileEntry, Manifest

#: The columns of an index row, in the order the entries table lists them.
ENTRY_COLUMNS = (
    "location",
    "stamp",
    "hash",
    "status",
    "problem",
    "detail",
    "name",
    "backend",
    "arch",
    "warp_size",
    "num_warps",
    "num_stages",
    "num_ctas",
    "shared",
    "triton_version",
    "files",
    "size",
    "mtime",
    "binary_digest",
    "stale_group",
)


@dataclass(frozen=True)
class _Entry:
    """An entry directory's files as found, and how to read the few that the index needs."""

    key: str
    #: The row's location: relative to a cache root, or the absolute path in a snapshot.
    location: str
    sizes: Mapping[str, int]
    read: Callable[[str], bytes]
    digest: Callable[[str], str]
    mtime: Callable[[str], float]
    #: Whether a group's child path leads Triton to this entry's file of that name.
    points_here: Callable[[str, str], bool]


class _Skipped(Exception):
    """Why an entry is not listed as a kernel; `reason` groups, `detail` says which file."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def row(entry: _Entry, stamp: int) -> dict[str, object]:
    """The index row of one entry: a kernel, a host helper module or a problem."""
    row: dict[str, object] = dict.fromkeys(ENTRY_COLUMNS)
    row.update(location=entry.location, stamp=stamp, hash=entry.key)
    try:
        row.update(_kernel_fields(entry), status="kernel")
    except _Skipped as skipped:
        status = "module" if skipped.reason == "module" else "problem"
        row.update(status=status, problem=skipped.reason, detail=skipped.detail)
    return row


def _kernel_fields(entry: _Entry) -> dict[str, object]:
    names = sorted(entry.sizes)
    groups = [n for n in names if file_kind(n) == "grp"]
    if not groups:
        if names and all(n.endswith(MODULE_SUFFIXES) for n in names):
            raise _Skipped("module", "host helper module")
        if not names:
            raise _Skipped("empty entry", "no files (an unfinished or failed compile)")
        if any(n.endswith(".json") for n in names):
            raise _Skipped("no group file", "Triton never loads an entry without __grp__*.json")
        raise _Skipped("not a Triton kernel", f"no metadata among {', '.join(names[:4])}")
    if len(groups) > 1:
        raise _Skipped("several group files", ", ".join(groups))
    group_name = groups[0]
    children = _group_children(entry, group_name)
    metadata_name = group_name[len(GROUP_PREFIX) :]
    if metadata_name not in children:
        raise _Skipped("bad group file", f"{group_name} does not list {metadata_name}")
    missing = sorted(set(children) - set(entry.sizes))
    if missing:
        raise _Skipped("missing file", f"{group_name} lists {', '.join(missing)}, absent")
    binaries = [c for c in sorted(children) if file_kind(c) in BINARY_KINDS]
    if not binaries:
        raise _Skipped("missing binary", f"{group_name} lists no .cubin or .hsaco")
    metadata = _metadata(entry, metadata_name)
    target = metadata["target"]
    assert isinstance(target, dict)
    files = [(n, file_kind(n), entry.sizes[n]) for n in names]
    stale = not all(entry.points_here(c, p) for c, p in children.items())
    return {
        "name": str(metadata.get("name") or metadata_name[: -len(".json")]),
        "backend": str(target.get("backend", "")),
        "arch": normalise_arch(str(target.get("arch", ""))),
        "warp_size": _int_or_none(target.get("warp_size", metadata.get("warp_size"))),
        "num_warps": _int_or_none(metadata.get("num_warps")),
        "num_stages": _int_or_none(metadata.get("num_stages")),
        "num_ctas": _int_or_none(metadata.get("num_ctas")),
        "shared": _int_or_none(metadata.get("shared")),
        "triton_version": _str_or_none(metadata.get("triton_version")),
        "files": json.dumps(files, separators=(",", ":")),
        "size": sum(size for _n, _k, size in files),
        "mtime": entry.mtime(metadata_name),
        "binary_digest": entry.digest(binaries[0]),
        "stale_group": int(stale),
    }


def _group_children(entry: _Entry, group_name: str) -> dict[str, str]:
    """The group's `child_paths`, each required to name a file of this entry by basename.

    Paths written on another machine are understood by their basename, never followed.
    """
    group = _json(entry, group_name, "bad group file")
    children = group.get("child_paths") if isinstance(group, dict) else None
    if not isinstance(children, dict):
        raise _Skipped("bad group file", f"{group_name} has no child_paths object")
    for child, path in children.items():
        if not isinstance(path, str) or posixpath.basename(path) != child or "/" in child:
            raise _Skipped("bad group file", f"{group_name}: {child!r} maps to {path!r}")
    return children


def _metadata(entry: _Entry, metadata_name: str) -> dict[str, object]:
    metadata = _json(entry, metadata_name, "bad metadata JSON")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("target"), dict):
        raise _Skipped("not a Triton kernel", f"{metadata_name} has no target")
    hex_hash = metadata.get("hash")
    if not isinstance(hex_hash, str):
        raise _Skipped("not a Triton kernel", f"{metadata_name} has no hash")
    if _base32_key(hex_hash) != entry.key:
        raise _Skipped("hash mismatch", f"{metadata_name}: its hash is not the directory's key")
    return metadata


def _json(entry: _Entry, name: str, reason: str) -> object:
    try:
        return json.loads(entry.read(name))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Skipped(reason, f"{name}: {exc}") from None
    except OSError as exc:
        raise _Skipped("unreadable file", f"{name}: {exc.strerror or exc}") from None


def _base32_key(hex_hash: str) -> str | None:
    """Triton's directory name for a key (runtime/cache.py `_base32`)."""
    try:
        return base64.b32encode(bytes.fromhex(hex_hash)).decode("ascii").rstrip("=")
    except ValueError:
        return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def walk_entry_dirs(root: str) -> Iterator[tuple[str, int]]:
    """`(path, mtime_ns)` of every Triton entry directory under `root`; links not followed.

    Nested layouts (Inductor's `triton/<device>/`, vLLM's `torch_compile_cache/<hash>/rank_*/`)
    are found by walking; an entry directory itself is not descended into.
    """
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            iterator = os.scandir(directory)
        except OSError:
            continue
        with iterator:
            for item in iterator:
                if not item.is_dir(follow_symlinks=False):
                    continue
                if len(item.name) == 52 and KEY_RE.fullmatch(item.name):
                    yield item.path, item.stat(follow_symlinks=False).st_mtime_ns
                else:
                    pending.append(item.path)


def cache_entry(root: str, location: str) -> _Entry:
    """An entry directory on this machine; every read stays inside it."""
    directory = os.path.join(root, location)
    stats: dict[str, os.stat_result] = {}
    with contextlib.suppress(OSError), os.scandir(directory) as iterator:
        for item in iterator:
            if item.is_file(follow_symlinks=False):
                stats[item.name] = item.stat(follow_symlinks=False)

    def read(name: str) -> bytes:
        with open(os.path.join(directory, name), "rb") as handle:
            return handle.read()

    def digest(name: str) -> str:
        try:
            return digest_file(Path(directory, name))[0]
        except OSError as exc:
            raise _Skipped("unreadable file", f"{name}: {exc.strerror or exc}") from None

    def points_here(child: str, path: str) -> bool:
        """The path as written, or another spelling of it (a symlinked cache root)."""
        here = os.path.join(directory, child)
        return path == here or (os.path.exists(path) and os.path.samefile(path, here))

    return _Entry(
        key=os.path.basename(location),
        location=location,
        sizes={name: st.st_size for name, st in stats.items()},
        read=read,
        digest=digest,
        mtime=lambda name: stats[name].st_mtime,
        points_here=points_here,
    )


def _is_entry_file(path: str) -> bool:
    return bool(KEY_RE.fullmatch(posixpath.basename(posixpath.dirname(path))))


def manifest_entries(
    manifest: Manifest, created: float, contents: Mapping[str, bytes]
) -> Iterator[_Entry]:
    """The Triton entries of a snapshot; `contents` holds its JSON files' bytes by path."""
    by_dir: dict[str, dict[str, FileEntry]] = defaultdict(dict)
    for file_entry in manifest.files:
        if _is_entry_file(file_entry.path):
            directory, name = posixpath.split(file_entry.path)
            by_dir[directory][name] = file_entry
    for directory, files in sorted(by_dir.items()):
        yield _snapshot_entry(directory, files, created, contents)


def _snapshot_entry(
    directory: str, files: dict[str, FileEntry], created: float, contents: Mapping[str, bytes]
) -> _Entry:
    """One entry of a snapshot: sizes and digests from the manifest, JSON from `contents`."""

    def read(name: str) -> bytes:
        return contents[posixpath.join(directory, name)]

    def digest(name: str) -> str:
        return files[name].digest

    def points_here(child: str, path: str) -> bool:
        return path == posixpath.join(directory, child)

    return _Entry(
        key=posixpath.basename(directory),
        location=directory,
        sizes={name: f.size for name, f in files.items()},
        read=read,
        digest=digest,
        mtime=lambda _name: created,
        points_here=points_here,
    )


def small_json(manifest: Manifest) -> dict[str, str]:
    """Path to digest of the JSON files of a snapshot's Triton entries: all the index reads."""
    return {
        f.path: f.digest
        for f in manifest.files
        if f.path.endswith(".json") and _is_entry_file(f.path)
    }
