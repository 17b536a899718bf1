"""Fan-out (`warmer run --hosts`): hosts parsing and job matching without an engine, then
real runs over two Docker engines on this machine, one of them stopped mid-run.

The second engine comes from `.ci/engine-up --second` ($WARMER_SECOND_DOCKER_HOST, and
$WARMER_SECOND_DOCKER_PIDFILE to stop and restart it); without it those tests skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import IMAGE, REPO
from helpers.run import SMALL_INPUTS, SMALL_MODEL, WARMER, warmer, warmer_environ

from warmer.config import HostConfig
from warmer.errors import UsageError
from warmer.fanout import assign, parse_hosts
from warmer.spec import Job
from warmer.store import Store

CONFIGURED = (
    HostConfig("gpu-a", "ssh://ml@gpu-a", ("cuda",)),
    HostConfig("mi300", "tcp://mi300:2376", ("rocm",)),
    HostConfig("builder", "unix:///var/run/docker.sock", ("cpu",), slots=2),
)
#: How long a real run may take before the test gives up on it.
RUN_LIMIT_S = 600


def job(name: str, backend: str = "cpu") -> Job:
    return Job.model_validate(
        {
            "version": 1,
            "name": name,
            "image": IMAGE,
            "backend": backend,
            "engine": {"kind": "command", "command": ["true"]},
        }
    )


# --- --hosts parsing ---------------------------------------------------------------------


def test_names_all_and_urls_in_order_each_once() -> None:
    hosts = parse_hosts("mi300, cpu=unix:///tmp/ci/docker2.sock,tcp://h:2375,mi300", CONFIGURED)
    assert hosts == [
        CONFIGURED[1],
        HostConfig("docker2", "unix:///tmp/ci/docker2.sock", ("cpu",)),
        HostConfig("h:2375", "tcp://h:2375", ()),
    ]
    assert parse_hosts("all", CONFIGURED) == list(CONFIGURED)
    assert parse_hosts("builder,all", CONFIGURED) == [CONFIGURED[2], *CONFIGURED[:2]]


def test_a_url_host_never_takes_a_configured_or_chosen_name() -> None:
    hosts = parse_hosts("unix:///a/builder.sock,unix:///b/builder.sock", CONFIGURED)
    assert [host.name for host in hosts] == ["builder-2", "builder-3"]
    assert parse_hosts("ssh://me@box", ())[0].name == "box"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nosuch", "'nosuch' is neither a host of the config (gpu-a, mi300, builder)"),
        ("tpu=unix:///a.sock", "'tpu' is not a backend (cuda, rocm, cpu)"),
        ("ftp://h", "'ftp://h' is not an engine URL"),
        ("unix://", "'unix://' is not an engine URL"),
        ("mi300,,builder", "an empty item"),
        (" ", "name at least one host"),
        ("builder,cpu=unix:///var/run/docker.sock", "are one engine: unix:///var/run/docker.sock"),
    ],
)
def test_bad_hosts_are_usage_errors(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=r"^--hosts") as raised:
        parse_hosts(value, CONFIGURED)
    assert message in str(raised.value)


def test_all_without_configured_hosts_says_where_they_go() -> None:
    with pytest.raises(UsageError, match=r"the config names no hosts.*configs/warmer\.yaml"):
        parse_hosts("all", ())


# --- job-to-host matching ----------------------------------------------------------------


def test_jobs_go_to_hosts_of_their_backend_least_loaded_first() -> None:
    anyhost = HostConfig("any", "tcp://any:2375")
    hosts = [CONFIGURED[0], CONFIGURED[2], anyhost]  # cuda; cpu with 2 slots; any
    jobs = [job("c1"), job("g1", "cuda"), job("c2"), job("c3"), job("c4"), job("r1", "rocm")]
    queues = assign(jobs, hosts)
    names = {host: [j.name for j in queue] for host, queue in queues.items()}
    # cpu: builder (0/2) → any (0/1, builder now 1/2) → builder (1/2 vs 1/1) → tie 1.0: first
    assert names == {"gpu-a": ["g1"], "builder": ["c1", "c3", "c4"], "any": ["c2", "r1"]}


def test_a_job_no_host_takes_is_an_error_naming_every_such_job() -> None:
    jobs = [job("g1", "cuda"), job("c1"), job("r1", "rocm")]
    with pytest.raises(UsageError) as raised:
        assign(jobs, [CONFIGURED[2]])
    assert str(raised.value) == (
        "no host takes the backend of job(s) g1 (cuda), r1 (rocm); hosts: builder (cpu)"
    )


# --- the command, before or without any engine -------------------------------------------


def write_jobs(tmp_path: Path, *jobs: dict[str, Any]) -> Path:
    path = tmp_path / "jobs.yaml"
    entries = [
        {
            "name": "small",
            "image": IMAGE,
            "backend": "cpu",
            "engine": SMALL_MODEL,
            "warmup": SMALL_INPUTS,
            "timeout": "10m",
            **fields,
        }
        for fields in jobs
    ]
    path.write_text(yaml.safe_dump({"version": 1, "jobs": entries}))
    return path


def test_a_job_no_host_takes_exits_2_before_anything_starts(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, {"name": "g", "backend": "cuda"}, {"name": "c"})
    done = warmer("run", str(jobs), "--hosts", "cpu=tcp://127.0.0.1:9", tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "no host takes the backend of job(s) g (cuda)" in done.stderr
    assert not (tmp_path / "store").exists()


def test_hosts_do_not_mix_with_another_runtime(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, {})
    args = ("run", str(jobs), "--hosts", "tcp://127.0.0.1:9", "--runtime", "local")
    done = warmer(*args, tmp_path=tmp_path)
    assert done.returncode == 2 and "--runtime local does not apply" in done.stderr


def test_an_unreachable_host_fails_its_jobs_not_the_run(tmp_path: Path) -> None:
    """No engine at either URL: every job fails with the host's reason, the run exits 3 and
    still prints its JSON document (a reachable host's jobs would have run: see below)."""
    jobs = write_jobs(tmp_path, {"name": "a"}, {"name": "b"}, {"name": "c"})
    gone = tmp_path / "gone.sock"
    hosts = f"unix://{gone},tcp://127.0.0.1:9"
    done = warmer("run", str(jobs), "--hosts", hosts, "--json", tmp_path=tmp_path)
    assert done.returncode == 3, done.stderr
    document = json.loads(done.stdout)
    assert [(e["name"], e["host"], e["ok"]) for e in document["jobs"]] == [
        ("a", "gone", False),
        ("b", "127.0.0.1:9", False),
        ("c", "gone", False),
    ]
    assert all("no Docker engine answers at" in e["error"] for e in document["jobs"])
    assert [(h["name"], h["jobs"], h["failed"]) for h in document["hosts"]] == [
        ("gone", ["a", "c"], ["a", "c"]),
        ("127.0.0.1:9", ["b"], ["b"]),
    ]
    assert f"[a@gone] FAILED: not run: host gone: no Docker engine answers at unix://{gone}" in (
        done.stderr
    )
    with Store(tmp_path / "store") as store:
        assert store.list() == []


# --- two real engines ----------------------------------------------------------------------


@dataclass
class Engines:
    """The default engine and a second one, each with the CPU image."""

    first_url: str
    first: Any
    second_url: str
    second: Any
    pid_file: Path | None

    def containers(self, client: Any, *names: str) -> list[dict[str, Any]]:
        """Containers of these jobs, as the engine's list returns them (one call: the SDK's
        `containers.list` inspects each one after listing, and a container the run removes
        in between would make it raise)."""
        found = client.api.containers(all=True, filters={"label": "warmer.managed=1"})
        return [c for c in found if (c.get("Labels") or {}).get("warmer.job") in names]


def _client_with_image(url: str, what: str) -> Any:
    from docker.errors import ImageNotFound

    from warmer.runtimes.docker import DockerRuntime, engine_answers

    if not engine_answers(url):
        pytest.skip(f"no {what} reachable at {url} (run .ci/engine-up --second)")
    client = DockerRuntime(url).client
    try:
        client.images.get(IMAGE)
    except ImageNotFound:
        pytest.skip(f"image {IMAGE} is not on the {what} (run .ci/engine-up --second)")
    return client


@pytest.fixture(scope="module")
def engines() -> Engines:
    from warmer.runtimes.docker import default_docker_url

    second_url = os.environ.get("WARMER_SECOND_DOCKER_HOST")
    if not second_url:
        pytest.skip(
            "no second Docker engine: WARMER_SECOND_DOCKER_HOST is not set (source the "
            "docker2.env that .ci/engine-up --second writes)"
        )
    first_url = default_docker_url()
    first = _client_with_image(first_url, "Docker engine")
    second = _client_with_image(second_url, "second Docker engine")
    pid_file = os.environ.get("WARMER_SECOND_DOCKER_PIDFILE")
    return Engines(first_url, first, second_url, second, Path(pid_file) if pid_file else None)


def start_warmer(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """The real `warmer` command, in the background; its output goes to files (read them with
    `output`), so that a long run never blocks on a full pipe."""
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        return subprocess.Popen(
            [*WARMER, *args],
            stdout=stdout,
            stderr=stderr,
            text=True,
            env=warmer_environ(tmp_path, env),
            cwd=REPO,
        )


def output(tmp_path: Path) -> tuple[str, str]:
    return (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()


def wait_for(what: str, condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    """Poll `condition` until it holds; fail if the run ends first or takes too long."""
    deadline = time.monotonic() + RUN_LIMIT_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"warmer ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {RUN_LIMIT_S}s")
        time.sleep(0.2)


def running(engines: Engines, client: Any, name: str) -> bool:
    return any(c.get("State") == "running" for c in engines.containers(client, name))


@pytest.mark.docker
def test_two_jobs_run_at_once_one_per_engine_and_both_publish(
    engines: Engines, tmp_path: Path
) -> None:
    config = tmp_path / "warmer.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "hosts": [
                    {"name": "first", "url": engines.first_url, "backend": "cpu"},
                    {"name": "second", "url": engines.second_url},
                ],
            }
        )
    )
    jobs = write_jobs(tmp_path, {"name": "fan-a"}, {"name": "fan-b"})
    out = tmp_path / "dist"
    process = start_warmer(
        tmp_path,
        *("run", str(jobs), "--hosts", "all", "--out", str(out), "--json"),
        env={"WARMER_CONFIG": str(config)},
    )
    wait_for(
        "both warm-ups running at once",
        lambda: (
            running(engines, engines.first, "fan-a") and running(engines, engines.second, "fan-b")
        ),
        process,
    )
    assert process.wait(timeout=RUN_LIMIT_S) == 0, output(tmp_path)[1]
    stdout, stderr = output(tmp_path)
    document = json.loads(stdout)
    entries = {entry["name"]: entry for entry in document["jobs"]}
    assert {name: (e["ok"], e["host"]) for name, e in entries.items()} == {
        "fan-a": (True, "first"),
        "fan-b": (True, "second"),
    }
    assert [
        (h["name"], h["url"], h["jobs"], h["failed"], h["error"]) for h in document["hosts"]
    ] == [
        ("first", engines.first_url, ["fan-a"], [], None),
        ("second", engines.second_url, ["fan-b"], [], None),
    ]
    assert all(h["seconds"] > 0 for h in document["hosts"])
    bundles = sorted(path.name for path in out.iterdir())
    assert [name.split("__")[0] for name in bundles] == ["fan-a", "fan-b"]
    with Store(tmp_path / "store") as store:
        assert sorted(info.ref for info in store.list()) == sorted(
            e["ref"] for e in entries.values()
        )
    assert "[fan-a@first] warm-up" in stderr and "[fan-b@second] warm-up" in stderr
    assert engines.containers(engines.first, "fan-a", "fan-b") == []
    assert engines.containers(engines.second, "fan-a", "fan-b") == []


@pytest.fixture
def second_stopper(engines: Engines) -> Iterator[Callable[[], None]]:
    """`stop()` kills the second engine's dockerd (SIGKILL: a host that dies); afterwards the
    engine is started again with the same arguments (same data root: the image is still
    there) and its new pid recorded, so later tests and .ci/engine-down still find it."""
    if engines.pid_file is None or not engines.pid_file.is_file():
        pytest.skip("WARMER_SECOND_DOCKER_PIDFILE names no pid file: cannot stop the second engine")
    pid = int(engines.pid_file.read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    assert argv and Path(argv[0]).name == "dockerd", argv
    stopped = []

    def stop() -> None:
        os.kill(pid, signal.SIGKILL)
        stopped.append(True)

    yield stop
    if stopped:
        _restart_dockerd(argv, engines)


def _restart_dockerd(argv: list[str], engines: Engines) -> None:
    from warmer.runtimes.docker import engine_answers

    assert engines.pid_file is not None
    deadline = time.monotonic() + 60
    while engine_answers(engines.second_url):  # the killed one may take a moment to go
        assert time.monotonic() < deadline, "the killed dockerd still answers"
        time.sleep(0.2)
    own_pid_file = Path(argv[argv.index("--pidfile") + 1])
    own_pid_file.unlink(missing_ok=True)  # its pid may still be a zombie's: dockerd would refuse
    log = engines.pid_file.with_suffix(".log")
    with open(log, "a") as sink:
        # setsid -f: a session of its own, outliving this test run, as engine-up starts it
        subprocess.run(
            ["setsid", "-f", *argv], stdout=sink, stderr=sink, stdin=subprocess.DEVNULL, check=True
        )
    while not engine_answers(engines.second_url):
        assert time.monotonic() < deadline, f"the second dockerd did not come back; see {log}"
        time.sleep(0.5)
    engines.pid_file.write_text(own_pid_file.read_text().strip() + "\n")
    for container in engines.containers(engines.second, "fan-ok", "fan-dies"):
        engines.second.api.remove_container(container["Id"], force=True)


@pytest.mark.docker
def test_an_engine_stopped_mid_run_fails_its_job_and_the_other_publishes(
    engines: Engines, second_stopper: Callable[[], None], tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path,
        {"name": "fan-ok"},
        {
            "name": "fan-dies",
            "engine": {
                "kind": "command",
                "command": ["bash", "-c", "echo warming-up-on-two; sleep 300"],
            },
            "warmup": {},
        },
    )
    out = tmp_path / "dist"
    hosts = f"{engines.first_url},cpu={engines.second_url}"
    process = start_warmer(
        tmp_path, "run", str(jobs), "--hosts", hosts, "--out", str(out), "--json"
    )
    # a log line, not the agent's progress line that quotes the command
    streamed = re.compile(r"^\[fan-dies@\S+\] \| warming-up-on-two$", re.MULTILINE)
    wait_for(
        "the second engine's job streaming its log",
        lambda: bool(streamed.search(output(tmp_path)[1])),
        process,
    )
    assert running(engines, engines.second, "fan-dies")
    second_stopper()
    assert process.wait(timeout=RUN_LIMIT_S) == 3, output(tmp_path)[1]
    stdout, stderr = output(tmp_path)
    document = json.loads(stdout)
    ok, dead = document["jobs"]
    second = dead["host"]
    assert (ok["name"], ok["ok"], dead["name"], dead["ok"]) == ("fan-ok", True, "fan-dies", False)
    assert f"host {second}: stopped answering at {engines.second_url}" in dead["error"]
    assert f"[fan-dies@{second}] FAILED: host {second}: stopped answering" in stderr
    # the log tail is what was streamed before the engine went
    tail = stderr.split(f"[fan-dies@{second}] --- last lines of the log ---", 1)[1]
    assert "warming-up-on-two" in tail
    [first_host, second_host] = document["hosts"]
    assert (first_host["jobs"], first_host["failed"], first_host["error"]) == (["fan-ok"], [], None)
    assert (second_host["failed"], second_host["error"]) == (
        ["fan-dies"],
        f"stopped answering at {engines.second_url}",
    )
    assert [path.name.split("__")[0] for path in out.iterdir()] == ["fan-ok"]
    with Store(tmp_path / "store") as store:
        assert [info.ref for info in store.list()] == [ok["ref"]]
    assert engines.containers(engines.first, "fan-ok", "fan-dies") == []
