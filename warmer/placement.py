"""Placement: which machine runs each job, and what each machine did (one copy for every placer).

Running one job on one machine is the runner's concern (`Runner` over a runtime); putting
jobs on machines is this one. Two placers share it: the Docker-host fan-out
(`warmer.fanout`, `warmer run --hosts`; also a plain run, one host of one slot) and the Ray
cluster (`warmer.cluster`, `warmer run --ray`). Both report through the same outcomes:
a `JobOutcome` per job as it ends (handed to `on_done` one call at a time, the place to
push or print) and a `NodeOutcome` per machine (what ran there, how long, why it was given up),
which the CLI prints as one summary. A job's failure is recorded here the same way for both:
`run_job` turns a runner's JobFailed, or any other error of that machine, into an outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from warmer.errors import JobFailed, WarmerError
from warmer.spec import Job

if TYPE_CHECKING:
    from warmer.runner import JobResult, Runner

#: The Ray resource a node declares per backend it takes (`ray start --resources`).
BACKEND_RESOURCE = "warmer-backend-{backend}"


@dataclass
class JobOutcome:
    """How one job ended, on which machine (a host name, or a Ray node)."""

    job: Job
    host: str
    result: JobResult | None = None
    error: str | None = None
    log_tail: str = ""
    seconds: float = 0.0
    #: a push already made where the job ran (a large bundle on Ray): the push's report
    pushed: dict[str, object] | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


@dataclass
class NodeOutcome:
    """What one machine ran, how long it took, and why it was given up (None: it was not)."""

    name: str
    #: where it is: an engine URL, a Ray node's address
    where: str
    jobs: list[JobOutcome] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def failed(self) -> list[JobOutcome]:
        return [outcome for outcome in self.jobs if not outcome.ok]


#: on_done(outcome): called as each job ends, one call at a time
DoneHandler = Callable[[JobOutcome], None]


class Outcomes:
    """The machines' outcomes, filled in as jobs end from any thread; `on_done` is called
    one job at a time, under one lock."""

    def __init__(self, on_done: DoneHandler | None = None) -> None:
        self._on_done = on_done or (lambda outcome: None)
        self._lock = threading.Lock()
        #: set on Ctrl-C: start nothing more
        self.cancelled = threading.Event()

    def finish(self, node: NodeOutcome, outcome: JobOutcome) -> None:
        """Record `outcome` on `node` and hand it to `on_done`."""
        with self._lock:
            node.jobs.append(outcome)
            self._on_done(outcome)


def run_job(runner: Runner, job: Job, host: str, *, verify: bool, raise_other: bool) -> JobOutcome:
    """Run `job` with `runner` into an outcome: its result, or its failure with the log tail.
    An error that is not the job's own (the engine went away) is recorded too, unless
    `raise_other` (a plain run: its errors are the command's, as the runner raised them)."""
    outcome = JobOutcome(job, host)
    started = time.monotonic()
    try:
        outcome.result = runner.run(job, verify=verify)
    except JobFailed as exc:
        outcome.error, outcome.log_tail = str(exc), exc.log_tail
    except Exception as exc:  # the engine went away, the image is not there, …
        if raise_other:
            raise
        outcome.error = describe(exc)
    outcome.seconds = time.monotonic() - started
    return outcome


def describe(exc: BaseException) -> str:
    """An error in one line: warmer's own as its message, another with its type."""
    text = str(exc)
    if isinstance(exc, WarmerError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
