"""Ray placement: `warmer run JOBS --ray ADDRESS` puts each job on a node of a Ray cluster.

Ray places, warmer runs. Each job is one Ray task that asks for what the job needs: 1 CPU,
`num_gpus` from `gpus:` (a count, the length of a device list, 1 for `all`; none for a CPU
job), `warmer-backend-<backend>` (a sliver of it: a node declares the backends it takes, not
how many) and the job's own `resources:` (such as `warmer-arch-sm90: 1`). A node offers them
with `ray start --num-gpus 8 --resources '{"warmer-backend-cuda": 1, "warmer-arch-sm90": 8}'`.
Before anything starts, a job that no live node could ever take is a usage error, as a
`--hosts` job that no host takes.

On its node the task runs the job with `Runner` into a private temporary store, with the
docker runtime when an engine answers there (else Podman, else the local runtime: a Ray
cluster started inside the serving image itself, as KubeRay pods are). It streams back the
runner's events, then the bundle: through Ray's object store when it is at most
`cluster.inline_max`, else (with --push) pushed from the node straight to the registry, with
only the push report travelling back. This process imports the bundle (every byte verified)
or pulls the pushed one into its store and writes the bundle to --out: nothing of a job that
did not finish is published anywhere.

A node that dies fails only the jobs running on it (Ray runs them again elsewhere
`cluster.retries` times first); the others land. Outcomes and the per-node summary are
`warmer.placement`'s, the same as the Docker-host fan-out's.

Ray is imported only here, and only when a run asks for a cluster (`pip install
'warmer[ray]'`). For a loopback address this process also stays on loopback: Ray would
otherwise swap 127.0.0.1 for the machine's external address.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from warmer.bundle import Format, bundle_name, export_bundle, import_bundle
from warmer.errors import JobFailed, UsageError
from warmer.placement import (
    BACKEND_RESOURCE,
    DoneHandler,
    JobOutcome,
    NodeOutcome,
    Outcomes,
    describe,
)
from warmer.progress import Progress, silent
from warmer.runner import JobResult
from warmer.spec import Job
from warmer.store import Store

#: how much of its backend resource a job takes: presence, not a count
BACKEND_SHARE = 0.001
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
#: where a job's events and its end come back from its node
_END = "end"


def needs(job: Job) -> tuple[float, dict[str, float]]:
    """What `job` asks of a node: (GPUs, custom resources)."""
    if job.backend == "cpu":
        gpus = 0.0
    elif isinstance(job.gpus, list):
        gpus = float(len(job.gpus))
    else:
        gpus = 1.0 if job.gpus == "all" else float(job.gpus)
    return gpus, {BACKEND_RESOURCE.format(backend=job.backend): BACKEND_SHARE, **job.resources}


def connect(address: str) -> Any:
    """`ray`, connected to the cluster at `address` (UsageError when it cannot be)."""
    host = address.rsplit(":", 1)[0] if address != "auto" else ""
    loopback = host in _LOOPBACK
    if loopback:  # read by ray at import: keep this process's Ray servers on 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'warmer[ray]'") from None
    if ray.is_initialized():
        return ray
    _errors_to_stderr()
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    if loopback:
        options["_node_ip_address"] = "127.0.0.1"
    try:
        ray.init(address=address, namespace="warmer", **options)
    except Exception as exc:  # ConnectionError, a timeout, a version mismatch, …
        raise UsageError(f"--ray {address}: cannot join the cluster: {describe(exc)}") from None
    return ray


def _errors_to_stderr() -> None:
    """Ray prints the cluster's errors (`(raylet) The node … has been marked dead`) on this
    process's stdout, which is warmer's own (`--json` holds one document): send them to
    stderr, beside warmer's progress lines."""
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "_warmer", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix)

    to_stderr._warmer = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def check_placeable(jobs: Sequence[Job], nodes: Sequence[Mapping[str, Any]]) -> None:
    """UsageError naming every job that no live node could take, before anything starts."""
    alive = [node["Resources"] for node in nodes if node.get("Alive")]
    homeless = []
    for job in jobs:
        gpus, resources = needs(job)
        wanted = {"CPU": 1.0, **({"GPU": gpus} if gpus else {}), **resources}
        if not any(all(have.get(k, 0) >= v for k, v in wanted.items()) for have in alive):
            homeless.append(f"{job.name} ({', '.join(f'{k}: {v:g}' for k, v in wanted.items())})")
    if homeless:
        raise UsageError(
            f"no node of the Ray cluster offers what job(s) need: {'; '.join(homeless)}. "
            "A node declares a backend with `ray start --resources "
            """'{"warmer-backend-cuda": 1}'` (docs/fanout.md)"""
        )


def warm_on_node(manifest: dict[str, Any], options: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The Ray task: run one job on this node, yielding ("node", id), the runner's events,
    then ("end", what came of it). Runs on the node, in a Ray worker process."""
    import ray

    from warmer.runner import Runner
    from warmer.runtimes import available_runtime, get_runtime

    yield "node", ray.get_runtime_context().get_node_id()
    job = Job.from_manifest(manifest)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    with tempfile.TemporaryDirectory(prefix="warmer-ray-") as tmp:
        runtime = get_runtime(available_runtime())
        runtime.sweep()
        store = Store(Path(tmp) / "store")
        runner = Runner(
            runtime,
            store,
            Path(tmp) / "out",
            fmt=options["fmt"],
            on_event=lambda kind, data: events.put((kind, dict(data))),
        )

        def work() -> None:
            try:
                result = runner.run(job, verify=options["verify"])
                events.put((_END, _finished(store, result, options)))
            except JobFailed as exc:
                events.put((_END, {"error": str(exc), "log_tail": exc.log_tail}))
            except Exception as exc:  # the engine went away, the image is not there, …
                events.put((_END, {"error": describe(exc), "log_tail": ""}))

        thread = threading.Thread(target=work, name=f"warm-{job.name}", daemon=True)
        thread.start()
        while True:
            kind, data = events.get()
            yield kind, data
            if kind == _END:
                break
        thread.join()
        store.close()


def _finished(store: Store, result: JobResult, options: Mapping[str, Any]) -> dict[str, Any]:
    """What travels back of a finished job: its result, and the bundle's bytes or, when it is
    larger than the inline limit and a registry was given, the report of its push from here."""
    from warmer.registry import push, tier_reference

    end: dict[str, Any] = {"result": result.to_dict(), "report": result.report}
    size = result.bundle.stat().st_size
    registry = options.get("registry")
    if size > options["inline_max"] and registry:
        info, _manifest = store.resolve(result.ref, touch=False)
        target = tier_reference(registry, info.name, info.env_tag)
        end["pushed"] = push(store, result.ref, target, insecure=options["insecure"]).to_dict()
    else:
        end["bundle"] = result.bundle.read_bytes()
    return end


class RayPlacer:
    """Places jobs on a Ray cluster (see the module doc); reports like `FanOut`.

    `registry` (REGISTRY/PREFIX) lets a node push a bundle larger than `inline_max` itself;
    the push report is then the job's `pushed`, and the caller pushes nothing more.
    """

    def __init__(
        self,
        address: str,
        store: Store,
        out: Path,
        *,
        fmt: Format = "zst",
        verify: bool = False,
        retries: int = 0,
        inline_max: int = 256 << 20,
        registry: str | None = None,
        insecure: bool = False,
        on_event: Progress | None = None,
        on_done: DoneHandler | None = None,
    ) -> None:
        self.address, self.store, self.out, self.fmt = address, store, out, fmt
        self.retries = retries
        self.options = {
            "fmt": fmt,
            "verify": verify,
            "inline_max": inline_max,
            "registry": registry,
            "insecure": insecure,
        }
        self.on_event: Progress = on_event or silent
        self.outcomes = Outcomes(on_done)
        self.ray = connect(address)
        self._names = {n["NodeID"]: n for n in self.ray.nodes()}
        self._nodes: dict[str, NodeOutcome] = {}
        self._spans: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def check(self, jobs: Sequence[Job]) -> None:
        check_placeable(jobs, list(self._names.values()))

    def run(self, jobs: Sequence[Job]) -> list[NodeOutcome]:
        """Run every job as a Ray task; return each node's outcome (nodes that ran jobs, in
        the order they were first used)."""
        self.check(jobs)
        task = self.ray.remote(warm_on_node)
        threads = []
        started = []
        for job in jobs:
            gpus, resources = needs(job)
            handle = task.options(
                num_cpus=1,
                num_gpus=gpus,
                resources=resources,
                max_retries=self.retries,
                num_returns="streaming",
                name=f"warmer:{job.name}",
            ).remote(job.to_manifest(), self.options)
            started.append(handle)
            thread = threading.Thread(
                target=self._follow, args=(job, handle), name=f"ray-{job.name}", daemon=True
            )
            thread.start()
            threads.append(thread)
        try:
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:
            self.outcomes.cancelled.set()
            for handle in started:
                with contextlib.suppress(Exception):
                    self.ray.cancel(handle, force=True)
            raise
        for name, node in self._nodes.items():
            first, last = self._spans[name]
            node.seconds = last - first
        return list(self._nodes.values())

    def _follow(self, job: Job, handle: Any) -> None:
        """Relay one job's events as they come, then record how it ended."""
        node = "unplaced"
        started = time.monotonic()
        end: dict[str, Any] | None = None
        try:
            for ref in handle:
                kind, data = self.ray.get(ref)
                if kind == "node":
                    node = self._node_name(data)
                    self._mark(node, time.monotonic())
                    self.on_event(
                        "start",
                        {
                            "job": f"{job.name}@{node}",
                            "where": self._nodes[node].where,
                            "image": job.image,
                            "engine": job.engine.kind,
                            "backend": job.backend,
                        },
                    )
                elif kind == _END:
                    end = data
                else:
                    self.on_event(kind, {**data, "job": f"{job.name}@{node}"})
        except Exception as exc:  # the node died, the task was cancelled, …
            end = {"error": f"node {node}: {describe(exc)}", "log_tail": ""}
        outcome = JobOutcome(job, node, seconds=time.monotonic() - started)
        if end is None:
            end = {"error": f"node {node}: the task ended without a result", "log_tail": ""}
        if "error" in end:
            outcome.error, outcome.log_tail = end["error"], end["log_tail"]
        else:
            try:
                outcome.result, outcome.pushed = self._land(job, end)
            except Exception as exc:  # a bundle that does not verify, a pull that failed
                outcome.error = f"node {node}: bringing the bundle back: {describe(exc)}"
        self._mark(node, time.monotonic())
        self.outcomes.finish(self._node(node, node), outcome)

    def _land(self, job: Job, end: Mapping[str, Any]) -> tuple[JobResult, dict[str, Any] | None]:
        """Put a finished job's bundle into this store and --out: the bytes that came back
        (verified on import), or the snapshot its node pushed (pulled, verified)."""
        from warmer.oci import Reference
        from warmer.registry import pull

        data = dict(end["result"])
        pushed = end.get("pushed")
        self.out.mkdir(parents=True, exist_ok=True)
        if pushed is None:
            with tempfile.TemporaryDirectory(prefix=".warmer-ray-", dir=self.out) as tmp:
                part = Path(tmp) / Path(data["bundle"]).name
                part.write_bytes(end["bundle"])
                info = import_bundle(self.store, part)
                bundle = self.out / part.name
                part.replace(bundle)
        else:
            source = Reference.parse(pushed["reference"])
            report = pull(self.store, source, insecure=bool(self.options["insecure"]))
            info, manifest = self.store.resolve(report.ref, touch=False)
            bundle = export_bundle(self.store, info.ref, self.out / bundle_name(manifest, self.fmt))
        result = JobResult(
            name=job.name,
            bundle=bundle,
            ref=info.ref,
            snapshot=info.snapshot,
            files=data["files"],
            bytes=data["bytes"],
            kinds=data["kinds"],
            unclassified=data["unclassified"],
            verify=data["verify"],
            timings=data["timings"],
            report=dict(end.get("report") or {}),
        )
        return result, pushed

    def _node_name(self, node_id: str) -> str:
        """The node's name (its NodeName, else the start of its id) and its outcome."""
        info = self._names.get(node_id) or {}
        name = str(info.get("NodeName") or "")
        if not name or name in ("127.0.0.1", info.get("NodeManagerAddress")):
            name = node_id[:8]
        where = f"{info.get('NodeManagerAddress', '?')} node {node_id[:12]}"
        self._node(name, where)
        return name

    def _node(self, name: str, where: str) -> NodeOutcome:
        with self._lock:
            return self._nodes.setdefault(name, NodeOutcome(name, where))

    def _mark(self, name: str, when: float) -> None:
        with self._lock:
            span = self._spans.setdefault(name, [when, when])
            span[0], span[1] = min(span[0], when), max(span[1], when)
