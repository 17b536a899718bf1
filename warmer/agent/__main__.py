"""`python -m warmer.agent run --job JOB.json` (warm-up + report) and `... probe` (env JSON;
with `--key-factors`, `{"env": …, "key_factors": …}`: what `warmer check` asks of a target).

`run` always ends with one WARMER-REPORT line, also when the job file or the engine fails:
then the report says ok=false with the error, the traceback goes to stderr and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

from warmer.agent.engines import run_engine
from warmer.agent.probe import key_factors, probe
from warmer.agent.report import (
    PROTOCOL_VERSION,
    REPORT_PREFIX,
    Channel,
    EngineError,
    Outcome,
    Progress,
    facts,
)
from warmer.caches import Facts, default_roots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m warmer.agent", description="warmer's in-container agent"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run a warm-up job and report on stdout")
    run_parser.add_argument("--job", required=True, help="the job as JSON (Job.model_dump)")
    probe_parser = commands.add_parser("probe", help="print this environment's key parts as JSON")
    probe_parser.add_argument(
        "--key-factors",
        action="store_true",
        help="also what each compiler keys on (imports torch and Triton: seconds)",
    )
    args = parser.parse_args(argv)
    if args.command == "probe" and args.key_factors:
        print(json.dumps({"env": probe(), "key_factors": key_factors()}, sort_keys=True))
        return 0
    if args.command == "probe":
        print(json.dumps(probe(), sort_keys=True))
        return 0
    return run(args.job)


def run(job_path: str) -> int:
    """Run the job's warm-up, send the report; 0 when the warm-up succeeded, else 1."""
    started = time.perf_counter()
    channel = Channel.take_stdout()
    progress = Progress(channel)
    env = probe()
    outcome = Outcome()
    error: str | None = None
    try:
        with open(job_path, encoding="utf-8") as handle:
            job = json.load(handle)
        outcome = run_engine(job, progress)
    except EngineError as exc:
        error = str(exc)
        print(f"warmer agent: {error}", file=sys.stderr)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    # after the warm-up: torch and Triton are loaded by then, and vLLM's graphs are written
    factors = key_factors(_vllm_root()) if error is None else None
    channel.send(
        REPORT_PREFIX,
        {
            "agent": PROTOCOL_VERSION,
            "ok": error is None,
            "error": error,
            "env": env,
            "key_factors": factors,
            "facts": facts(),
            "timings": {
                "import_s": outcome.import_s,
                "compile_s": outcome.compile_s,
                "total_s": round(time.perf_counter() - started, 3),
                **outcome.extra_timings,
            },
            "counters": outcome.counters,
            "hits": outcome.hits,
            "misses": outcome.misses,
            "recompiled": outcome.recompiled,
            "steps": progress.steps,
        },
    )
    return 0 if error is None else 1


def _vllm_root() -> str:
    """Where vLLM writes its graphs in this process."""
    return next(r.path for r in default_roots(Facts.of_this_process()) if r.kind == "vllm")


if __name__ == "__main__":
    sys.exit(main())
