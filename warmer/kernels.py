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
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import posixpath
import re
import shutil
import sqlite3
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from warmer.errors import UsageError, WarmerError
from warmer.sqlite import connect, transaction
from warmer.store.cas import digest_file
from warmer.units import format_size

if TYPE_CHECKING:
    from warmer.store.manifest import FileEntry, Manifest

#: A Triton cache entry directory: the base32 of a sha256 key, without padding.
KEY_RE = re.compile(r"[A-Z2-7]{52}")
GROUP_PREFIX = "__grp__"
#: File kinds by suffix; `json` is the metadata, `grp` the group file.
SUFFIX_KINDS = {
    ".source": "source",
    ".ttir": "ttir",
    ".ttgir": "ttgir",
    ".llir": "llir",
    ".ptx": "ptx",
    ".cubin": "cubin",
    ".amdgcn": "amdgcn",
    ".hsaco": "hsaco",
    ".json": "json",
}
#: Compiler intermediates that a cache hit never reads (triton/compiler/compiler.py: a hit
#: builds CompiledKernel from the group; only the binary is loaded, and Inductor's AOT path
#: reads `.ptx`/`.amdgcn` when present, so those stay).
IR_KINDS = frozenset(("source", "ttir", "ttgir", "llir"))
BINARY_KINDS = ("cubin", "hsaco")
#: Entries of Triton's host helper modules (`cuda_utils.so`, `__triton_launcher.so`).
_MODULE_SUFFIXES = (".so", ".c", ".pyd")
#: Hit log lines: `<52-char key> <13-digit epoch milliseconds>\n` (67 bytes, < PIPE_BUF).
HIT_LOG_SUFFIX = ".hits"
_HIT_LINE_RE = re.compile(rb"([A-Z2-7]{52}) (\d{13})")
#: A directory changed this recently may change again within the same mtime tick (racy-git):
#: its row is stored as unsettled, so the next scan reads it again.
_SETTLE_NS = 2_000_000_000
_UNSETTLED = -1
_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sources (
        id INTEGER PRIMARY KEY,
        key TEXT UNIQUE NOT NULL,
        fingerprint TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS entries (
        source INTEGER NOT NULL,
        location TEXT NOT NULL,
        stamp INTEGER NOT NULL,
        hash TEXT NOT NULL,
        status TEXT NOT NULL,
        problem TEXT,
        detail TEXT,
        name TEXT,
        backend TEXT,
        arch TEXT,
        warp_size INTEGER,
        num_warps INTEGER,
        num_stages INTEGER,
        num_ctas INTEGER,
        shared INTEGER,
        triton_version TEXT,
        files TEXT,
        size INTEGER,
        mtime REAL,
        binary_digest TEXT,
        stale_group INTEGER,
        PRIMARY KEY (source, location)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS entries_by_name ON entries(source, status, name)",
    # Covers the warm scan's (location, stamp) read and the stale count: a small B-tree
    # instead of the table with its file lists.
    "CREATE INDEX IF NOT EXISTS entries_by_location"
    " ON entries(source, location, stamp, status, stale_group)",
)
#: Tables that hold real data (not derivable from the caches): kept across schema changes.
_HIT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS hits (
        hash TEXT PRIMARY KEY,
        count INTEGER NOT NULL,
        last_access REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS hit_logs (
        name TEXT PRIMARY KEY,
        offset INTEGER NOT NULL
    ) WITHOUT ROWID""",
)
_ENTRY_COLUMNS = (
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
_LAST_USED = "max(e.mtime, coalesce(h.last_access, 0))"
_SORTS = {
    "name": "e.name, e.hash, e.location",
    "size": "e.size DESC, e.name, e.location",
    "age": f"{_LAST_USED}, e.name, e.location",
    "hits": "coalesce(h.count, 0) DESC, e.name, e.location",
}
SORT_KEYS = tuple(_SORTS)


def state_dir() -> Path:
    """warmer's own state (kernel index, hit logs): $WARMER_STATE_DIR, else ~/.cache/warmer."""
    explicit = os.environ.get("WARMER_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "warmer"


def hit_log_dir(state: Path) -> Path:
    """Where Triton processes append their hit logs."""
    return state / "hits"


def hit_line(key: str, when_ns: int) -> bytes:
    """One hit log record (fixed size, so one `write` is atomic under O_APPEND)."""
    return b"%s %013d\n" % (key.encode("ascii"), when_ns // 1_000_000)


def default_cache_dir() -> Path:
    """Triton's cache root for this process: TRITON_CACHE_DIR, else ~/.triton/cache."""
    from warmer.caches import Facts, default_roots

    return Path(next(r.path for r in default_roots(Facts.of_this_process()) if r.kind == "triton"))


def file_kind(name: str) -> str:
    """The kind of a file in an entry directory (`other` for what Triton does not write)."""
    if name.startswith(GROUP_PREFIX) and name.endswith(".json"):
        return "grp"
    return SUFFIX_KINDS.get(os.path.splitext(name)[1], "other")


class KernelFile(NamedTuple):
    """One file of a kernel entry (a tuple: a listing makes hundreds of thousands)."""

    name: str
    kind: str
    size: int


@dataclass(frozen=True)
class Kernel:
    """One Triton kernel entry; raw numbers (bytes, epoch seconds), strings for people aside."""

    hash: str
    name: str
    backend: str
    arch: str
    warp_size: int | None
    num_warps: int | None
    num_stages: int | None
    num_ctas: int | None
    shared: int | None
    triton_version: str | None
    files: tuple[KernelFile, ...]
    size: int
    mtime: float
    binary_digest: str
    #: The entry directory: a path on this machine, or the path in the image for a snapshot.
    location: str
    #: The group file points outside this entry: Triton misses until the paths are rewritten.
    stale_group: bool
    hits: int = 0
    last_access: float | None = None

    @property
    def short_id(self) -> str:
        return self.hash[:10]

    @property
    def last_used(self) -> float:
        """The last hit, or the compile time when none was recorded."""
        return max(self.mtime, self.last_access or 0.0)

    @property
    def kinds_str(self) -> str:
        """`ir+ptx+cubin`: what the entry holds, IR folded into one word."""
        kinds = {f.kind for f in self.files}
        shown = (["ir"] if kinds & IR_KINDS else []) + [
            k for k in ("ptx", "amdgcn", *BINARY_KINDS) if k in kinds
        ]
        return "+".join(shown)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.short_id,
            "hash": self.hash,
            "name": self.name,
            "backend": self.backend,
            "arch": self.arch,
            "warp_size": self.warp_size,
            "num_warps": self.num_warps,
            "num_stages": self.num_stages,
            "num_ctas": self.num_ctas,
            "shared": self.shared,
            "triton_version": self.triton_version,
            "files": [{"name": f.name, "kind": f.kind, "size": f.size} for f in self.files],
            "size": self.size,
            "mtime": self.mtime,
            "binary_digest": self.binary_digest,
            "location": self.location,
            "stale_group": self.stale_group,
            "hits": self.hits,
            "last_access": self.last_access,
            "last_used": self.last_used,
        }


#: The columns a listing reads: Kernel's fields, in order, but the hits (joined in).
_KERNEL_COLUMNS = ", ".join(
    f"e.{f.name}" for f in dataclasses.fields(Kernel) if f.name not in ("hits", "last_access")
)


@dataclass(frozen=True, order=True)
class EntryProblem:
    """An entry that is broken or not a kernel: `reason` groups them, `detail` says which."""

    location: str
    reason: str
    detail: str


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


def normalise_arch(arch: str) -> str:
    """`sm_90`, `sm90` and `90` name the same CUDA arch; gfx names stay as they are."""
    lowered = arch.strip().lower()
    return re.sub(r"^sm_?", "", lowered)


@dataclass(frozen=True)
class Source:
    """Where kernels come from: a cache directory, a store ref or a bundle file."""

    kind: Literal["dir", "store", "bundle"]
    location: Path | str
    store_root: Path | None = None


@dataclass(frozen=True)
class Scan:
    """A source as indexed: its row id and the entries that are not kernels."""

    source: Source
    source_id: int
    problems: tuple[EntryProblem, ...]
    stale_groups: int

    def summary(self) -> str | None:
        """One line about what was skipped or will miss, or None when all is well."""
        parts = []
        if self.problems:
            reasons = Counter(p.reason for p in self.problems)
            listed = ", ".join(f"{reason} ({count})" for reason, count in reasons.most_common())
            example = self.problems[0]
            parts.append(
                f"{len(self.problems)} entries skipped: {listed}; "
                f"e.g. {example.location}: {example.detail}"
            )
        if self.stale_groups:
            parts.append(
                f"{self.stale_groups} kernels have group files pointing elsewhere "
                "(Triton misses them until the paths are rewritten, e.g. by warmer restore)"
            )
        return "; ".join(parts) or None


# ---------------------------------------------------------------------------------------------
# Reading one entry


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


def _row(entry: _Entry, stamp: int) -> dict[str, object]:
    """The index row of one entry: a kernel, a host helper module or a problem."""
    row: dict[str, object] = dict.fromkeys(_ENTRY_COLUMNS)
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
        if names and all(n.endswith(_MODULE_SUFFIXES) for n in names):
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


# ---------------------------------------------------------------------------------------------
# Sources


def _walk_entry_dirs(root: str) -> Iterator[tuple[str, int]]:
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


def _cache_entry(root: str, location: str) -> _Entry:
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


def _manifest_entries(
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


def _small_json(manifest: Manifest) -> dict[str, str]:
    """Path to digest of the JSON files of a snapshot's Triton entries: all the index reads."""
    return {
        f.path: f.digest
        for f in manifest.files
        if f.path.endswith(".json") and _is_entry_file(f.path)
    }


# ---------------------------------------------------------------------------------------------
# The index


class KernelIndex:
    """The sqlite kernel index under warmer's state directory; use from one thread."""

    def __init__(self, state: Path | None = None) -> None:
        self.state = state or state_dir()
        path = self.state / "kernels.sqlite"
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            self._db = connect(path)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise WarmerError(f"kernel index {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> KernelIndex:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        with self._transaction():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version != _SCHEMA_VERSION:
                # Entries are derived from the caches and rebuilt; hits are real data and kept.
                self._db.execute("DROP TABLE IF EXISTS entries")
                self._db.execute("DROP TABLE IF EXISTS sources")
                self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            for statement in (*_SCHEMA, *_HIT_SCHEMA):
                self._db.execute(statement)

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._db)

    # -- scanning ------------------------------------------------------------------------------

    def scan(self, source: Source) -> Scan:
        """Bring the index of `source` up to date and fold new hits; say what was skipped."""
        self.fold_hits()
        if source.kind == "dir":
            source_id = self._scan_dir(Path(source.location))
        elif source.kind == "store":
            source_id = self._scan_store(str(source.location), source.store_root)
        else:
            source_id = self._scan_bundle(Path(source.location))
        rows = self._db.execute(
            "SELECT location, problem, detail FROM entries INDEXED BY entries_by_name"
            " WHERE source = ? AND status = 'problem'",
            (source_id,),
        )
        problems = tuple(sorted(EntryProblem(*row) for row in rows))
        (stale,) = self._db.execute(
            "SELECT count(*) FROM entries WHERE source = ? AND status = 'kernel' AND stale_group",
            (source_id,),
        ).fetchone()
        return Scan(source, source_id, problems, int(stale))

    def _source_id(self, key: str, fingerprint: str) -> tuple[int, bool]:
        """The row id of a source and whether its fingerprint is still the indexed one."""
        select = "SELECT id, fingerprint FROM sources WHERE key = ?"
        row = self._db.execute(select, (key,)).fetchone()
        if row is None:
            with self._transaction():  # another process may be adding the same source
                self._db.execute(
                    "INSERT OR IGNORE INTO sources(key, fingerprint) VALUES (?, '')", (key,)
                )
                row = self._db.execute(select, (key,)).fetchone()
        return int(row[0]), row[1] == fingerprint

    def _scan_dir(self, root: Path) -> int:
        if not root.is_dir():
            raise UsageError(f"{root}: no such cache directory")
        root_str = os.path.realpath(root)
        source_id, _ = self._source_id(f"dir:{root_str}", "")
        known = dict(
            self._db.execute("SELECT location, stamp FROM entries WHERE source = ?", (source_id,))
        )
        cut = len(root_str) + 1
        seen = {path[cut:]: stamp for path, stamp in _walk_entry_dirs(root_str)}
        changed = [loc for loc, stamp in seen.items() if known.get(loc) != stamp]
        gone = [loc for loc in known if loc not in seen]
        if changed or gone:
            settled_before = time.time_ns() - _SETTLE_NS
            rows = [
                _row(
                    _cache_entry(root_str, loc),
                    seen[loc] if seen[loc] < settled_before else _UNSETTLED,
                )
                for loc in changed
            ]
            with self._transaction():
                self._db.executemany(
                    "DELETE FROM entries WHERE source = ? AND location = ?",
                    ((source_id, loc) for loc in gone),
                )
                self._insert(source_id, rows)
        return source_id

    def _scan_store(self, ref: str, store_root: Path | None) -> int:
        from warmer.store import Store

        with Store(store_root) as store:
            info, manifest = store.resolve(ref, touch=False)
            # A snapshot never changes: indexed once, under its id, whatever names it.
            source_id, indexed = self._source_id(f"store:{info.snapshot}", info.snapshot)
            if not indexed:
                contents = {}
                for path, digest in _small_json(manifest).items():
                    with store.open_object(digest) as handle:
                        contents[path] = handle.read()
                self._replace(source_id, info.snapshot, manifest, info.created, contents)
        return source_id

    def _scan_bundle(self, path: Path) -> int:
        from warmer.bundle import read_bundle

        try:
            stat = path.stat()
        except OSError as exc:
            raise UsageError(f"{path}: no such bundle ({exc.strerror})") from None
        fingerprint = f"{stat.st_size}:{stat.st_mtime_ns}"
        source_id, same = self._source_id(f"bundle:{path.resolve()}", fingerprint)
        if not same:
            manifest, files = read_bundle(path)
            wanted = _small_json(manifest)
            contents = {}
            for file_entry, stream in files:  # the whole stream is read: it is verified
                if file_entry.path in wanted:
                    contents[file_entry.path] = stream.read()
            self._replace(source_id, fingerprint, manifest, stat.st_mtime, contents)
        return source_id

    def _replace(
        self,
        source_id: int,
        fingerprint: str,
        manifest: Manifest,
        created: float,
        contents: Mapping[str, bytes],
    ) -> None:
        """Index an immutable snapshot; it is read again only when its fingerprint changes."""
        rows = [_row(entry, 0) for entry in _manifest_entries(manifest, created, contents)]
        with self._transaction():
            self._db.execute("DELETE FROM entries WHERE source = ?", (source_id,))
            self._insert(source_id, rows)
            self._db.execute(
                "UPDATE sources SET fingerprint = ? WHERE id = ?", (fingerprint, source_id)
            )

    def _insert(self, source_id: int, rows: Iterable[dict[str, object]]) -> None:
        columns = ", ".join(_ENTRY_COLUMNS)
        values = ", ".join(f":{column}" for column in _ENTRY_COLUMNS)
        self._db.executemany(
            f"INSERT OR REPLACE INTO entries(source, {columns}) VALUES (:source, {values})",
            ({"source": source_id, **row} for row in rows),
        )

    # -- listing -------------------------------------------------------------------------------

    def kernels(
        self,
        scan: Scan,
        kernel_filter: KernelFilter | None = None,
        sort: str = "name",
        now: float | None = None,
    ) -> list[Kernel]:
        """The kernels of a scanned source that pass `kernel_filter`, in `sort` order."""
        rows = self._select(
            f"{_KERNEL_COLUMNS}, coalesce(h.count, 0), h.last_access",
            scan,
            kernel_filter,
            sort,
            now,
        )
        root = os.path.realpath(scan.source.location) if scan.source.kind == "dir" else None
        return [_kernel(row, root) for row in rows]

    def kernel_ids(
        self, scan: Scan, kernel_filter: KernelFilter | None = None, sort: str = "name"
    ) -> list[str]:
        """Only the keys of what `kernels` would return (for `ls -q`: no rows to build)."""
        return [row[0] for row in self._select("e.hash", scan, kernel_filter, sort, None)]

    def _select(
        self,
        columns: str,
        scan: Scan,
        kernel_filter: KernelFilter | None,
        sort: str,
        now: float | None,
    ) -> sqlite3.Cursor:
        if sort not in _SORTS:
            raise UsageError(f"unknown sort {sort!r}; use one of {', '.join(SORT_KEYS)}")
        where, parameters = _where(
            kernel_filter or KernelFilter(), time.time() if now is None else now
        )
        return self._db.execute(
            f"SELECT {columns} FROM entries e LEFT JOIN hits h ON h.hash = e.hash"
            f" WHERE e.source = ? AND e.status = 'kernel'{where} ORDER BY {_SORTS[sort]}",
            (scan.source_id, *parameters),
        )

    # -- hits ----------------------------------------------------------------------------------

    def fold_hits(self) -> int:
        """Add the hit logs of `warmer.tracking` to the `hits` table; return the hits added.

        Each log is read from the offset folded last time, up to its last whole line, in the
        same transaction that adds the counts, so a hit is counted once whatever runs at the
        same time. A writer holds a shared flock on its log while it lives: a log whose lock
        can be taken exclusively has no writer left and is deleted once folded to its end.
        """
        log_dir = hit_log_dir(self.state)
        try:
            names = sorted(n for n in os.listdir(log_dir) if n.endswith(HIT_LOG_SUFFIX))
        except FileNotFoundError:
            return 0
        counts: Counter[str] = Counter()
        latest: dict[str, int] = {}
        finished: list[Path] = []
        with self._transaction():
            offsets = dict(self._db.execute("SELECT name, offset FROM hit_logs"))
            for name in names:
                folded = _fold_log(log_dir / name, offsets.get(name, 0), counts, latest)
                if folded is None:
                    continue
                offset, writer_gone = folded
                self._db.execute(
                    "INSERT OR REPLACE INTO hit_logs(name, offset) VALUES (?, ?)", (name, offset)
                )
                if writer_gone:
                    finished.append(log_dir / name)
            self._db.executemany(
                "INSERT INTO hits(hash, count, last_access) VALUES (?, ?, ?)"
                " ON CONFLICT(hash) DO UPDATE SET count = count + excluded.count,"
                " last_access = max(last_access, excluded.last_access)",
                ((key, count, latest[key] / 1000) for key, count in counts.items()),
            )
            # Rows of logs deleted by an earlier fold: the file is gone, so is its offset.
            self._db.executemany(
                "DELETE FROM hit_logs WHERE name = ?",
                ((name,) for name in offsets if name not in names),
            )
        for path in finished:
            path.unlink(missing_ok=True)
        return sum(counts.values())


def _fold_log(
    path: Path, offset: int, counts: Counter[str], latest: dict[str, int]
) -> tuple[int, bool] | None:
    """Count the whole lines of one log after `offset`: `(new offset, writer gone)`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            writer_gone = True
        except BlockingIOError:
            writer_gone = False
        os.lseek(fd, offset, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    whole = data[: data.rfind(b"\n") + 1]
    for match in _HIT_LINE_RE.finditer(whole):
        key, millis = match.group(1).decode("ascii"), int(match.group(2))
        counts[key] += 1
        latest[key] = max(latest.get(key, 0), millis)
    return offset + len(whole), writer_gone


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
        clauses.append(f"{_LAST_USED} < ?")
        parameters.append(now - f.older_than)
    if f.younger_than is not None:
        clauses.append(f"{_LAST_USED} >= ?")
        parameters.append(now - f.younger_than)
    if f.hits_below is not None:
        clauses.append("coalesce(h.count, 0) < ?")
        parameters.append(f.hits_below)
    if f.hits_above is not None:
        clauses.append("coalesce(h.count, 0) > ?")
        parameters.append(f.hits_above)
    return "".join(f" AND {clause}" for clause in clauses), parameters


def _kernel(row: Sequence[Any], root: str | None) -> Kernel:
    """A Kernel from a row of `_KERNEL_COLUMNS` + hits (values typed by the index itself)."""
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


# ---------------------------------------------------------------------------------------------
# Pruning

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
class PrunePlan:
    """Deletions planned for a cache directory: shown (`--dry-run`), confirmed, executed."""

    root: Path
    mode: PruneMode
    actions: tuple[PruneAction, ...]

    @property
    def expected_freed_size(self) -> int:
        return sum(action.freed for action in self.actions)

    @property
    def file_count(self) -> int:
        return sum(len(action.files) for action in self.actions)

    def describe(self) -> str:
        """`12 files of 4 kernels (IR only), 123.4K` for prompts and summaries."""
        what = {"ir": "IR only", "full": "whole entries", "dedupe": "duplicates"}[self.mode]
        return (
            f"{self.file_count} files of {len(self.actions)} kernels ({what}), "
            f"{format_size(self.expected_freed_size)}"
        )

    def execute(self) -> PruneResult:
        """Delete references before content, so an interrupted prune never leaves a group
        that lists a missing file: IR-only rewrites the group first, a whole entry loses its
        group first. Errors are collected per entry; the others still go."""
        root = os.path.realpath(self.root)
        entries = files = freed = 0
        errors: list[str] = []
        for action in self.actions:
            directory = Path(action.kernel.location)
            try:
                if not os.path.realpath(directory).startswith(root + os.sep):
                    raise OSError(f"{directory} is not inside {root}")
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


def plan_prune(root: Path, kernels: Sequence[Kernel], mode: PruneMode) -> PrunePlan:
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
    return PrunePlan(root, mode, tuple(actions))


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
    mode = path.stat().st_mode & 0o777
    fd, temp = tempfile.mkstemp(prefix=".warmer-tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
