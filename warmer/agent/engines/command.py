"""Command warm-up: run the user's own warm-up command; its output goes to the agent's stderr.

The command is an argument list (the spec splits a string like a shell, without expansion;
write `[sh, -c, "..."]` for a shell). warmer cannot see inside the command, so counters stay
empty and hits/misses are 0; the harvest still takes every cache the command wrote.
`compile_s` is the command's whole run.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from warmer.agent.report import EngineError, Outcome, Progress


def run(job: Mapping[str, Any], progress: Progress) -> Outcome:
    command = job["engine"].get("command")
    if not command:
        raise EngineError("the command engine needs engine.command")
    argv = [str(part) for part in command]
    shown = shlex.join(argv)
    progress.expect(1)
    started = time.perf_counter()
    with progress.step(shown):
        try:
            done = subprocess.run(argv, stdout=sys.stderr, stderr=sys.stderr, check=False)
        except OSError as exc:
            raise EngineError(f"cannot run {argv[0]}: {exc}") from None
    if done.returncode < 0:
        raise EngineError(f"command killed by {signal.Signals(-done.returncode).name}: {shown}")
    if done.returncode != 0:
        raise EngineError(f"command exited with status {done.returncode}: {shown}")
    return Outcome(compile_s=round(time.perf_counter() - started, 3))
