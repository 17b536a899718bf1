"""Compile real Triton kernels for GPU targets that need no GPU (FACTS.md), into a cache dir.

Run as a script so that TRITON_CACHE_DIR is set before Triton reads it:
    python compile_triton.py CACHE_DIR cuda:90 cuda:80 hip:gfx942
Prints one JSON line: {"events": [{"name": ..., "target": ..., "cache_hit": bool}, ...]}.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ["TRITON_CACHE_DIR"] = sys.argv[1]
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    @triton.jit
    def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        tl.store(out_ptr + offs, x + tl.load(y_ptr + offs, mask=mask), mask=mask)

    @triton.jit
    def scale_kernel(x_ptr, out_ptr, n, factor, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * factor, mask=mask)

    kernels = {
        "add_kernel": (
            add_kernel,
            {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"},
        ),
        "scale_kernel": (
            scale_kernel,
            {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "factor": "fp32"},
        ),
    }
    events: list[dict[str, object]] = []

    def listener(*, src, metadata, metadata_group, times, cache_hit):  # type: ignore[no-untyped-def]
        events.append({"name": metadata["name"], "cache_hit": bool(cache_hit)})

    triton.knobs.compilation.listener = listener
    for spec in sys.argv[2:]:
        backend, arch = spec.split(":")
        target = GPUTarget(
            backend, int(arch) if arch.isdigit() else arch, 32 if backend == "cuda" else 64
        )
        for name, (fn, signature) in kernels.items():
            before = len(events)
            triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs={"BLOCK": 128}), target=target
            )
            for event in events[before:]:
                event["target"] = spec
                event["kernel"] = name
    print(json.dumps({"events": events}))


if __name__ == "__main__":
    main()
