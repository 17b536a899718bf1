"""Fan-out: the jobs of one file over several Docker hosts at once (`warmer run --hosts`).

A placer over `warmer.placement` (outcomes, failures, the summary are that module's, shared
with the Ray placer `warmer.cluster`); what is its own is the hosts: matching jobs to
engines by backend ahead of time, and each host's slots.

`--hosts` is a comma list: a host name from the config (`hosts:` in warmer's config file),
`all` (every configured host), or `[BACKEND=]URL` for an engine the config does not name
(`cpu=unix:///tmp/a.sock`, `tcp://h:2375`; no backend: it takes any job).

Before anything starts, each job is given to a host that takes its backend: the least loaded
one (jobs per slot), the first listed on a tie. A job that no host takes is a usage error.
Then every host runs its queue at once, `slots` jobs at a time, each slot a thread with its
own `DockerRuntime` and `Runner`. The threads share one `Store`, which is safe: its sqlite
index is one connection serialised by a lock, commits are single transactions, and objects
are written to temp files and renamed. Bundles go to one directory under distinct names.

A plain `warmer run` (one runtime: docker, podman or local) is the same loop over one
host of one slot (`FanOut(runtime, …)`): the runtime is the one already connected, the loop
runs on the calling thread, labels carry no host, and an error that is not a job's failure
propagates as it would from the runner.

A failure stays with its host. An engine that does not answer at the start fails that
host's jobs; one that stops answering mid-run fails the job running there (with the log
lines streamed so far) and the jobs still queued there, without trying them. The runner
publishes nothing for a failed job, and removes the containers of the jobs that ran on the
other hosts as usual.
"""

from __future__ import annotations

import collections
import contextlib
import posixpath
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warmer.bundle import Format
from warmer.config import BACKENDS, HostConfig
from warmer.errors import UsageError
from warmer.placement import DoneHandler, JobOutcome, NodeOutcome, Outcomes, describe, run_job
from warmer.progress import Progress, silent
from warmer.runner import Runner
from warmer.runtimes.base import STOP_GRACE_S, TAIL_LINES
from warmer.spec import Job
from warmer.store import Store

if TYPE_CHECKING:
    from warmer.runtimes.base import Runtime
    from warmer.runtimes.docker import DockerRuntime

#: URL schemes the docker SDK connects with.
URL_SCHEMES = ("unix", "tcp", "ssh", "http", "https", "npipe")
ALL = "all"


def takes(host: HostConfig, backend: str) -> bool:
    """True when `host` runs jobs of `backend` (a host that names no backend takes any)."""
    return not host.backends or backend in host.backends


def parse_hosts(value: str, configured: Sequence[HostConfig]) -> list[HostConfig]:
    """The hosts that `--hosts VALUE` names, in order, each once (see the module doc)."""
    by_name = {host.name: host for host in configured}
    chosen: dict[str, HostConfig] = {}
    items = [item.strip() for item in value.split(",")]
    if not any(items):
        raise UsageError("--hosts: name at least one host")
    for item in items:
        if not item:
            raise UsageError(f"--hosts {value!r}: an empty item")
        if item == ALL:
            if not configured:
                raise UsageError(f"--hosts {ALL}: the config names no hosts ({_config_hint()})")
            found = list(configured)
        elif item in by_name:
            found = [by_name[item]]
        elif "://" in item:
            taken = set(by_name) | set(chosen)
            found = [_url_host(item, taken)]
        else:
            known = ", ".join(by_name) if by_name else f"none configured: {_config_hint()}"
            raise UsageError(
                f"--hosts: {item!r} is neither a host of the config ({known}) "
                "nor [BACKEND=]URL such as cpu=unix:///run/docker.sock"
            )
        for host in found:
            if host.name in chosen:
                continue
            same = next((h for h in chosen.values() if h.url == host.url), None)
            if same is not None:
                raise UsageError(f"--hosts: {host.name} and {same.name} are one engine: {host.url}")
            chosen[host.name] = host
    return list(chosen.values())


def _config_hint() -> str:
    return "list them under `hosts:` in the config file, see configs/warmer.yaml"


def _url_host(item: str, taken: set[str]) -> HostConfig:
    """`[BACKEND=]URL` as a host, named after its socket file or host:port."""
    backends: tuple[str, ...] = ()
    url = item
    prefix, sep, rest = item.partition("=")
    if sep and "://" not in prefix:
        if prefix not in BACKENDS:
            raise UsageError(
                f"--hosts: {item!r}: {prefix!r} is not a backend ({', '.join(BACKENDS)})"
            )
        backends, url = (prefix,), rest
    scheme, _, where = url.partition("://")
    if scheme not in URL_SCHEMES or not where.strip("/"):
        raise UsageError(f"--hosts: {url!r} is not an engine URL ({'/'.join(URL_SCHEMES)}://…)")
    if scheme in ("unix", "npipe"):
        base = posixpath.basename(where.rstrip("/"))
        base = base[: -len(".sock")] if base.endswith(".sock") and base != ".sock" else base
    else:
        base = where.rsplit("@", 1)[-1].strip("/")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return HostConfig(name, url, backends)


def assign(jobs: Sequence[Job], hosts: Sequence[HostConfig]) -> dict[str, list[Job]]:
    """Each job's host, by host name (every host listed, maybe with no jobs): the least
    loaded host that takes the job's backend, the first listed on a tie.

    Raises UsageError naming every job that no host takes, before anything starts.
    """
    queues: dict[str, list[Job]] = {host.name: [] for host in hosts}
    homeless: list[Job] = []
    for job in jobs:
        able = [host for host in hosts if takes(host, job.backend)]
        if not able:
            homeless.append(job)
            continue
        best = min(able, key=lambda host: len(queues[host.name]) / host.slots)
        queues[best.name].append(job)
    if homeless:
        offered = ", ".join(f"{h.name} ({'/'.join(h.backends) or 'any'})" for h in hosts)
        missing = ", ".join(f"{job.name} ({job.backend})" for job in homeless)
        raise UsageError(f"no host takes the backend of job(s) {missing}; hosts: {offered}")
    return queues


def _connect(host: HostConfig) -> DockerRuntime:
    """A DockerRuntime on `host`'s engine; UsageError with the cause if none answers."""
    from warmer.runtimes.docker import DockerRuntime

    try:
        return DockerRuntime(host.url, name="docker")
    except UsageError as exc:
        # The runtime's own message suggests DOCKER_HOST; here the cause is what helps.
        cause = exc.__context__ or exc
        raise UsageError(f"no Docker engine answers at {host.url} ({cause})") from None


class _HostRun:
    """One host's queue and the threads (one per slot) that work through it."""

    def __init__(self, fanout: FanOut, host: HostConfig, jobs: Sequence[Job]) -> None:
        self.fanout, self.host = fanout, host
        self.queue: collections.deque[Job] = collections.deque(jobs)
        self.outcome = NodeOutcome(host.name, host.url)
        self.runtimes: list[DockerRuntime] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        """Connect, sweep leftovers, then work the queue on `slots` threads; records the wall
        time from the first connection to the last job's end."""
        started = time.monotonic()
        try:
            if self.fanout.runtime is not None:  # one runtime, connected and swept by the caller
                self._slot(self.fanout.runtime)
                return
            try:
                first = _connect(self.host)
                self._add_runtime(first)
                first.sweep()
            except Exception as exc:  # no engine there, or it went away at once
                self._give_up(describe(exc))
                return
            extra = min(self.host.slots, len(self.queue)) - 1
            threads = [
                threading.Thread(
                    target=self._slot, name=f"fanout-{self.host.name}-{i}", daemon=True
                )
                for i in range(extra)
            ]
            for thread in threads:
                thread.start()
            self._slot(first)
            for thread in threads:
                thread.join()
        finally:
            self.outcome.seconds = time.monotonic() - started

    def _slot(self, runtime: Runtime | None = None) -> None:
        """Run jobs from the queue until it is empty (or the host is given up)."""
        if runtime is None:
            try:
                runtime = _connect(self.host)
            except UsageError as exc:
                self._give_up(str(exc))
                return
            self._add_runtime(runtime)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        events = self._events(tail)
        runner = Runner(
            runtime, self.fanout.store, self.fanout.out, fmt=self.fanout.fmt, on_event=events
        )
        while (job := self._next()) is not None:
            tail.clear()
            start = {"job": job.name, "where": self.host.url, "image": job.image}
            events("start", {**start, "engine": job.engine.kind, "backend": job.backend})
            self._run_one(runner, job, tail)

    def _run_one(self, runner: Runner, job: Job, tail: collections.deque[str]) -> None:
        from warmer.runtimes.docker import engine_answers

        single = self.fanout.runtime is not None
        verify = self.fanout.verify
        outcome = run_job(runner, job, self.host.name, verify=verify, raise_other=single)
        if outcome.error is not None and self.fanout.cancelled.is_set():
            outcome.error, outcome.log_tail = "interrupted", ""  # Ctrl-C removed its container
        elif outcome.error is not None and self.fanout.runtime is None:
            outcome.log_tail = outcome.log_tail or "\n".join(tail)
            if not engine_answers(self.host.url):
                reason = f"stopped answering at {self.host.url}"
                outcome.error = f"host {self.host.name}: {reason}: {outcome.error}"
                self._finish(outcome)
                self._give_up(reason)
                return
        self._finish(outcome)

    def _events(self, tail: collections.deque[str]) -> Progress:
        """Events relabelled `job@host`; log lines also kept for a failure without a tail."""
        on_event = self.fanout.on_event

        def relay(kind: str, data: Mapping[str, Any]) -> None:
            if kind == "line":
                tail.append(str(data.get("line", "")))
            if self.fanout.runtime is None:
                data = {**data, "job": f"{data.get('job')}@{self.host.name}"}
            on_event(kind, data)

        return relay

    def _next(self) -> Job | None:
        with self._lock:
            if self.fanout.cancelled.is_set():
                self.queue.clear()
            return self.queue.popleft() if self.queue else None

    def _add_runtime(self, runtime: DockerRuntime) -> None:
        with self._lock:
            self.runtimes.append(runtime)

    def _give_up(self, reason: str) -> None:
        """Fail every job still queued here, saying why the host was given up."""
        with self._lock:
            if self.outcome.error is None:
                self.outcome.error = reason
            queued = list(self.queue)
            self.queue.clear()
        for job in queued:
            error = f"not run: host {self.host.name}: {reason}"
            self._finish(JobOutcome(job, self.host.name, error=error))

    def _finish(self, outcome: JobOutcome) -> None:
        self.fanout.outcomes.finish(self.outcome, outcome)


class FanOut:
    """Runs jobs over hosts into one store and one output directory (see the module doc).

    `hosts` is the hosts to connect to, or one runtime (a plain `warmer run`: docker, podman
    or local), whose queue is `{runtime.name: jobs}`.

    `on_event` gets the runner's events with `job` set to `NAME@HOST` (the job's name for a
    single runtime); `on_done` gets each
    job's outcome as it ends (the place to push a bundle), one call at a time, on the
    host's thread: it must not raise.
    """

    def __init__(
        self,
        hosts: Sequence[HostConfig] | Runtime,
        store: Store,
        out: Path,
        *,
        fmt: Format = "zst",
        verify: bool = False,
        on_event: Progress | None = None,
        on_done: DoneHandler | None = None,
    ) -> None:
        #: the one runtime of a plain `warmer run`, connected and swept by the caller: one
        #: host of one slot named after it, run on the calling thread; None: `hosts`
        self.runtime: Runtime | None = None
        if isinstance(hosts, Sequence):
            self.hosts = list(hosts)
        else:
            self.runtime, self.hosts = hosts, [HostConfig(hosts.name, hosts.name)]
        self.store, self.out, self.fmt, self.verify = store, out, fmt, verify
        self.on_event: Progress = on_event or silent
        self.outcomes = Outcomes(on_done)
        self.cancelled = self.outcomes.cancelled

    def run(self, queues: Mapping[str, Sequence[Job]]) -> list[NodeOutcome]:
        """Run each host's queue (`assign` makes them) and return each host's outcome, in
        the order of `hosts`; a host with no jobs is listed with none and never contacted."""
        runs = [_HostRun(self, host, queues.get(host.name, ())) for host in self.hosts]
        if self.runtime is not None:  # one host, one slot: on this thread, as a plain run
            for one in runs:
                one.run()
            return [one.outcome for one in runs]
        threads = [
            threading.Thread(target=run.run, name=f"fanout-{run.host.name}", daemon=True)
            for run in runs
            if run.queue
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:
            self._cancel(runs, threads)
            raise
        return [run.outcome for run in runs]

    def _cancel(self, runs: Iterable[_HostRun], threads: Iterable[threading.Thread]) -> None:
        """Ctrl-C: start nothing more, remove this process's containers on every host (which
        ends the waits the slot threads are blocked in), and give them a moment to unwind."""
        self.cancelled.set()
        for run in runs:
            for runtime in list(run.runtimes):
                # best effort on the way out: the next run's sweep removes what is left
                with contextlib.suppress(Exception):
                    runtime.remove_mine()
        deadline = time.monotonic() + 2 * STOP_GRACE_S
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
