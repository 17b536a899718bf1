"""torch.compile warm-up: build the user's module, compile it, run every warm-up input.

The model is `"package.module:factory"`; the factory gets `engine.args` as keyword arguments
and returns an `nn.Module`. Each input is made from a fixed seed (its index), so two runs of
one job feed the same tensors and look up the same cache keys.

Counting, per run:
  hits   = Inductor FX graph cache hits   + Triton kernel cache hits
  misses = Inductor FX graph cache misses + Triton kernel cache misses
An FX graph cache bypass counts as neither (nothing was looked up). Triton's lookups come
from its compilation listener, called for each kernel it compiles or finds in its cache; on
CPU, Inductor emits C++ and Triton sees nothing. AOTAutograd's cache counters are reported
but not added: they shadow the FX graph lookups of the same graphs.

Timings: `import_s` is everything before the first call of the compiled model (importing
torch and the model, building it, making the inputs); `compile_s` runs from that first call
to the end of the warm-up, GPU work included (synchronised).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from warmer.agent.report import EngineError, Outcome, Progress


def run(job: Mapping[str, Any], progress: Progress) -> Outcome:
    engine = job["engine"]
    warmup = job.get("warmup") or {}
    inputs = warmup.get("inputs") or []
    if not inputs:
        raise EngineError("the torch-compile engine needs warmup.inputs (shapes to run)")
    repeat = int(warmup.get("repeat") or 1)
    progress.expect(len(inputs))
    started = time.perf_counter()

    factory = load_factory(engine["model"])
    import torch
    from torch._dynamo.utils import counters

    triton_counts = listen_to_triton()
    module = factory(**(engine.get("args") or {}))
    if not isinstance(module, torch.nn.Module):
        raise EngineError(f"{engine['model']} returned {type(module).__name__}, not an nn.Module")
    on_gpu = job.get("backend") in ("cuda", "rocm")
    device = "cuda" if on_gpu else "cpu"
    module = module.to(device).eval()
    options = engine.get("compile") or {}
    compiled = torch.compile(
        module,
        mode=options.get("mode"),
        dynamic=options.get("dynamic"),
        backend=options.get("backend") or "inductor",
        fullgraph=bool(options.get("fullgraph")),
    )
    tensors = [make_input(torch, spec, seed, device) for seed, spec in enumerate(inputs)]
    if (options.get("backend") or "inductor") == "inductor":
        prepare_inductor()
    import_s = time.perf_counter() - started
    megacache = MegaCache.from_environment()
    megacache_load_s = megacache.load(torch) if megacache else None

    compile_started = time.perf_counter()
    with torch.no_grad():
        for index, tensor in enumerate(tensors):
            with progress.step(f"input[{index}] {tuple(tensor.shape)}"):
                for _ in range(repeat):
                    compiled(tensor)
                if on_gpu:
                    torch.cuda.synchronize()
    compile_s = time.perf_counter() - compile_started
    if megacache:
        megacache.save(torch)

    inductor = {k: v for k, v in counters["inductor"].items() if "cache" in k}
    aot_autograd = {k: v for k, v in counters["aot_autograd"].items() if "cache" in k}
    reported = {"inductor": inductor, "aot_autograd": aot_autograd}
    if triton_counts is not None:
        reported["triton"] = dict(triton_counts)
    triton = reported.get("triton", {})
    return Outcome(
        counters=reported,
        hits=inductor.get("fxgraph_cache_hit", 0) + triton.get("cache_hit", 0),
        misses=inductor.get("fxgraph_cache_miss", 0) + triton.get("cache_miss", 0),
        import_s=round(import_s, 3),
        compile_s=round(compile_s, 3),
        extra_timings={"megacache_load_s": megacache_load_s} if megacache_load_s else {},
    )


class MegaCache:
    """PyTorch's own portable cache (`torch.compiler.save/load_cache_artifacts`), for comparing
    with it side by side (bench/coldstart.py): WARMER_MEGACACHE=save:PATH or load:PATH."""

    def __init__(self, action: str, path: str) -> None:
        self.action, self.path = action, path

    @classmethod
    def from_environment(cls) -> MegaCache | None:
        value = os.environ.get("WARMER_MEGACACHE")
        if not value:
            return None
        action, _, path = value.partition(":")
        if action not in ("save", "load") or not path:
            raise EngineError(f"WARMER_MEGACACHE={value!r}: expected save:PATH or load:PATH")
        return cls(action, path)

    def load(self, torch: Any) -> float | None:
        """Load the artifacts before the first call; returns how long that took."""
        if self.action != "load":
            return None
        started = time.perf_counter()
        with open(self.path, "rb") as artifacts:
            torch.compiler.load_cache_artifacts(artifacts.read())
        return round(time.perf_counter() - started, 3)

    def save(self, torch: Any) -> None:
        if self.action == "save":
            artifacts = torch.compiler.save_cache_artifacts()
            if artifacts is None:
                raise EngineError("torch.compiler.save_cache_artifacts() returned nothing")
            with open(self.path, "wb") as out:
                out.write(artifacts[0])


def prepare_inductor() -> None:
    """Import Inductor's modules, which it would otherwise import inside the first call.

    An import costs the same cold or warm, so it is timed with the imports (import_s). Its
    CPU vector-ISA check is NOT done here: on a cold start that check compiles test
    programs (work a cache saves), so it stays inside the compile time.
    """
    import torch._inductor.compile_fx  # noqa: F401


def load_factory(reference: str) -> Callable[..., Any]:
    """The callable that `"package.module:factory"` names (the module imported here)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise EngineError(f"engine.model must be 'package.module:factory', not {reference!r}")
    module = importlib.import_module(module_name)
    try:
        factory = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise EngineError(f"{module_name} has no attribute {attribute!r}") from None
    if not callable(factory):
        raise EngineError(f"{reference} is not callable")
    return factory


def listen_to_triton() -> dict[str, int] | None:
    """Count Triton's cache hits and misses (None when this Triton has no listener hook).

    An existing listener is kept and still called.
    """
    try:
        import triton

        compilation = triton.knobs.compilation
    except (ImportError, AttributeError):
        return None
    counts = {"cache_hit": 0, "cache_miss": 0}
    previous = compilation.listener

    def listener(**event: Any) -> None:
        counts["cache_hit" if event.get("cache_hit") else "cache_miss"] += 1
        if previous is not None:
            previous(**event)

    compilation.listener = listener
    return counts


def make_input(torch: Any, spec: Mapping[str, Any], seed: int, device: str) -> Any:
    """A tensor of `spec["shape"]`, uniform in [low, high), the same for the same seed."""
    name = spec.get("dtype") or "float32"
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise EngineError(f"unknown dtype {name!r} in warmup.inputs[{seed}]")
    shape = [int(size) for size in spec["shape"]]
    low, high = float(spec.get("low", 0.0)), float(spec.get("high", 1.0))
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        tensor = torch.randint(0, 2, shape, generator=generator).bool()
    elif dtype.is_floating_point:
        tensor = (torch.rand(shape, generator=generator) * (high - low) + low).to(dtype)
    else:
        # The integers in [low, high).
        first, end = math.ceil(low), math.ceil(high)
        if end <= first:
            raise EngineError(f"warmup.inputs[{seed}]: no integer in [{low:g}, {high:g})")
        tensor = torch.randint(first, end, shape, generator=generator, dtype=dtype)
    return tensor.to(device)
