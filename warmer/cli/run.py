"""`warmer run JOB.yaml`: warm every job of a file in a container (or locally) into bundles."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from warmer.cli.keys import sign_option, signer_of
from warmer.cli.options import current_settings, json_option, store_option
from warmer.cli.output import ProgressPrinter, console, emit_json, start_line, table
from warmer.errors import JobFailed, RegistryError, WarmerError
from warmer.units import format_duration, format_size

if TYPE_CHECKING:
    from securesystemslib.signer import CryptoSigner

    from warmer.bundle import Format
    from warmer.cluster import RayPlacer
    from warmer.fanout import FanOut
    from warmer.placement import JobOutcome, NodeOutcome
    from warmer.runner import JobResult
    from warmer.spec import Job
    from warmer.store import Store
    from warmer.store.manifest import Manifest


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
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["zst", "gz"]),
    default=None,
    help="Bundle compression [default: $WARMER_BUNDLE_FORMAT, bundle.format, else zst].",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not stream the warm-up's log lines.")
@click.option(
    "--hosts",
    metavar="HOST[,HOST…]",
    default=None,
    help="Fan the jobs out over Docker hosts at once: host names from the config, `all`, "
    "or [BACKEND=]URL (cpu=unix:///run/d2.sock) [default: $WARMER_HOSTS]. See docs/fanout.md.",
)
@click.option(
    "--ray",
    "cluster",
    metavar="ADDRESS",
    default=None,
    help="Place the jobs on a Ray cluster (HOST:PORT of its head, or `auto`): each job a Ray "
    "task asking for its backend and GPUs [default: $WARMER_RAY, cluster.address]. "
    "See docs/fanout.md.",
)
@click.option(
    "--push",
    is_flag=True,
    help="Push each bundle to REGISTRY/PREFIX/<job>:<env tag> (the registry: --registry).",
)
@click.option(
    "--registry",
    metavar="REGISTRY/PREFIX",
    default=None,
    help="Where --push pushes [default: $WARMER_REGISTRY or registry.url in the config].",
)
@sign_option
@click.option(
    "--fold",
    "folds",
    metavar="REF",
    multiple=True,
    help="Add the files of a capture (`warmer capture`: a store ref or registry reference) "
    "to the bundle of the job of its name (repeatable).",
)
@store_option
@json_option
def run(
    job_file: Path,
    only: str | None,
    runtime: str | None,
    out: Path,
    verify: bool,
    fmt: str | None,
    quiet: bool,
    hosts: str | None,
    cluster: str | None,
    push: bool,
    registry: str | None,
    sign_key: Path | None,
    folds: tuple[str, ...],
    store: Path | None,
    as_json: bool,
) -> None:
    """Warm up each job of JOB_FILE, harvest its compile caches, export a bundle per job,
    with its provenance (signed with --sign, beside it as BUNDLE.intoto.jsonl)."""
    from warmer.errors import UsageError
    from warmer.fanout import FanOut
    from warmer.runtimes import available_runtime, get_runtime
    from warmer.runtimes.base import MIN_SECRET_LENGTH, secret_pieces
    from warmer.spec import load_jobs, require_images
    from warmer.store import Store

    settings = current_settings()
    fmt = fmt or settings.bundle_format
    hosts_source = "--hosts" if hosts is not None else "WARMER_HOSTS"
    hosts = hosts if hosts is not None else settings.run_hosts
    cluster = cluster if cluster is not None else (None if hosts else settings.cluster)
    if cluster is not None and hosts is not None:
        raise UsageError("--ray and --hosts are two ways to place jobs: choose one")
    jobs = load_jobs(job_file, only=only)
    missing = sorted({name for job in jobs for name in job.secrets if name not in os.environ})
    if missing:
        raise UsageError(f"secret(s) not set in this environment: {', '.join(missing)}")
    short = sorted(
        {name for job in jobs for name in job.secrets if not secret_pieces(os.environ[name])}
    )
    if short:
        console.print(
            f"warning: secret(s) {', '.join(short)} shorter than {MIN_SECRET_LENGTH} characters: "
            "not masked in the log, not looked for in the caches"
        )
    if hosts is not None and runtime not in (None, "docker"):
        raise UsageError(f"--hosts runs jobs on Docker engines: --runtime {runtime} does not apply")
    if cluster is not None and runtime is not None:
        raise UsageError("--ray: each node picks its runtime (docker, else local): drop --runtime")
    if runtime is None and hosts is None and cluster is None:
        runtime = available_runtime()
        if runtime == "local":
            console.print("no container engine answers: running with the local runtime")
    require_images(jobs, runtime or "docker", job_file)
    pusher = _Pusher(registry) if push else None
    signer = signer_of(sign_key)  # a wrong passphrase stops before any job starts
    with_host = hosts is not None or cluster is not None
    options: dict[str, Any] = {"fmt": fmt, "verify": verify}
    placer: FanOut | RayPlacer
    if cluster is not None or hosts is not None:
        opened = Store(store)
        provenance = _Provenance(signer, "ray" if cluster is not None else "docker", None)
        ended = _Ended(opened, pusher, provenance, with_host=True, folds=_folds(opened, folds))
        if cluster is not None:
            placer = _on_ray(jobs, cluster, opened, out, ended, pusher, quiet=quiet, **options)
            outcomes = placer.run(jobs)
        else:
            assert hosts is not None
            placer, queues = _fan_out(
                jobs, hosts, hosts_source, opened, out, ended, quiet=quiet, **options
            )
            provenance.urls = {host.name: host.url for host in placer.hosts}
            outcomes = placer.run(queues)
    else:
        assert runtime is not None
        engine = get_runtime(runtime)
        swept = engine.sweep()
        if swept:
            console.print(f"removed {swept} leftover container(s) of an earlier crashed run")
        opened = Store(store)
        ended = _Ended(
            opened,
            pusher,
            _Provenance(signer, engine.name, engine),
            with_host=False,
            folds=_folds(opened, folds),
        )
        printer = ProgressPrinter(quiet=quiet)
        placer = FanOut(engine, opened, out, on_event=printer, on_done=ended, **options)
        outcomes = placer.run({engine.name: list(jobs)})
    results = [ended.entries[job.name] for job in jobs]
    if as_json:
        hosted = {"hosts": [_host_entry(o) for o in outcomes]} if with_host else {}
        emit_json({"jobs": results, **hosted})
    else:
        _summary(results, with_host=with_host)
        if with_host:
            _host_summary(outcomes)
    _raise_if_failed(results)


def _fan_out(
    jobs: Sequence[Job],
    value: str,
    source: str,
    store: Store,
    out: Path,
    ended: _Ended,
    *,
    quiet: bool,
    fmt: Format,
    verify: bool,
) -> tuple[FanOut, dict[str, list[Job]]]:
    """The fan-out over the hosts `value` names (given as `source`: --hosts or WARMER_HOSTS),
    and each host's jobs (printed): everything is checked (hosts, a host for every job) before
    anything starts."""
    from warmer.errors import UsageError
    from warmer.fanout import FanOut, assign, parse_hosts

    try:
        hosts = parse_hosts(value, current_settings().hosts)
    except UsageError as exc:  # named the way the user gave it
        raise UsageError(str(exc).replace("--hosts", source, 1)) from None
    queues = assign(jobs, hosts)
    for host in hosts:
        for job in queues[host.name]:
            where = {"job": f"{job.name}@{host.name}", "where": host.url, "image": job.image}
            console.print(start_line({**where, "engine": job.engine.kind, "backend": job.backend}))
    printer = ProgressPrinter(quiet=quiet, starts=False)  # the plan above said where
    fanout = FanOut(hosts, store, out, fmt=fmt, verify=verify, on_event=printer, on_done=ended)
    return fanout, queues


def _on_ray(
    jobs: Sequence[Job],
    address: str,
    store: Store,
    out: Path,
    ended: _Ended,
    pusher: _Pusher | None,
    *,
    quiet: bool,
    fmt: Format,
    verify: bool,
) -> RayPlacer:
    """The Ray placer for `--ray ADDRESS`, joined to the cluster and checked: every job has a
    node that could take it before anything starts."""
    from warmer.cluster import RayPlacer
    from warmer.units import parse_size

    settings = current_settings()
    placer = RayPlacer(
        address,
        store,
        out,
        fmt=fmt,
        verify=verify,
        retries=settings.cluster_retries,
        inline_max=parse_size(settings.cluster_inline_max),
        registry=pusher.registry if pusher else None,
        insecure=settings.insecure,
        on_event=ProgressPrinter(quiet=quiet),
        on_done=ended,
    )
    placer.check(jobs)
    console.print(f"placing {len(jobs)} job(s) on the Ray cluster at {address}")
    return placer


class _Ended:
    """What follows each job as it ends (one call at a time): its report, its entry in
    `--json` and the summary (with `host` when fanned out), its push."""

    def __init__(
        self,
        store: Store,
        pusher: _Pusher | None,
        provenance: _Provenance,
        *,
        with_host: bool,
        folds: Mapping[str, list[Manifest]] | None = None,
    ) -> None:
        self.store, self.pusher, self.with_host = store, pusher, with_host
        self.provenance = provenance
        self.folds = folds or {}
        self.entries: dict[str, dict[str, Any]] = {}

    def __call__(self, outcome: JobOutcome) -> None:
        name = outcome.job.name
        label = f"{name}@{outcome.host}" if self.with_host else name
        if outcome.result is not None and self.folds.get(name):
            _fold(self.store, outcome, self.folds[name], label)
        _report(label, outcome.result, outcome.error, outcome.log_tail)
        entry = _entry(name, outcome.result, outcome.error, outcome.seconds)
        self.entries[name] = {**entry, "host": outcome.host} if self.with_host else entry
        if outcome.result is not None:
            self.entries[name].update(self.provenance(self.store, outcome))
        if outcome.pushed is not None:  # its node pushed it (a large bundle on Ray)
            self.entries[name]["push"] = outcome.pushed
            console.print(f"[{label}] pushed {outcome.pushed['reference']} from its node")
        elif self.pusher and outcome.result is not None:
            self.entries[name]["push"] = self.pusher(self.store, outcome.result)


def _folds(store: Store, refs: Sequence[str]) -> dict[str, list[Manifest]]:
    """The captures `--fold` names, brought into the store, by the job name they are for."""
    from warmer.sources import in_store

    found: dict[str, list[Manifest]] = {}
    for ref in refs:
        _info, manifest = in_store(store, ref, touch=False)
        found.setdefault(manifest.name, []).append(manifest)
    return found


def _fold(store: Store, outcome: JobOutcome, deltas: Sequence[Manifest], label: str) -> None:
    """Add the captures' files to a job's snapshot and write its bundle again; a capture of
    another environment fails the job (its bundle would claim files that cannot hit)."""
    from warmer.bundle import write_bundle
    from warmer.capture import fold
    from warmer.errors import UsageError

    result = outcome.result
    assert result is not None
    try:
        info, manifest, added = fold(store, result.ref, deltas)
    except UsageError as exc:
        outcome.result, outcome.error = None, str(exc)
        return
    if not added:
        return
    bundle = write_bundle(manifest, store.open_object, result.bundle.parent, _format(result))
    if bundle != result.bundle:
        result.bundle.unlink(missing_ok=True)
    result.bundle, result.ref, result.snapshot = bundle, info.ref, info.snapshot
    result.files, result.bytes = len(manifest.files), manifest.total_size
    console.print(f"[{label}] folded {len(added)} captured file(s) into its bundle")


def _format(result: JobResult) -> Format:
    return "gz" if result.bundle.name.endswith(".gz") else "zst"


def _entry(
    name: str, result: JobResult | None, error: str | None, seconds: float
) -> dict[str, Any]:
    """A job's entry in `--json` and the summary."""
    if result is None:
        return {"name": name, "ok": False, "error": error, "seconds": round(seconds, 3)}
    return {"ok": True, **result.to_dict(), "seconds": round(seconds, 3)}


def _report(label: str, result: JobResult | None, error: str | None, log_tail: str) -> None:
    """What people need to hear when a job ends: why it failed, or what it left out."""
    if result is None:
        console.print(f"[{label}] FAILED: {error}")
        if log_tail:
            console.print(f"[{label}] --- last lines of the log ---")
            console.print(log_tail)
        return
    for path in result.unclassified[:10]:
        console.print(f"[{label}] left out (matches no cache kind): {path}")
    if len(result.unclassified) > 10:
        console.print(f"[{label}] … and {len(result.unclassified) - 10} more left out")
    if result.verify:
        _report_recompiles(label, result.verify)


def _report_recompiles(label: str, verify: Mapping[str, Any]) -> None:
    """A verify whose warm start compiled again: what, and why as the engine said."""
    if verify.get("misses"):
        kinds = ", ".join(
            f"{kind} {counts['misses']}"
            for kind, counts in (verify.get("by_kind") or {}).items()
            if counts["misses"]
        )
        console.print(
            f"[{label}] warning: the warm start from this bundle compiled "
            f"{verify['misses']} artifact(s) again{f' ({kinds})' if kinds else ''}"
        )
    for artifact, reasons in (verify.get("why_missed") or {}).items():
        console.print(f"[{label}]   {artifact}: {'; '.join(reasons)}")
    for item in verify.get("recompiled") or []:
        console.print(f"[{label}] warning: recompiled {item['path']}: {item['reason']}")
        console.print(f"[{label}]   try: {item['hint']}")


def _host_entry(outcome: NodeOutcome) -> dict[str, Any]:
    return {
        "name": outcome.name,
        "url": outcome.where,
        "jobs": [o.job.name for o in outcome.jobs],
        "failed": [o.job.name for o in outcome.failed],
        "seconds": round(outcome.seconds, 3),
        "error": outcome.error,
    }


def _raise_if_failed(results: Sequence[Mapping[str, Any]]) -> None:
    """JobFailed (exit 3) when a job failed; RegistryError (exit 1) when all passed but a push
    did not."""
    failed = sum(not item["ok"] for item in results)
    if failed:
        raise JobFailed(f"{failed} of {len(results)} job(s) failed")
    pushes = sum("error" in (item.get("push") or {}) for item in results)
    if pushes:
        raise RegistryError(f"{pushes} of {len(results)} push(es) failed")
    unsigned = sum("signature_error" in item for item in results)
    if unsigned:
        raise WarmerError(f"{unsigned} of {len(results)} provenance record(s) failed")


class _Provenance:
    """Keeps each published bundle's statement in the store (signed with --sign) and writes a
    signed one beside the bundle: the runtime, the host, the image and its id as the engine
    that ran it knows it (`runtime` for a plain run, else each fan-out host at its URL)."""

    def __init__(self, signer: CryptoSigner | None, runtime: str, engine: Any) -> None:
        self.signer, self.runtime, self.engine = signer, runtime, engine
        #: fan-out host name -> engine URL
        self.urls: dict[str, str] = {}
        self._clients: dict[str, Any] = {}

    def __call__(self, store: Store, outcome: JobOutcome) -> dict[str, Any]:
        import time

        from warmer.errors import WarmerError
        from warmer.provenance import Made, host_name, record, write_sidecar

        result = outcome.result
        assert result is not None
        image = outcome.job.image
        image_id, repo_digests = self._image(outcome.host, image) if image else (None, ())
        url = self.urls.get(outcome.host)
        finished = time.time()
        made = Made(
            "run",
            runtime=self.runtime,
            host=f"{outcome.host} ({url})" if url else host_name(),
            image=image,
            image_id=image_id,
            repo_digests=repo_digests,
            started=finished - outcome.seconds,
            finished=finished,
        )
        try:
            _info, manifest = store.resolve(result.ref, touch=False)
            signature = write_sidecar(result.bundle, record(store, manifest, made, self.signer))
        except (WarmerError, OSError) as exc:
            console.print(f"[{result.name}] provenance FAILED: {exc}")
            return {"signature": None, "signature_error": str(exc)}
        return {"signature": str(signature) if signature else None}

    def _image(self, host: str, image: str) -> tuple[str | None, tuple[str, ...]]:
        """The image's id and repo digests on the engine that ran it ((None, ()) when that
        engine cannot say: the local runtime, an engine gone since)."""
        import docker
        import docker.errors

        try:
            client = getattr(self.engine, "client", None)
            if host in self.urls:
                if host not in self._clients:
                    self._clients[host] = docker.DockerClient(base_url=self.urls[host])
                client = self._clients[host]
            if client is None:
                return None, ()
            found = client.images.get(image)
        except (docker.errors.DockerException, OSError):
            return None, ()
        return found.id, tuple(found.attrs.get("RepoDigests") or ())


class _Pusher:
    """Pushes each published bundle to the registry (checked before any job starts)."""

    def __init__(self, value: str | None) -> None:
        from warmer.errors import UsageError
        from warmer.oci import Reference

        settings = current_settings()
        self.registry = value or settings.registry or ""
        if not self.registry:
            raise UsageError(
                "--push needs a registry: --registry REGISTRY/PREFIX, WARMER_REGISTRY, "
                "or registry.url in the config"
            )
        try:
            Reference.parse(self.registry)
        except UsageError as exc:
            raise UsageError(f"{'--registry' if value else 'the registry'}: {exc}") from None
        self.insecure = settings.insecure

    def __call__(self, store: Store, result: JobResult) -> dict[str, Any]:
        from warmer.errors import WarmerError
        from warmer.registry import push, tier_reference

        try:
            info, _manifest = store.resolve(result.ref, touch=False)
            target = tier_reference(self.registry, info.name, info.env_tag)
            report = push(store, result.ref, target, insecure=self.insecure)
        except WarmerError as exc:
            console.print(f"[{result.name}] push FAILED: {exc}")
            return {"error": str(exc)}
        console.print(
            f"[{result.name}] pushed {report.reference} "
            f"({format_size(report.bytes_sent)} sent, {report.layers_reused} layers reused)"
        )
        return report.to_dict()


def _summary(results: list[dict[str, Any]], *, with_host: bool = False) -> None:
    rows = []
    for item in results:
        host = [item.get("host", "")] if with_host else []
        if not item["ok"]:
            rows.append([item["name"], *host, "FAILED", "", "", "", "", ""])
            continue
        verify = item.get("verify") or {}
        rate = verify.get("hit_rate")
        rows.append(
            [
                item["name"],
                *host,
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
    host = ["HOST"] if with_host else []
    table(
        ["JOB", *host, "STATUS", "FILES", "SIZE", "HIT RATE", "COLD → WARM", "BUNDLE"],
        rows,
        right=["FILES", "SIZE", "HIT RATE"],
    )


def _host_summary(outcomes: Sequence[NodeOutcome]) -> None:
    """Per host: how many jobs ran there, how many passed and failed, and its wall time."""
    rows = [
        [
            o.name,
            len(o.jobs),
            len(o.jobs) - len(o.failed),
            len(o.failed),
            format_duration(o.seconds) if o.jobs else "",
        ]
        for o in outcomes
    ]
    table(["HOST", "JOBS", "OK", "FAILED", "WALL"], rows, right=["JOBS", "OK", "FAILED", "WALL"])
    for o in outcomes:
        if o.error:
            console.print(f"host {o.name}: {o.error}")
