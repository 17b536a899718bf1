"""One job end to end: runtime → agent → harvest → store → (verify) → bundle.

Nothing is published until everything succeeded: the snapshot is committed and the bundle
written only after the warm-up (and, with verify, the second pass) passed. A failed or timed
out run raises JobFailed carrying the log tail; the runtime has already removed its
container by then.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import warmer
from warmer.agent.report import parse_line
from warmer.bundle import Format, write_bundle, write_tar
from warmer.caches import CacheRoot, Facts, default_roots, relocate, select, write_proof
from warmer.envkey import EnvKey, explain_misses
from warmer.errors import JobFailed
from warmer.harvest import Harvest, collect_stream, snapshot
from warmer.progress import Progress, silent
from warmer.runtimes.base import (
    AGENT_PACKAGE_TARGET,
    ContainerSpec,
    Mount,
    RunOutcome,
    Runtime,
    read_secrets,
    secret_pieces,
)
from warmer.spec import Job, require_images
from warmer.store import Store
from warmer.store.manifest import Manifest
from warmer.units import parse_size

JOB_TARGET = "/opt/warmer-job"
#: Paths a container writes that are never caches nor worth listing as left out.
_NOISE = (
    "/opt/warmer",
    "/proc/",
    "/sys/",
    "/dev/",
    "/run/",
    "/etc/",
    "/var/",
    "/root/.bash_history",
)

#: vLLM's ZMQ sockets: `ipc://<temp dir>/<uuid4>` (vllm.utils.network_utils).
_IPC_SOCKET = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _is_noise(path: str, tmpdir: str) -> bool:
    """A path a container writes that is no cache nor worth listing as left out."""
    directory, name = os.path.split(path)
    return path.startswith(_NOISE) or (directory == tmpdir and bool(_IPC_SOCKET.fullmatch(name)))


@dataclass
class JobResult:
    """What a job produced, for the summary table and `--json`."""

    name: str
    bundle: Path
    ref: str
    snapshot: str
    files: int
    bytes: int
    kinds: dict[str, dict[str, int]]
    unclassified: list[str]
    verify: dict[str, Any] | None
    timings: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bundle": str(self.bundle),
            "ref": self.ref,
            "snapshot": self.snapshot,
            "files": self.files,
            "bytes": self.bytes,
            "kinds": self.kinds,
            "unclassified": self.unclassified,
            "verify": self.verify,
            "timings": self.timings,
        }


@dataclass
class _Pass:
    """One warm-up run inside a runtime session."""

    outcome: RunOutcome
    report: dict[str, Any]


@dataclass
class PassResult:
    """A warm-up in a fresh session (`Runner.run_pass`): the agent's report, the files asked
    for by path, and (when watched) the cache files the run wrote and its cache roots, at the
    paths a bundle records."""

    report: dict[str, Any]
    taken: dict[str, bytes]
    written: list[str]
    roots: list[CacheRoot]


@contextlib.contextmanager
def staged(job: Job, run_id: str) -> Iterator[ContainerSpec]:
    """The container spec of `job`, with the job file it mounts written to a temporary
    directory that lives as long as the context."""
    with tempfile.TemporaryDirectory(prefix="warmer-job-") as job_dir:
        (Path(job_dir) / "job.json").write_text(json.dumps(job.to_manifest()))
        os.chmod(job_dir, 0o755)
        yield container_spec(job, Path(job_dir), run_id)


def container_spec(job: Job, job_dir: Path, run_id: str) -> ContainerSpec:
    """What the runtime starts for `job`: the agent, mounted read-only, with the job's env.
    A job without `image` gets an empty one: only the local runtime, which needs none, runs it.
    """
    package_dir = os.path.dirname(os.path.abspath(warmer.__file__))
    env = {"PYTHONPATH": os.path.dirname(AGENT_PACKAGE_TARGET), "PYTHONUNBUFFERED": "1", **job.env}
    return ContainerSpec(
        image=job.image or "",
        command=["python3", "-m", "warmer.agent", "run", "--job", f"{JOB_TARGET}/job.json"],
        env=env,
        secret_names=tuple(job.secrets),
        mounts=(
            Mount(package_dir, AGENT_PACKAGE_TARGET, read_only=True),
            Mount(str(job_dir), JOB_TARGET, read_only=True),
            *(_volume(v) for v in job.volumes),
        ),
        labels={"warmer.job": job.name, "warmer.run": run_id, "warmer.pid": str(os.getpid())},
        backend=job.backend,
        gpus=job.gpus,
        network=job.network,
        user=job.user,
        workdir=job.workdir,
        shm_size=parse_size(job.shm_size) if job.shm_size else None,
    )


def _volume(spec: str) -> Mount:
    parts = spec.split(":")
    read_only = len(parts) == 3 and parts[2] == "ro"
    return Mount(parts[0], parts[1], read_only=read_only)


def parse_report(lines: list[str]) -> dict[str, Any] | None:
    """The agent's final report, from its stdout lines (None when it never printed one)."""
    for line in reversed(lines):
        parsed = parse_line(line)
        if parsed and parsed[0] == "report":
            return parsed[1]
    return None


def reported_factors(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The key factors an agent reported (None from an older agent or a failed probe)."""
    factors = report.get("key_factors")
    return factors if isinstance(factors, dict) else None


def hit_rate(report: Mapping[str, Any]) -> float | None:
    """hits / (hits + misses) of the engine's compile-cache lookups; None when there were none."""
    hits, misses = int(report.get("hits") or 0), int(report.get("misses") or 0)
    return hits / (hits + misses) if hits + misses else None


class Runner:
    """Runs jobs on one runtime into one store, exporting bundles to one directory."""

    def __init__(
        self,
        runtime: Runtime,
        store: Store,
        out: Path,
        *,
        fmt: Format = "zst",
        on_event: Progress | None = None,
    ) -> None:
        self.runtime, self.store, self.out, self.fmt = runtime, store, out, fmt
        #: "phase", "line" and "progress" reports (warmer.progress)
        self.on_event = on_event or silent

    def run(self, job: Job, *, verify: bool = False) -> JobResult:
        """Warm `job` up, harvest, optionally verify, then commit and export (see module doc)."""
        require_images([job], self.runtime.name)
        run_id = uuid.uuid4().hex[:12]
        timings: dict[str, float] = {}
        with staged(job, run_id) as spec:
            self._phase(job, "warm-up")
            started = time.monotonic()
            with self.runtime.start(spec) as session:
                timings["start_s"] = time.monotonic() - started
                cold = self._wait(job, session)
                timings["warmup_s"] = cold.outcome.seconds
                self._phase(job, "harvest")
                harvest_started = time.monotonic()
                harvest = self._harvest(job, session, cold.report)
                timings["harvest_s"] = time.monotonic() - harvest_started
            env = EnvKey.from_dict(cold.report.get("env") or {})
            manifest = Manifest(
                name=job.name,
                env=env.to_dict(),
                env_tag=env.tag,
                env_digest=env.digest,
                files=tuple(sorted(harvest.entries, key=lambda e: e.path)),
                job=job.to_manifest(),
                key_factors=reported_factors(cold.report),
            )
            if not manifest.files:
                raise JobFailed(
                    f"job {job.name}: the warm-up wrote no compile cache files "
                    f"(new files elsewhere: {len(harvest.unclassified)})",
                    "\n".join(harvest.unclassified[:20]),
                )
            verify_result = None
            if verify:
                self._phase(job, "verify")
                verify_result = self._verify(job, spec, manifest, cold.report)
                timings["verify_s"] = verify_result.pop("_seconds")
            self._phase(job, "store")
            store_started = time.monotonic()
            info, manifest = snapshot(
                self.store,
                harvest,
                name=job.name,
                env=env,
                job=job.to_manifest(),
                verify=verify_result,
                key_factors=manifest.key_factors,
            )
            timings["store_s"] = time.monotonic() - store_started
            export_started = time.monotonic()
            self.out.mkdir(parents=True, exist_ok=True)
            bundle = write_bundle(manifest, self.store.open_object, self.out, self.fmt)
            timings["export_s"] = time.monotonic() - export_started
        return JobResult(
            name=job.name,
            bundle=bundle,
            ref=info.ref,
            snapshot=info.snapshot,
            files=len(manifest.files),
            bytes=manifest.total_size,
            kinds=harvest.kinds(),
            unclassified=harvest.unclassified,
            verify=verify_result,
            timings=timings,
            report=cold.report,
        )

    def _phase(self, job: Job, phase: str) -> None:
        self.on_event("phase", {"job": job.name, "phase": phase})

    def _wait(self, job: Job, session: Any) -> _Pass:
        def on_line(line: str) -> None:
            parsed = parse_line(line)
            if parsed is None:
                self.on_event("line", {"job": job.name, "line": line})
            elif parsed[0] == "progress":
                self.on_event("progress", {"job": job.name, **parsed[1]})

        outcome: RunOutcome = session.wait(job.timeout, on_line)
        if outcome.timed_out:
            raise JobFailed(
                f"job {job.name} timed out after {job.timeout:.0f}s; its container was removed",
                outcome.log_tail,
            )
        report = parse_report(outcome.stdout_lines)
        if outcome.exit_code != 0 or report is None or not report.get("ok"):
            reason = (report or {}).get("error") or f"exit code {outcome.exit_code}"
            raise JobFailed(f"job {job.name} failed: {reason}", outcome.log_tail)
        return _Pass(outcome, report)

    def roots(self, job: Job, report: Mapping[str, Any]) -> list[CacheRoot]:
        """The cache roots of the run, as the agent saw its environment."""
        return select(default_roots(Facts.from_report(report.get("facts") or {})), job.caches)

    def _harvest(self, job: Job, session: Any, report: Mapping[str, Any]) -> Harvest:
        roots = self.roots(job, report)
        tmpdir = Facts.from_report(report.get("facts") or {}).tmpdir
        changed = [p for p in session.changed_paths() if not _is_noise(p, tmpdir)]
        changed_set = set(changed)
        touched = [r for r in roots if any(p.startswith(r.path.rstrip("/") + "/") for p in changed)]
        mapping: Mapping[str, str] = getattr(session, "path_mapping", {})

        def members() -> Iterator[tuple[str, int, int, Any]]:
            for root in _outermost(touched):
                for info, reader in session.read_tree(root.path):
                    if reader is not None:
                        yield info.name, info.size, info.mode, reader

        secrets = read_secrets(job.secrets)
        harvest = collect_stream(
            self.store,
            members(),
            touched,
            wanted=changed_set.__contains__,
            mapping=mapping,
            secrets={
                name: [piece.encode() for piece in secret_pieces(value)]
                for name, value in secrets.items()
            },
        )
        if harvest.leaks:
            found = "; ".join(f"{path} holds {name}" for path, name in harvest.leaks[:10])
            more = f" (and {len(harvest.leaks) - 10} more)" if len(harvest.leaks) > 10 else ""
            raise JobFailed(
                f"job {job.name} wrote the value of a secret into its caches: {found}{more}; "
                "nothing was published (keep secrets out of cache directories)"
            )
        harvest.unclassified.extend(
            p for p in _leaves(changed) if not any(p.startswith(r.path + "/") for r in roots)
        )
        return harvest

    def run_pass(
        self,
        job: Job,
        spec: ContainerSpec,
        *,
        preload: Iterable[bytes] | None = None,
        take: Sequence[str] = (),
        watch: bool = False,
    ) -> PassResult:
        """One warm-up in a fresh session. `take`: absolute paths in the session whose files
        are read before it is removed; `watch`: list the cache files the run wrote (files whose
        modification time is not older than the pass; a preload keeps the bundle's old times).
        """
        taken: dict[str, bytes] = {}
        written: list[str] = []
        recorded: list[CacheRoot] = []
        started = int(time.time()) - 1  # tar times are whole seconds
        with self.runtime.start(spec, preload=preload) as session:
            result = self._wait(job, session)
            for path in take:
                for info, reader in session.read_tree(path):
                    if reader is not None:
                        taken[info.name] = reader.read()
            if watch:
                mapping: Mapping[str, str] = getattr(session, "path_mapping", {})
                roots = self.roots(job, result.report)
                recorded = [CacheRoot(r.kind, relocate(r.path, mapping)) for r in roots]
                for root in _outermost(roots):
                    written += [
                        relocate(info.name, mapping)
                        for info, _ in session.read_tree(root.path)
                        if info.isreg() and info.mtime >= started
                    ]
        return PassResult(result.report, taken, written, recorded)

    def _verify(
        self, job: Job, spec: ContainerSpec, manifest: Manifest, cold: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A fresh run with the bundle preloaded: hits proven by what it wrote (see
        `caches.write_proof`), and cold vs warm compile time."""
        started = time.monotonic()
        warm = self.run_pass(job, spec, preload=tar_chunks(manifest, self.store), watch=True)
        return {**verify_result(manifest, cold, warm), "_seconds": time.monotonic() - started}


def verify_result(manifest: Manifest, cold: Mapping[str, Any], warm: PassResult) -> dict[str, Any]:
    """What a verify pass found: the write proof's hits, misses and hit rate (the engine's own
    count when no compile artifact was involved at all), which key factor changed for each
    missed artifact (`why_missed`), what the engine said it recompiled and why, and the cold
    and warm compile times."""
    proof = write_proof((e.path for e in manifest.files), warm.written, warm.roots)
    engine = {
        "hits": int(warm.report.get("hits") or 0),
        "misses": int(warm.report.get("misses") or 0),
    }
    if proof["hit_rate"] is None:
        proof.update(engine, hit_rate=hit_rate(engine))
    cold_timings, warm_timings = cold.get("timings") or {}, warm.report.get("timings") or {}
    cold_s = float(cold_timings.get("compile_s") or 0.0)
    warm_s = float(warm_timings.get("compile_s") or 0.0)
    why = explain_misses(
        list(proof.get("missed") or []),
        manifest.env,
        manifest.key_factors,
        warm.report.get("env") or {},
        reported_factors(warm.report),
    )
    return {
        **proof,
        "why_missed": why,
        "engine": engine,
        "recompiled": list(warm.report.get("recompiled") or []),
        "cold_s": round(cold_s, 3),
        "warm_s": round(warm_s, 3),
        "speedup": round(cold_s / warm_s, 2) if warm_s > 0 else None,
        "cold_import_s": cold_timings.get("import_s"),
        "warm_import_s": warm_timings.get("import_s"),
        "counters": warm.report.get("counters") or {},
    }


def _outermost(roots: list[CacheRoot]) -> list[CacheRoot]:
    """Roots not inside another root of the list (so no file is read twice)."""
    return [
        r
        for r in roots
        if not any(o is not r and r.path.startswith(o.path.rstrip("/") + "/") for o in roots)
    ]


def _leaves(paths: list[str]) -> list[str]:
    """The paths that are no other path's parent: files (or empty directories)."""
    ordered = sorted(paths)
    return [
        p
        for i, p in enumerate(ordered)
        if not (i + 1 < len(ordered) and ordered[i + 1].startswith(p.rstrip("/") + "/"))
    ]


def tar_chunks(manifest: Manifest, store: Store) -> Iterator[bytes]:
    """The snapshot's files as an uncompressed tar stream, written by a thread into a pipe."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out:
                write_tar(manifest, store.open_object, out, include_manifest=False)
        except BaseException as exc:  # handed to the consumer below
            failure.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(1 << 20):
            yield chunk
    producer.join()
    if failure:
        raise failure[0]
