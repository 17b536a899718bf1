"""The verify pass's hit proof: compile artifacts told apart by path, hits and misses by what a
warm start wrote. The layouts are those that torch 2.13, Triton 3.9 and vLLM 0.32 wrote here
(a vLLM CPU run with and without its AOT compile, an Inductor run, a Triton compile)."""

from __future__ import annotations

from warmer.caches import CacheRoot, compile_artifact, write_proof

ROOTS = [
    CacheRoot("vllm", "/root/.cache/vllm"),
    CacheRoot("inductor", "/tmp/torchinductor_root"),
    CacheRoot("triton", "/root/.triton/cache"),
    CacheRoot("cuda-jit", "/root/.nv/ComputeCache"),
]
AOT = "/root/.cache/vllm/torch_compile_cache/torch_aot_compile/1a06eac3"
GRAPHS = "/root/.cache/vllm/torch_compile_cache/3a332b42ba/rank_0_0/backbone"
INDUCTOR = "/tmp/torchinductor_root"
TRITON_KEY = "GLK3OQDYY2MBGOWHXRZ6X4W5OQ5TK4GNZEEH7XRG2BSMZV3HDGLQ"


def test_each_file_belongs_to_the_artifact_a_compile_made() -> None:
    cases = {
        f"{AOT}/rank_0_0/model": ("vllm-aot", "1a06eac3/rank_0_0/model"),
        f"{AOT}/inductor_cache/aotautograd/ajc6uw/73kxqz": ("inductor-aotautograd", "ajc6uw"),
        f"{AOT}/inductor_cache/bb/cbbxyz.main.so": None,  # code beside the graph it belongs to
        f"{GRAPHS}/computation_graph.py": ("vllm-graph", "3a332b42ba/rank_0_0/backbone"),
        f"{GRAPHS}/inductor_cache/fxgraph/ro/fro12/abc": ("inductor-fxgraph", "fro12"),
        "/root/.cache/vllm/torch_compile_cache/3a332b42ba/rank_0_0/cache_key_factors.json": None,
        "/root/.cache/vllm/modelinfos/vllm-model_executor-models-llama.json": None,
        f"{INDUCTOR}/fxgraph/ro/fro12/abc": ("inductor-fxgraph", "fro12"),
        f"{INDUCTOR}/aotautograd/ajc6uw/73kxqz": ("inductor-aotautograd", "ajc6uw"),
        f"{INDUCTOR}/precompiled_headers/c46m2q.h.gch": ("inductor-pch", "c46m2q"),
        f"{INDUCTOR}/precompiled_headers/c46m2q.h": ("inductor-pch", "c46m2q"),
        f"{INDUCTOR}/precompiled_headers/locks/c46m2q.lock": None,
        f"{INDUCTOR}/52/c52abc.main.cpp": None,
        f"{INDUCTOR}/triton/0/{TRITON_KEY}/add_kernel.cubin": ("triton", TRITON_KEY),
        f"/root/.triton/cache/{TRITON_KEY}/__grp__add_kernel.json": ("triton", TRITON_KEY),
        "/root/.nv/ComputeCache/7/a/b": ("cuda-jit", "7"),
        "/srv/model/weights.bin": None,
    }
    assert {path: compile_artifact(path, ROOTS) for path in cases} == cases


def test_an_artifact_has_the_same_id_wherever_its_root_lives() -> None:
    elsewhere = [CacheRoot("vllm", "/work/tmp/abc/vllm")]
    moved = "/work/tmp/abc/vllm/torch_compile_cache/torch_aot_compile/1a06eac3/rank_0_0/model"
    assert compile_artifact(moved, elsewhere) == compile_artifact(f"{AOT}/rank_0_0/model", ROOTS)


BUNDLE = [
    f"{AOT}/rank_0_0/model",
    f"{AOT}/inductor_cache/aotautograd/ajc6uw/73kxqz",
    f"{INDUCTOR}/fxgraph/ro/fro12/abc",
    f"{INDUCTOR}/fxgraph/ro/fro12/abc.meta",
    f"{INDUCTOR}/52/c52abc.main.so",
    f"{INDUCTOR}/precompiled_headers/c46m2q.h.gch",
]


def test_a_warm_start_that_wrote_nothing_hit_every_artifact() -> None:
    proof = write_proof(BUNDLE, [], ROOTS)
    assert proof["hit_rate"] == 1.0
    assert (proof["hits"], proof["misses"], proof["missed"]) == (4, 0, [])
    assert proof["by_kind"]["inductor-fxgraph"] == {"hits": 1, "misses": 0}


def test_what_a_warm_start_wrote_again_is_a_miss_by_kind() -> None:
    """vLLM 0.32 on CPU fails to load its AOT model and compiles it again: it rewrites the
    model file and adds an AOT autograd entry; a lock file it touched counts for nothing."""
    written = [
        f"{AOT}/rank_0_0/model",
        f"{AOT}/inductor_cache/aotautograd/zz91/entry",
        f"{INDUCTOR}/precompiled_headers/locks/c46m2q.lock",
    ]
    proof = write_proof(BUNDLE, written, ROOTS)
    assert (proof["hits"], proof["misses"]) == (3, 2)
    assert proof["hit_rate"] == 0.6
    assert proof["by_kind"]["vllm-aot"] == {"hits": 0, "misses": 1}
    assert proof["by_kind"]["inductor-aotautograd"] == {"hits": 1, "misses": 1}
    assert proof["missed"] == ["inductor-aotautograd:zz91", "vllm-aot:1a06eac3/rank_0_0/model"]


def test_no_artifact_either_way_proves_nothing() -> None:
    proof = write_proof(["/root/.cache/vllm/modelinfos/m.json"], [], ROOTS)
    assert proof["hit_rate"] is None and proof["hits"] == proof["misses"] == 0


def test_vllms_ipc_sockets_are_noise_not_left_out_files() -> None:
    from warmer.runner import _is_noise

    assert _is_noise("/tmp/2fe9ab67-dbae-4d8f-a435-186ee78bbbbf", "/tmp")
    assert not _is_noise("/tmp/2fe9ab67-dbae-4d8f-a435-186ee78bbbbf.log", "/tmp")
    assert not _is_noise("/srv/2fe9ab67-dbae-4d8f-a435-186ee78bbbbf", "/tmp")
    assert _is_noise("/proc/1/status", "/tmp") and not _is_noise("/tmp/model.bin", "/tmp")
