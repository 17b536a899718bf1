"""`warmer run JOB.yaml`: warm every job of a file in a container (or locally) into bundles."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from warmer.cli.options import json_option, store_option
from warmer.cli.output import console, emit_json, table
from warmer.units import format_duration, format_size


@click.command()
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--job", "only", metavar="NAME", help="Run only the job with this name.")
@click.option(
    "--runtime",
    type=click.Choice(["docker", "podman", "local"]),
    default=None,
    help="Default: docker when an engine answers (DOCKER_HOST honoured), else local.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Directory for the bundles.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Rerun from the bundle in a fresh container: hit rate, cold vs warm.",
)
@click.option("--format", "fmt", type=click.Choice(["zst", "gz"]), default="zst", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="Do not stream the warm-up's log lines.")
@store_option
@json_option
def run(
    job_file: Path,
    only: str | None,
    runtime: str | None,
    out: Path,
    verify: bool,
    fmt: str,
    quiet: bool,
    store: Path | None,
    as_json: bool,
) -> None:
    """Warm up each job of JOB_FILE, harvest its compile caches, export a bundle per job."""
    from warmer.errors import JobFailed, UsageError
    from warmer.runner import Runner
    from warmer.runtimes import available_runtime, get_runtime
    from warmer.spec import load_jobs
    from warmer.store import Store

    jobs = load_jobs(job_file, only=only)
    missing = sorted({name for job in jobs for name in job.secrets if name not in os.environ})
    if missing:
        raise UsageError(f"secret(s) not set in this environment: {', '.join(missing)}")
    if runtime is None:
        runtime = available_runtime()
        if runtime == "local":
            console.print("no container engine answers: running with the local runtime")
    if runtime != "local":
        missing_images = [job.name for job in jobs if not job.image]
        if missing_images:
            raise UsageError(f"job(s) {', '.join(missing_images)} name no image")
    engine = get_runtime(runtime)
    swept = engine.sweep()
    if swept:
        console.print(f"removed {swept} leftover container(s) of an earlier crashed run")
    runner = Runner(engine, Store(store), out, fmt=fmt, on_event=_EventPrinter(quiet))  # type: ignore[arg-type]
    results: list[dict[str, Any]] = []
    failures = 0
    for job in jobs:
        console.print(
            f"[{job.name}] {runtime}: {job.image or 'this host'} ({job.engine.kind}, {job.backend})"
        )
        started = time.monotonic()
        try:
            result = runner.run(job, verify=verify)
        except JobFailed as exc:
            failures += 1
            console.print(f"[{job.name}] FAILED: {exc}")
            if exc.log_tail:
                console.print(f"[{job.name}] --- last lines of the log ---")
                console.print(exc.log_tail)
            results.append({"name": job.name, "ok": False, "error": str(exc)})
            continue
        entry = {"ok": True, **result.to_dict(), "seconds": round(time.monotonic() - started, 3)}
        results.append(entry)
        for path in result.unclassified[:10]:
            console.print(f"[{job.name}] left out (matches no cache kind): {path}")
        if len(result.unclassified) > 10:
            console.print(f"[{job.name}] … and {len(result.unclassified) - 10} more left out")
    if as_json:
        emit_json({"jobs": results})
    else:
        _summary(results)
    if failures:
        click.get_current_context().exit(3)


class _EventPrinter:
    """Streams the warm-up to stderr: log lines (unless quiet), agent progress, phases."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, kind: str, data: Mapping[str, Any]) -> None:
        job = data.get("job")
        if kind == "line" and not self.quiet:
            console.print(f"[{job}] | {data['line']}")
        elif kind == "progress":
            where = f" {data['i']}/{data['n']}" if "i" in data and "n" in data else ""
            console.print(f"[{job}] {data.get('step', '')}{where}")
        elif kind == "phase":
            console.print(f"[{job}] {data['phase']}…")


def _summary(results: list[dict[str, Any]]) -> None:
    rows = []
    for item in results:
        if not item["ok"]:
            rows.append([item["name"], "FAILED", "", "", "", "", ""])
            continue
        verify = item.get("verify") or {}
        rate = verify.get("hit_rate")
        rows.append(
            [
                item["name"],
                "ok",
                item["files"],
                format_size(item["bytes"]),
                "" if not verify else ("n/a" if rate is None else f"{rate:.2f}"),
                ""
                if not verify
                else f"{format_duration(verify['cold_s'])} → {format_duration(verify['warm_s'])}",
                item["bundle"],
            ]
        )
    table(
        ["JOB", "STATUS", "FILES", "SIZE", "HIT RATE", "COLD → WARM", "BUNDLE"],
        rows,
        right=["FILES", "SIZE", "HIT RATE"],
    )
