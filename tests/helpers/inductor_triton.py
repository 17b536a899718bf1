"""Compile a Triton kernel the way Inductor does (no GPU needed, FACTS.md): TRITON_CACHE_DIR,
when unset, becomes `<inductor cache>/triton/<device>` (torch/_inductor/runtime/
triton_heuristics.py), then the kernel is compiled for sm_90. Prints one JSON line:
{"dir": the Triton cache used, "hits": [cache_hit, ...]}.
"""

from __future__ import annotations

import json
import os


def main() -> None:
    from torch._inductor.runtime.cache_dir_utils import triton_cache_dir

    os.environ.setdefault("TRITON_CACHE_DIR", triton_cache_dir(0))
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    @triton.jit
    def copy(x_ptr, out_ptr, n, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

    hits: list[bool] = []
    triton.knobs.compilation.listener = lambda **event: hits.append(event["cache_hit"])
    signature = {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}
    triton.compile(ASTSource(copy, signature, {"BLOCK": 64}), target=GPUTarget("cuda", 90, 32))
    print(json.dumps({"dir": os.environ["TRITON_CACHE_DIR"], "hits": hits}))


if __name__ == "__main__":
    main()
