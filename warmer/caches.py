"""What a compile cache is: the kinds warmer knows, where each lives, and which file is which.

Roots are computed from plain facts (environment variables, home, temp dir, user), so the
same function answers for this process and for a container whose facts the agent reported.
Some caches are written at their default place whatever the variables say (FACTS.md: CPU
Inductor's `precompiled_headers`), so a redirected root adds the default one as well.

Relocation lives here too: a file recorded at one path and found (or installed) at another
(`relocate`), and the Triton group files whose children must follow it (`rewrite_group`).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Every kind warmer classifies, in the order tables show them.
KINDS = (
    "triton",
    "inductor",
    "vllm",
    "cuda-jit",
    "torch-extensions",
    "flashinfer",
    "miopen",
)

#: The variables that move a cache root; the agent reports these from inside the image.
CACHE_VARIABLES = (
    "TRITON_CACHE_DIR",
    "TRITON_HOME",
    "TORCHINDUCTOR_CACHE_DIR",
    "VLLM_CACHE_ROOT",
    "XDG_CACHE_HOME",
    "CUDA_CACHE_PATH",
    "TORCH_EXTENSIONS_DIR",
    "FLASHINFER_WORKSPACE_BASE",
    "MIOPEN_USER_DB_PATH",
    "MIOPEN_CUSTOM_CACHE_DIR",
)

_IGNORED_NAMES = re.compile(r"(^|/)(locks?|__pycache__)(/|$)|\.lock$|\.tmp[^/]*$|(^|/)\.tmp")


@dataclass(frozen=True)
class CacheRoot:
    """One directory that holds files of one cache kind."""

    kind: str
    path: str


@dataclass(frozen=True)
class Facts:
    """What decides where caches live: the process's environment, home, temp dir and user."""

    environ: Mapping[str, str | None]
    home: str
    tmpdir: str
    user: str

    @classmethod
    def of_this_process(cls) -> Facts:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid_{os.getuid()}"
        return cls(
            environ={name: os.environ.get(name) for name in CACHE_VARIABLES},
            home=os.path.expanduser("~"),
            tmpdir=tempfile.gettempdir(),
            user=user,
        )

    @classmethod
    def from_report(cls, facts: Mapping[str, object]) -> Facts:
        """Facts as the in-container agent reported them."""
        environ = facts.get("environ") or {}
        assert isinstance(environ, Mapping)
        return cls(
            environ={str(k): (str(v) if v is not None else None) for k, v in environ.items()},
            home=str(facts.get("home") or "/root"),
            tmpdir=str(facts.get("tmpdir") or "/tmp"),
            user=str(facts.get("user") or "root"),
        )


def inductor_default_dir(facts: Facts) -> str:
    """Inductor's default root: `<tempdir>/torchinductor_<user>` (user sanitised like torch)."""
    user = re.sub(r'[\\/:*?"<>|]', "_", facts.user)
    return os.path.join(facts.tmpdir, f"torchinductor_{user}")


def default_roots(facts: Facts) -> list[CacheRoot]:
    """Every root where a run with these facts writes compile caches, most specific first."""
    env = facts.environ

    def var(name: str) -> str | None:
        value = env.get(name)
        return value or None

    xdg_cache = var("XDG_CACHE_HOME") or os.path.join(facts.home, ".cache")
    triton_home = var("TRITON_HOME") or facts.home
    inductor_default = inductor_default_dir(facts)
    inductor = var("TORCHINDUCTOR_CACHE_DIR") or inductor_default
    roots = [
        CacheRoot(
            "triton", var("TRITON_CACHE_DIR") or os.path.join(triton_home, ".triton", "cache")
        ),
        CacheRoot("inductor", inductor),
        CacheRoot("vllm", var("VLLM_CACHE_ROOT") or os.path.join(xdg_cache, "vllm")),
        CacheRoot(
            "cuda-jit", var("CUDA_CACHE_PATH") or os.path.join(facts.home, ".nv", "ComputeCache")
        ),
        CacheRoot(
            "torch-extensions",
            var("TORCH_EXTENSIONS_DIR") or os.path.join(xdg_cache, "torch_extensions"),
        ),
        CacheRoot(
            "flashinfer",
            os.path.join(var("FLASHINFER_WORKSPACE_BASE") or facts.home, ".cache", "flashinfer"),
        ),
        CacheRoot(
            "miopen", var("MIOPEN_USER_DB_PATH") or os.path.join(facts.home, ".config", "miopen")
        ),
        CacheRoot("miopen", var("MIOPEN_CUSTOM_CACHE_DIR") or os.path.join(xdg_cache, "miopen")),
    ]
    if inductor != inductor_default:
        # Written at the default place whatever TORCHINDUCTOR_CACHE_DIR says (FACTS.md).
        roots.append(CacheRoot("inductor", inductor_default))
    unique: dict[str, CacheRoot] = {}
    for root in roots:
        unique.setdefault(
            os.path.normpath(root.path), CacheRoot(root.kind, os.path.normpath(root.path))
        )
    return sorted(unique.values(), key=lambda r: len(r.path), reverse=True)


def select(roots: Sequence[CacheRoot], kinds: Sequence[str] | None) -> list[CacheRoot]:
    """Keep the roots of the given kinds (all when `kinds` is None)."""
    if kinds is None:
        return list(roots)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown cache kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    return [root for root in roots if root.kind in kinds]


def classify(path: str, roots: Sequence[CacheRoot]) -> str | None:
    """The kind of the cache file at absolute `path`, or None when no root holds it.

    The longest matching root wins, so Inductor's `triton/` subtree stays `inductor` only when
    no Triton root is nested inside it.
    """
    root = _holding_root(path, roots)
    return root.kind if root else None


def _holding_root(path: str, roots: Sequence[CacheRoot]) -> CacheRoot | None:
    """The longest root that holds `path` (see `classify`)."""
    best: CacheRoot | None = None
    for root in roots:
        prefix = root.path.rstrip("/") + "/"
        if path.startswith(prefix) and (best is None or len(root.path) > len(best.path)):
            best = root
    return best


def is_ignored(relpath: str) -> bool:
    """Lock files, temp files and bytecode that no run needs back."""
    return bool(_IGNORED_NAMES.search(relpath))


def is_triton_group(path: str) -> bool:
    """Triton's group files list their children by ABSOLUTE path (FACTS.md)."""
    name = os.path.basename(path)
    return name.startswith("__grp__") and name.endswith(".json")


def rewrite_group(data: bytes, directory: str) -> bytes | None:
    """Point a Triton group file's children at `directory`, where the group now lives.

    Triton drops children whose recorded path does not exist, so a cache moved to another
    directory silently misses unless these paths follow it. Children always live beside their
    group file, so each becomes `directory/<basename>`. Returns None when nothing changes (or
    when the file is not a group file warmer understands, which is then left as it is).
    """
    try:
        group = json.loads(data)
        children = group["child_paths"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(children, dict):
        return None
    moved = {
        name: os.path.join(directory, os.path.basename(str(path)))
        for name, path in children.items()
    }
    if moved == children:
        return None
    group["child_paths"] = moved
    return json.dumps(group).encode()


def relocate(path: str, mapping: Mapping[str, str]) -> str:
    """`path` with the longest matching prefix of `mapping` replaced (identity otherwise)."""
    best = ""
    for old in mapping:
        prefix = old.rstrip("/") + "/"
        if (path == old.rstrip("/") or path.startswith(prefix)) and len(old) > len(best):
            best = old
    if not best:
        return path
    return mapping[best].rstrip("/") + path[len(best.rstrip("/")) :]


#: How many missed artifacts a verify result names.
MISSED_SHOWN = 20
#: vLLM files that describe a cache rather than hold compiled work.
_VLLM_METADATA = ("cache_key_factors.json",)


def compile_artifact(path: str, roots: Sequence[CacheRoot]) -> tuple[str, str] | None:
    """(artifact kind, id) of the compile artifact the file at `path` belongs to; None for a
    file that is no artifact of its own (a lock, code generated beside an FX graph, metadata).

    Kinds: `vllm-aot`, `vllm-graph`, `inductor-fxgraph`, `inductor-aotautograd`,
    `inductor-pch`, `triton`, and the cache kind itself for the other caches.

    The id is relative to the cache root, so the same artifact has the same id wherever the
    root lives. Inductor caches nested in vLLM's (`…/inductor_cache/…`) count as Inductor's.
    """
    root = _holding_root(path, roots)
    if root is None:
        return None
    kind = root.kind
    relpath = path[len(root.path.rstrip("/")) + 1 :]
    if is_ignored(relpath):
        return None
    parts = relpath.split("/")
    if kind == "vllm":
        return _vllm_artifact(parts)
    if kind == "inductor":
        return _inductor_artifact(parts)
    if kind == "triton":
        return ("triton", parts[0]) if len(parts) > 1 else None
    return (kind, parts[0])


def _vllm_artifact(parts: list[str]) -> tuple[str, str] | None:
    """`torch_compile_cache/torch_aot_compile/<hash>/rank_*/<model>` (a whole AOT-compiled
    model) and `torch_compile_cache/<hash>/rank_*/<prefix>/…` (compiled graphs)."""
    if len(parts) < 4 or parts[0] != "torch_compile_cache" or parts[-1] in _VLLM_METADATA:
        return None
    if "inductor_cache" in parts:
        return _inductor_artifact(parts[parts.index("inductor_cache") + 1 :])
    if parts[1] == "torch_aot_compile":
        return ("vllm-aot", "/".join(parts[2:])) if len(parts) >= 5 else None
    return ("vllm-graph", "/".join(parts[1:4])) if len(parts) >= 5 else None


def _inductor_artifact(parts: list[str]) -> tuple[str, str] | None:
    """FX graphs (`fxgraph/<xx>/<key>/…`), AOT autograd entries (`aotautograd/<key>/…`),
    precompiled headers and Triton kernels under `triton/<device>/<key>/…`."""
    if len(parts) >= 3 and parts[0] == "fxgraph":
        return "inductor-fxgraph", parts[2]
    if len(parts) >= 2 and parts[0] == "aotautograd":
        return "inductor-aotautograd", parts[1]
    if len(parts) == 2 and parts[0] == "precompiled_headers":
        return "inductor-pch", parts[1].split(".", 1)[0]
    if len(parts) >= 4 and parts[0] == "triton":
        return "triton", parts[2]
    return None


def write_proof(
    held: Iterable[str], written: Iterable[str], roots: Sequence[CacheRoot]
) -> dict[str, Any]:
    """Hits and misses of a warm start from what it wrote, not from what it logged.

    `held` are the files the bundle put in place, `written` the files the warm start wrote
    under the cache roots. An artifact the warm start wrote is a miss (it compiled it); one
    the bundle held and the warm start left alone is a hit.
    """
    held_units = {unit for path in held if (unit := compile_artifact(path, roots))}
    missed = {unit for path in written if (unit := compile_artifact(path, roots))}
    by_kind: dict[str, dict[str, int]] = {}
    for label, units in (("hits", held_units - missed), ("misses", missed)):
        for kind, _ in units:
            by_kind.setdefault(kind, {"hits": 0, "misses": 0})[label] += 1
    hits, misses = len(held_units - missed), len(missed)
    return {
        "hits": hits,
        "misses": misses,
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        "by_kind": dict(sorted(by_kind.items())),
        "missed": sorted(f"{kind}:{unit}" for kind, unit in missed)[:MISSED_SHOWN],
    }
