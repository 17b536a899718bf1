"""Cold start vs warm start, warmer vs the alternatives, side by side in one run.

    python bench/coldstart.py [--runtime docker|podman] [--png docs/coldstart.png] [JOB.yaml …]

For each job (default: jobs/tiny-cpu.yaml and bench/jobs/larger-cpu.yaml), every column is a
fresh container running the same agent. A torch-compile job:

  cold             nothing carried over
  warmer           after `warmer restore` of the bundle this run harvested
  inductor-dir     only TORCHINDUCTOR_CACHE_DIR carried over (what a directory-redirect tool does)
  mega-cache       torch.compiler.save_cache_artifacts() / load_cache_artifacts()

A vLLM job (jobs/vllm-cpu.yaml, built by images/vllm-cpu/build):

  cold             nothing carried over
  warmer           after `warmer restore` of the bundle this run harvested
  vllm-cache-root  only VLLM_CACHE_ROOT carried over (what mcm and MCV ship)
  no-compile       the floor: vLLM with compilation_config mode 0 (nothing compiled, cold)

and "compile removed" = (cold - column) / (cold - no-compile): the share of the compile time a
column takes out of the start.

Compile time runs from the first call of the compiled model (torch-compile) or from starting the
engine (vLLM) to the end of the warm-up; imports (the same in every column) are reported apart.
Also prints warmer's own overhead per job (container start, harvest, store, export) against the
warm-up. The torch jobs set TORCHINDUCTOR_CACHE_DIR, as a redirect tool needs; warmer takes
everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from warmer.runner import Runner, hit_rate, staged, tar_chunks
from warmer.runtimes import available_runtime, get_runtime
from warmer.spec import Job, load_jobs
from warmer.store import Store
from warmer.store.manifest import Manifest

HERE = Path(__file__).resolve().parent
DEFAULT_JOBS = (HERE.parent / "jobs" / "tiny-cpu.yaml", HERE / "jobs" / "larger-cpu.yaml")
INDUCTOR_DIR = "/root/.cache/warmer-bench/inductor"
MEGACACHE_FILE = "/root/.cache/warmer-bench/megacache.bin"
#: The column that compiles nothing at all (vLLM jobs).
FLOOR = "no-compile"
#: Where each engine's compile time starts.
START = {"torch-compile": "first call", "vllm": "engine start"}


def with_env(job: Job, **env: str) -> Job:
    return job.model_copy(update={"env": {**job.env, **env}})


def only_under(manifest: Manifest, prefix: str) -> Manifest:
    files = tuple(e for e in manifest.files if e.path.startswith(prefix.rstrip("/") + "/"))
    return dataclasses.replace(manifest, files=files)


def only_kind(manifest: Manifest, kind: str) -> Manifest:
    return dataclasses.replace(manifest, files=tuple(e for e in manifest.files if e.kind == kind))


def measure(runner: Runner, job: Job) -> dict[str, Any]:
    """Every column for one job, plus warmer's overhead."""
    if job.engine.kind == "torch-compile":
        job = with_env(job, TORCHINDUCTOR_CACHE_DIR=INDUCTOR_DIR)
    started = time.monotonic()
    result = runner.run(job, verify=True)
    manifest = runner.store.resolve(result.ref, touch=False)[1]
    verify = result.verify or {}
    rows: dict[str, dict[str, Any]] = {
        "cold": {"compile_s": verify["cold_s"], "import_s": result.report["timings"]["import_s"]},
        "warmer": {
            "compile_s": verify["warm_s"],
            "import_s": verify["warm_import_s"],
            "hit_rate": verify["hit_rate"],
        },
    }
    if job.engine.kind == "vllm":
        rows.update(vllm_columns(runner, job, manifest))
    else:
        rows.update(torch_columns(runner, job, manifest))
    return {
        "job": job.name,
        "kind": job.engine.kind,
        "columns": rows,
        "bundle_bytes": result.bytes,
        "files": result.files,
        "overhead": {k: round(v, 3) for k, v in result.timings.items()},
        "seconds": round(time.monotonic() - started, 1),
    }


def torch_columns(runner: Runner, job: Job, manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Only Inductor's directory carried over, and PyTorch's Mega-Cache."""
    rows = {}
    with staged(job, "bench") as spec:
        redirect = runner.run_pass(
            job, spec, preload=tar_chunks(only_under(manifest, INDUCTOR_DIR), runner.store)
        )
    rows["inductor-dir"] = report_row(redirect.report)
    save_job = with_env(job, WARMER_MEGACACHE=f"save:{MEGACACHE_FILE}")
    with staged(save_job, "bench") as spec:
        artifacts = runner.run_pass(save_job, spec, take=[MEGACACHE_FILE]).taken[MEGACACHE_FILE]
    load_job = with_env(job, WARMER_MEGACACHE=f"load:{MEGACACHE_FILE}")
    with staged(load_job, "bench") as spec:
        mega = runner.run_pass(load_job, spec, preload=single_file_tar(MEGACACHE_FILE, artifacts))
    rows["mega-cache"] = report_row(mega.report)
    rows["mega-cache"]["artifacts_bytes"] = len(artifacts)
    return rows


def vllm_columns(runner: Runner, job: Job, manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Only vLLM's cache root carried over, and the floor: vLLM compiling nothing."""
    with staged(job, "bench") as spec:
        root_only = runner.run_pass(
            job, spec, preload=tar_chunks(only_kind(manifest, "vllm"), runner.store)
        )
    args = {**job.engine.args, "compilation_config": {"mode": 0}}
    floor_job = job.model_copy(update={"engine": job.engine.model_copy(update={"args": args})})
    with staged(floor_job, "bench") as spec:
        floor = runner.run_pass(floor_job, spec)
    return {"vllm-cache-root": report_row(root_only.report), FLOOR: report_row(floor.report)}


def report_row(report: dict[str, Any]) -> dict[str, Any]:
    timings = report.get("timings") or {}
    return {
        "compile_s": timings.get("compile_s"),
        "import_s": timings.get("import_s"),
        "hit_rate": hit_rate(report),
    }


def single_file_tar(path: str, data: bytes) -> list[bytes]:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return [buffer.getvalue()]


def compile_removed(columns: dict[str, dict[str, Any]], column: str) -> float | None:
    """(cold - column) / (cold - floor): the share of the compile time the column removes."""
    if FLOOR not in columns:
        return None
    cold, floor = columns["cold"]["compile_s"], columns[FLOOR]["compile_s"]
    return (cold - columns[column]["compile_s"]) / (cold - floor) if cold > floor else None


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"\n{'job':<16}{'column':<17}{'compile s':>10}{'vs cold':>9}{'removed':>9}"
        f"{'hit rate':>9}{'imports s':>10}"
    )
    for result in results:
        columns = result["columns"]
        cold = columns["cold"]["compile_s"]
        for column, row in columns.items():
            rate, removed = row.get("hit_rate"), compile_removed(columns, column)
            print(
                f"{result['job']:<16}{column:<17}{row['compile_s']:>10.2f}"
                f"{row['compile_s'] / cold:>9.3f}{'' if removed is None else f'{removed:.2f}':>9}"
                f"{'' if rate is None else f'{rate:.2f}':>9}{row['import_s'] or 0:>10.2f}"
            )
        warm = columns["warmer"]["compile_s"]
        for column in columns:
            if column not in ("cold", "warmer", FLOOR):
                other = columns[column]["compile_s"]
                print(f"{'':<16}warmer is {other / warm:.1f}x faster than {column}")
    print(
        f"\n{'job':<14}{'warm-up s':>10}{'start s':>9}{'harvest s':>10}{'store s':>9}"
        f"{'export s':>9}{'overhead':>10}"
    )
    for result in results:
        o = result["overhead"]
        ours = o["start_s"] + o["harvest_s"] + o["store_s"] + o["export_s"]
        print(
            f"{result['job']:<14}{o['warmup_s']:>10.2f}{o['start_s']:>9.2f}{o['harvest_s']:>10.2f}"
            f"{o['store_s']:>9.2f}{o['export_s']:>9.2f}{ours / o['warmup_s']:>9.1%}"
        )


def plot(results: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    colors = ["#b0b0b0", "#2a7de1", "#e1a32a", "#8c5ad8"]
    for ax, result in zip(axes[0], results, strict=True):
        columns = list(result["columns"])
        values = [result["columns"][c]["compile_s"] for c in columns]
        bars = ax.bar(columns, values, color=colors[: len(columns)])
        ax.bar_label(bars, labels=[f"{v:.1f}s" for v in values])
        ax.set_title(f"{result['job']}: compile time at start-up")
        ax.set_ylabel(f"seconds ({START[result['kind']]} → end of warm-up)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="*", type=Path, default=list(DEFAULT_JOBS))
    parser.add_argument("--runtime", choices=["docker", "podman"], default=None)
    parser.add_argument("--png", type=Path, default=HERE.parent / "docs" / "coldstart.png")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    runtime = args.runtime or available_runtime()
    if runtime == "local":
        parser.error("measures fresh containers: start a Docker engine (.ci/engine-up) first")
    results = []
    with tempfile.TemporaryDirectory(prefix="warmer-coldstart-") as work:
        runner = Runner(get_runtime(runtime), Store(Path(work) / "store"), Path(work) / "dist")
        for path in args.jobs:
            for job in load_jobs(path):
                print(f"[{job.name}] measuring on {runtime} …", file=sys.stderr, flush=True)
                results.append(measure(runner, job))
    print_table(results)
    plot(results, args.png)
    print(f"\nchart: {args.png}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
