"""Warm-up engines. Each module has `run(job, progress) -> Outcome` and imports its framework
(torch, vLLM) inside that function, so that choosing an engine costs nothing until it runs."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from warmer.agent.report import EngineError, Outcome, Progress

#: engine kind in the job spec -> module in this package
ENGINES = {"torch-compile": "torch_compile", "vllm": "vllm", "command": "command"}


def run_engine(job: Mapping[str, Any], progress: Progress) -> Outcome:
    """Run the warm-up that `job["engine"]["kind"]` names."""
    kind = job["engine"]["kind"]
    module_name = ENGINES.get(kind)
    if module_name is None:
        raise EngineError(f"unknown engine kind {kind!r}; known: {', '.join(sorted(ENGINES))}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    outcome: Outcome = module.run(job, progress)
    return outcome
