"""What is on disk: Triton's cache entries (key, files, group, metadata) and warmer's own state
(the state directory and the hit log format that `warmer.tracking` writes), and the records a
listing returns. No I/O beyond the environment lookups, so the tracking cache manager, which
runs inside every Triton process, stays cheap to import.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

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
MODULE_SUFFIXES = (".so", ".c", ".pyd")
#: Hit log lines: `<52-char key> <13-digit epoch milliseconds>\n` (67 bytes, < PIPE_BUF).
HIT_LOG_SUFFIX = ".hits"
HIT_LINE_RE = re.compile(rb"([A-Z2-7]{52}) (\d{13})")


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


def normalise_arch(arch: str) -> str:
    """`sm_90`, `sm90` and `90` name the same CUDA arch; gfx names stay as they are."""
    lowered = arch.strip().lower()
    return re.sub(r"^sm_?", "", lowered)


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
