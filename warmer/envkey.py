"""The environment key: which torch / CUDA or HIP / GPU arch / Triton / vLLM / Python a set of
caches was made with, and whether another environment can use them.

Compile caches are keyed by these parts (FACTS.md), so a bundle restored elsewhere either
misses quietly or, worse, loads code built for another GPU. `compare` names every difference
and says why it matters; the restore refuses on a "mismatch" and only reports a "warning".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

_STRING_FIELDS = (
    "torch",
    "cuda",
    "hip",
    "cc",
    "gfx_arch",
    "gpu_name",
    "triton",
    "vllm",
    "python",
    "platform",
)
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

Severity = Literal["mismatch", "warning"]


@dataclass(frozen=True)
class EnvKey:
    """The parts of an environment that compile caches depend on; None where unknown."""

    torch: str | None
    cuda: str | None
    hip: str | None
    cc: str | None
    gfx_arch: str | None
    gpu_name: str | None
    gpu_count: int
    triton: str | None
    vllm: str | None
    python: str | None
    platform: str | None
    backend: str

    @classmethod
    def probe(cls) -> EnvKey:
        """This machine's key (the same probe the in-container agent runs; torch not imported)."""
        from warmer.agent.probe import probe

        return cls.from_dict(probe())

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> EnvKey:
        """A key from a probe, report or manifest; missing parts are None, unknown keys ignored."""
        strings = {
            name: None if data.get(name) is None else str(data.get(name)) for name in _STRING_FIELDS
        }
        count = data.get("gpu_count")
        return cls(
            **strings,
            gpu_count=count if isinstance(count, int) and not isinstance(count, bool) else 0,
            backend=str(data.get("backend") or "cpu"),
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def tag(self) -> str:
        """Readable key for names: `torch2.6.0-cuda12.4-cc9.0-triton3.2.0[-vllm0.9.2]`.

        Local versions (`+cu124`) are dropped, unknown parts left out; `notorch` without torch.
        """
        parts = [f"torch{_public(self.torch)}" if self.torch else "notorch"]
        if self.backend == "cuda":
            parts.append(f"cuda{_major_minor(self.cuda) or ''}")
            parts.append(f"cc{self.cc}" if self.cc else "")
        elif self.backend == "rocm":
            parts.append(f"rocm{_major_minor(self.hip) or ''}")
            parts.append(self.gfx_arch or "")
        else:
            parts.append(self.backend)
        parts.append(f"triton{_public(self.triton)}" if self.triton else "")
        parts.append(f"vllm{_public(self.vllm)}" if self.vllm else "")
        return "-".join(_TAG_UNSAFE.sub("_", part) for part in parts if part)

    @property
    def digest(self) -> str:
        """`sha256:<16 hex>` of the canonical JSON of every part (hashlib: no third party here)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Difference:
    """One part that differs between a bundle's environment and this one, and why it matters."""

    field: str
    bundle: object
    here: object
    severity: Severity
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.field}: bundle {_shown(self.bundle)}, here {_shown(self.here)} — {self.reason}"
        )


#: Why each part matters (FACTS.md).
REASONS = {
    "torch": "Inductor's FX graph key hashes torch's own sources, so every graph misses",
    "backend": "the caches hold code for one backend (CUDA cubins, ROCm hsaco or CPU .so files)",
    "cuda": "Inductor's key includes the CUDA version and Triton's the ptxas version",
    "hip": "Inductor's key includes the HIP version; kernels are built against one ROCm",
    "cc": "Triton and Inductor compile for one compute capability; kernels for another miss",
    "gfx_arch": "Triton compiles for one gfx arch; hsaco for another arch misses",
    "triton": "Triton's cache key hashes its own version (sources and libtriton.so)",
    "vllm": "vLLM's compile cache hash covers its config and its source files",
    "python": "compiled modules, include paths and bytecode belong to one Python minor version",
    "platform": "compiled code is built for one OS and CPU architecture",
    "gpu_name": "Inductor's FX graph key includes the device name: FX graphs may miss while "
    "Triton kernels still hit",
    "python_micro": "usually harmless (the keys use the minor version), but another "
    "interpreter build",
    "unknown": "unknown on one side (no GPU visible?), so it cannot be checked",
}


def compare(bundle: EnvKey, here: EnvKey) -> list[Difference]:
    """Every difference between the bundle's key and this one: mismatches break cache hits,
    warnings may cost some of them."""
    differences: list[Difference] = []

    def differ(name: str, severity: Severity, reason_key: str | None = None) -> None:
        differences.append(
            Difference(
                name,
                getattr(bundle, name),
                getattr(here, name),
                severity,
                REASONS[reason_key or name],
            )
        )

    for name in ("torch", "backend"):
        if getattr(bundle, name) != getattr(here, name):
            differ(name, "mismatch")
    for name in ("cuda", "hip"):
        if _major_minor(getattr(bundle, name)) != _major_minor(getattr(here, name)):
            differ(name, "mismatch")
    for name in ("cc", "gfx_arch"):
        ours, theirs = getattr(bundle, name), getattr(here, name)
        if ours != theirs:
            known = ours is not None and theirs is not None
            differ(name, "mismatch" if known else "warning", None if known else "unknown")
    if bundle.triton != here.triton:
        differ("triton", "mismatch")
    if bundle.vllm is not None and bundle.vllm != here.vllm:
        differ("vllm", "mismatch")
    if _major_minor(bundle.python) != _major_minor(here.python):
        differ("python", "mismatch")
    elif bundle.python != here.python:
        differ("python", "warning", "python_micro")
    if bundle.platform != here.platform:
        differ("platform", "mismatch")
    if bundle.gpu_name != here.gpu_name:
        differ("gpu_name", "warning")
    return differences


def _public(version: str | None) -> str:
    """The version without its local part: 2.6.0+cu124 -> 2.6.0."""
    return (version or "").split("+", 1)[0]


def _major_minor(version: str | None) -> str | None:
    """12.4 -> 12.4, 6.2.41133-dd7f95766 -> 6.2, 3.11.7 -> 3.11."""
    if version is None:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return f"{match.group(1)}.{match.group(2)}" if match else version


def _shown(value: object) -> str:
    return "none" if value is None else str(value)


# -- key factors: what each compiler keys on (warmer.agent.probe.key_factors) ------------------

#: The kinds whose keys warmer knows part by part.
KEYED_KINDS = ("triton", "inductor", "vllm")
#: Which cache kinds each environment part is in the key of (a mismatch there is their miss).
ENV_KINDS: dict[str, tuple[str, ...]] = {
    "torch": ("inductor", "vllm"),
    "backend": ("triton", "inductor", "vllm"),
    "cuda": ("triton", "inductor", "vllm"),
    "hip": ("triton", "inductor", "vllm"),
    "cc": ("triton", "inductor", "vllm"),
    "gfx_arch": ("triton", "inductor", "vllm"),
    "triton": ("triton", "inductor", "vllm"),
    "vllm": ("vllm",),
    "python": ("triton", "inductor", "vllm"),
    "platform": ("triton", "inductor", "vllm"),
}

#: Key factor (dotted path in `key_factors`) -> the cache kinds whose key holds it (none: it
#: keys nothing, and a difference is a warning) and why (FACTS.md, "What each compiler keys on").
FACTORS: dict[str, tuple[tuple[str, ...], str]] = {
    "triton.key": (
        ("triton", "inductor", "vllm"),
        "Triton's key hashes its own sources and libtriton.so (Inductor's holds Triton's)",
    ),
    "triton.backend_hash": (
        ("triton",),
        "Triton's key holds the backend: ptxas --version + compute capability, or the AMD "
        "codegen + gfx arch",
    ),
    "triton.ptxas": (("triton",), "Triton's CUDA key holds `ptxas --version`"),
    "triton.target.backend": (("triton",), "Triton compiles for one backend"),
    "triton.target.arch": (("triton",), "Triton compiles for one arch"),
    "triton.target.warp_size": (("triton",), "Triton compiles for one warp size"),
    "inductor.torch_key": (
        ("inductor", "vllm"),
        "Inductor's FX graph key hashes torch's own sources (a rebuilt or patched torch of "
        "the same version misses too)",
    ),
    "inductor.device_name": (
        ("inductor", "vllm"),
        "Inductor's FX graph key holds the device name (CUDA) or gcnArchName (ROCm)",
    ),
    "inductor.cuda": (("inductor", "vllm"), "Inductor's key holds the CUDA version"),
    "inductor.hip": (("inductor", "vllm"), "Inductor's key holds the HIP version"),
    "inductor.cpp_compiler": (
        ("inductor",),
        "CPU kernels are keyed by the command that compiles them",
    ),
    "vllm.version": (("vllm",), "vLLM's cache hash covers its config and sources"),
    "vllm.install_path": (
        ("vllm",),
        "vLLM's code hash covers its traced source files with their paths",
    ),
    "silicon.cc": (("triton", "inductor", "vllm"), "kernels are built for one compute capability"),
    "silicon.sm_count": ((), "same keys, but autotuned choices were made for another SM count"),
    "silicon.name": ((), "another product name; the silicon (capability, SM count) decides"),
}


@dataclass(frozen=True)
class FactorDifference:
    """One key factor that differs, and the cache kinds it makes miss (none: a warning)."""

    factor: str
    bundle: object
    here: object
    kinds: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.factor}: bundle {_shown(self.bundle)}, here {_shown(self.here)} — {self.reason}"
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def misses(self, kind: str) -> bool:
        """Whether this difference makes the cache kind `kind` miss: a kind whose key warmer
        knows part by part when the part is in it, any other kind on any mismatch."""
        return kind in self.kinds if kind in KEYED_KINDS else bool(self.kinds)


def factor_differences(
    bundle: Mapping[str, object] | None, here: Mapping[str, object] | None
) -> list[FactorDifference]:
    """Key factors known on both sides that differ. A factor unknown on a side (no GPU there,
    a package absent: the environment key names that) is not compared."""
    differences = []
    for factor, (kinds, reason) in FACTORS.items():
        ours, theirs = _leaf(bundle, factor), _leaf(here, factor)
        if ours is not None and theirs is not None and ours != theirs:
            differences.append(FactorDifference(factor, ours, theirs, kinds, reason))
    return differences


def env_differences(bundle: EnvKey, here: EnvKey) -> list[FactorDifference]:
    """`compare`'s differences as factors: a mismatch misses the kinds keyed on that part."""
    return [
        FactorDifference(
            d.field,
            d.bundle,
            d.here,
            ENV_KINDS.get(d.field, ()) if d.severity == "mismatch" else (),
            d.reason,
        )
        for d in compare(bundle, here)
    ]


def json_differences(bundle: object, here: object, limit: int = 10) -> list[str]:
    """The leaves of two JSON documents that differ (`a.b[2]: bundle X, here Y`), at most
    `limit`: what changed between two of vLLM's `cache_key_factors.json`."""
    ours, theirs = dict(_leaves(bundle)), dict(_leaves(here))
    changed = [
        f"{path}: bundle {_shown(ours.get(path))}, here {_shown(theirs.get(path))}"
        for path in sorted(set(ours) | set(theirs))
        if ours.get(path) != theirs.get(path)
    ]
    more = [f"… and {len(changed) - limit} more"] if len(changed) > limit else []
    return changed[:limit] + more


def _leaf(document: Mapping[str, object] | None, path: str) -> object:
    value: object = document
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _leaves(value: object, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, Mapping):
        return [
            leaf
            for key in sorted(value)
            for leaf in _leaves(value[key], f"{prefix}.{key}" if prefix else str(key))
        ]
    if isinstance(value, list):
        return [leaf for i, item in enumerate(value) for leaf in _leaves(item, f"{prefix}[{i}]")]
    return [(prefix, value)]


#: What a miss is put down to when no recorded part of its key differs.
UNEXPLAINED = (
    "no recorded key factor differs: the model, its inputs or the compile options changed, "
    "or a part of the key warmer does not read"
)


def explain_misses(
    missed: list[str],
    bundle_env: Mapping[str, object],
    bundle_factors: Mapping[str, object] | None,
    here_env: Mapping[str, object],
    here_factors: Mapping[str, object] | None,
) -> dict[str, list[str]]:
    """Why each missed artifact (`kind:id`, as `caches.write_proof` names them) missed: the
    parts of its cache kind's key that differ between the bundle and the run that missed.
    A vLLM graph that was compiled again is put down to what differs between its
    `cache_key_factors.json` and the bundle's (of the same rank)."""
    differences = env_differences(EnvKey.from_dict(bundle_env), EnvKey.from_dict(here_env))
    differences += factor_differences(bundle_factors, here_factors)
    bundle_graphs = _graphs(bundle_factors)
    here_graphs = _graphs(here_factors)
    explained: dict[str, list[str]] = {}
    for artifact in missed:
        artifact_kind, _, unit = artifact.partition(":")
        kind = artifact_kind.split("-", 1)[0]
        reasons = [str(d) for d in differences if d.misses(kind)]
        if artifact_kind == "vllm-graph":
            reasons += _graph_reasons(unit, bundle_graphs, here_graphs)
        explained[artifact] = reasons or [UNEXPLAINED]
    return explained


def _graphs(factors: Mapping[str, object] | None) -> dict[str, object]:
    graphs = _leaf(factors, "vllm.graphs")
    return dict(graphs) if isinstance(graphs, Mapping) else {}


def _graph_reasons(
    unit: str, bundle: Mapping[str, object], here: Mapping[str, object]
) -> list[str]:
    """`unit` is `<hash>/rank_*/<prefix>`; its factors are `torch_compile_cache/<hash>/rank_*`'s,
    compared with the bundle's graph directory of the same rank."""
    parts = unit.split("/")
    if len(parts) < 2:
        return []
    directory = f"torch_compile_cache/{parts[0]}/{parts[1]}"
    if directory in bundle or directory not in here:
        return []
    same_rank = [d for d in bundle if d.endswith(f"/{parts[1]}")] or list(bundle)
    if not same_rank:
        return []
    changed = json_differences(bundle[same_rank[0]], here[directory])
    return [f"vLLM cache_key_factors.json ({same_rank[0]} → {directory}): {c}" for c in changed]
