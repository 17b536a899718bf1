"""Running the agent as the runtimes do: `python -m warmer.agent run` on a job file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO

from warmer.agent.report import parse_line
from warmer.spec import job_from_dict


def run_agent(
    job: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]], dict[str, Any], str, str]:
    """`python -m warmer.agent run` on a validated job.

    Returns (exit status, progress documents, the report, stdout, stderr).
    """
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job_from_dict(job).model_dump(mode="json")))
    done = subprocess.run(
        [sys.executable, "-m", "warmer.agent", "run", "--job", str(job_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=tmp_path,
        timeout=300,
    )
    parsed = [parse_line(line) for line in done.stdout.splitlines()]
    progress = [document for kind, document in filter(None, parsed) if kind == "progress"]
    reports = [document for kind, document in filter(None, parsed) if kind == "report"]
    assert len(reports) == 1, done.stdout + done.stderr
    return done.returncode, progress, reports[0], done.stdout, done.stderr
