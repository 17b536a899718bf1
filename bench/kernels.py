"""Benchmark the kernel index and hit tracking on a synthetic cache in Triton's real layout.

    python bench/kernels.py [--entries 100000] [--work DIR] [--json]

1. Compiles real kernels (tests/helpers/compile_triton.py: cuda sm_90 and hip gfx942) and
   copies their structure into N entries with new names and keys: metadata and group JSON
   rewritten like Triton writes them, binaries made unique (every 10th one a duplicate), IR
   cut to 512 bytes to keep the disk use small (the index never reads IR).
2. Times a cold index build, a warm `warmer kernels ls --name 'add*' --json` (in process and
   as a fresh process), and folding 100,000 hit log lines.
3. Times one cache hit through Triton's FileCacheManager and through TrackingCacheManager,
   both as the bare `get_group` lookup and as a whole `triton.compile` hit, and prints ratios.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAMES = ("add", "mul", "softmax", "layernorm", "matmul", "rmsnorm", "gelu", "attention")
IR_BYTES = 512
TARGETS = ("cuda:90", "hip:gfx942")
MANAGER = "warmer.tracking:TrackingCacheManager"


def synthesise(template_cache: Path, cache: Path, entries: int) -> None:
    """Write `entries` Triton entries shaped like the ones in `template_cache`."""
    templates = []
    for group in sorted(template_cache.glob("*/__grp__*.json")):
        old_name = group.name[len("__grp__") : -len(".json")]
        files = {p.name: p.read_bytes() for p in group.parent.iterdir() if p.is_file()}
        templates.append((old_name, files))
    cache.mkdir(parents=True)
    # File creation is system-call bound: threads overlap it.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in pool.map(
            lambda n: write_entry(cache, n, templates), range(entries), chunksize=256
        ):
            pass


def write_entry(cache: Path, number: int, templates: list[tuple[str, dict[str, bytes]]]) -> None:
    """Entry `number`: a fresh key and name; every 10th binary repeats an earlier one."""
    old_name, files = templates[number % len(templates)]
    name = f"{NAMES[number % len(NAMES)]}_kernel_{number}"
    hex_hash = secrets.token_hex(32)
    directory = cache / base64.b32encode(bytes.fromhex(hex_hash)).decode().rstrip("=")
    directory.mkdir()
    children = {}
    for file_name, data in files.items():
        if file_name.startswith("__grp__"):
            continue
        suffix = file_name[len(old_name) :]
        if suffix == ".json":
            metadata = json.loads(data)
            metadata.update(name=name, hash=hex_hash)
            data = json.dumps(metadata).encode()
        elif suffix in (".cubin", ".hsaco"):
            twin = number - len(templates) if number % 10 == 0 else number
            data += max(twin, 0).to_bytes(8, "little")
        else:
            data = data[:IR_BYTES]
        path = directory / (name + suffix)
        path.write_bytes(data)
        children[path.name] = str(path)
    (directory / f"__grp__{name}.json").write_text(json.dumps({"child_paths": children}))


def best_of(runs: int, action: Callable[[], object]) -> float:
    """The fastest of `runs` timings of `action`, in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def time_index(cache: Path, results: dict[str, float]) -> None:
    from warmer.kernels import KernelFilter, KernelIndex, Source

    def stat_every_entry() -> None:
        with os.scandir(cache) as entries:
            for entry in entries:
                entry.stat(follow_symlinks=False)

    source = Source("dir", cache)
    add = KernelFilter(name="add*")
    with KernelIndex() as index:
        start = time.perf_counter()
        index.scan(source)
        results["index build, cold (s)"] = time.perf_counter() - start
        results["  stat of every entry directory: the floor of a warm scan (s)"] = best_of(
            3, stat_every_entry
        )
        results["  warm scan (s)"] = best_of(3, lambda: index.scan(source))
        scan = index.scan(source)
        results["  filter 'add*' and build the Kernel objects (s)"] = best_of(
            3, lambda: index.kernels(scan, add)
        )
        results["kernels matching 'add*'"] = len(index.kernels(scan, add))
        results["kernels in the cache"] = len(index.kernels(scan))
    for output in ("-q", "--json"):
        command = [
            sys.executable,
            "-c",
            "from warmer.cli import main; main()",
            *("kernels", "ls", "--cache-dir", str(cache), "--name", "add*", output),
        ]
        results[f"`kernels ls --name 'add*' {output}`, warm, new process (s)"] = best_of(
            3, functools.partial(subprocess.run, command, check=True, stdout=subprocess.DEVNULL)
        )


def time_fold(cache: Path, state: Path, results: dict[str, float]) -> None:
    from warmer.kernels import HIT_LOG_SUFFIX, KernelIndex, hit_line, hit_log_dir

    keys = [p.name for p in list(cache.iterdir())[:1000]]
    lines = 100_000
    hit_log_dir(state).mkdir(parents=True, exist_ok=True)
    now = time.time_ns()
    data = b"".join(hit_line(keys[i % len(keys)], now) for i in range(lines))
    (hit_log_dir(state) / f"0-bench{HIT_LOG_SUFFIX}").write_bytes(data)
    with KernelIndex() as index:
        start = time.perf_counter()
        folded = index.fold_hits()
        results[f"fold {lines:,} hit lines (s)"] = time.perf_counter() - start
    assert folded == lines, folded


def time_hits(template_cache: Path) -> list[tuple[str, float, float]]:
    """Per-hit cost with each manager: `(what, plain µs, tracking µs)` rows."""
    os.environ["TRITON_CACHE_DIR"] = str(template_cache)
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.cache import FileCacheManager

    from warmer.tracking import TrackingCacheManager

    group = next(template_cache.glob("*/__grp__add_kernel.json"))
    key, name = group.parent.name, "add_kernel.json"
    rows = []
    lookups = 20_000

    def lookup(manager_class: type) -> float:
        manager = manager_class(key)
        return best_of(5, lambda: [manager.get_group(name) for _ in range(lookups)]) / lookups

    rows.append(("get_group() hit", lookup(FileCacheManager), lookup(TrackingCacheManager)))

    @triton.jit
    def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        tl.store(out_ptr + offs, x + tl.load(y_ptr + offs, mask=mask), mask=mask)

    signature = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}
    target = GPUTarget("cuda", 90, 32)
    compiles = 200

    def compile_hits(manager: str | None) -> float:
        if manager:
            os.environ["TRITON_CACHE_MANAGER"] = manager
        else:
            os.environ.pop("TRITON_CACHE_MANAGER", None)
        source = ASTSource(fn=add_kernel, signature=signature, constexprs={"BLOCK": 128})
        triton.compile(source, target=target)  # warm Triton's own in-memory state

        def run() -> None:
            for _ in range(compiles):
                triton.compile(source, target=target)

        return best_of(3, run) / compiles

    # Alternated, best of each, so that the machine's noise hits both alike.
    timings: dict[str | None, list[float]] = {None: [], MANAGER: []}
    for _ in range(3):
        for manager, seen in timings.items():
            seen.append(compile_hits(manager))
    rows.append(("triton.compile() hit", min(timings[None]), min(timings[MANAGER])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--work", type=Path, help="Work directory (default: a temp dir).")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="warmer-bench-kernels-"))
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)  # the index build is always cold
    os.environ["WARMER_STATE_DIR"] = str(state)
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    template = work / "template"
    cache = work / f"cache-{args.entries}"
    results: dict[str, float] = {"entries": args.entries}
    try:
        if not cache.is_dir():  # a --work directory keeps the synthetic cache for reruns
            compile_template = [sys.executable, str(REPO / "tests/helpers/compile_triton.py")]
            subprocess.run(
                [*compile_template, str(template), *TARGETS], check=True, capture_output=True
            )
            start = time.perf_counter()
            synthesise(template, cache.with_suffix(".partial"), args.entries)
            cache.with_suffix(".partial").rename(cache)
            results["synthesise the cache (s)"] = time.perf_counter() - start
        time_index(cache, results)
        time_fold(cache, state, results)
        hits = time_hits(template)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        rows = [{"what": w, "plain_us": p * 1e6, "tracking_us": t * 1e6} for w, p, t in hits]
        print(json.dumps({"results": results, "per_hit": rows}, indent=2))
        return
    for what, value in results.items():
        print(
            f"{what:<58} {value:>10,.3f}"
            if isinstance(value, float)
            else f"{what:<58} {value:>10,}"
        )
    print()
    print(f"{'per cache hit':<24} {'FileCacheManager':>18} {'Tracking':>12} {'ratio':>7}")
    for what, plain, tracking in hits:
        print(
            f"{what:<24} {plain * 1e6:>15.2f} µs {tracking * 1e6:>9.2f} µs {tracking / plain:>7.3f}"
        )


if __name__ == "__main__":
    main()
