"""The docker runtime against a real engine and the CPU image (images/cpu/build).

Docker at $DOCKER_HOST or the default socket; Podman too when a service answers at
$WARMER_PODMAN_SOCKET (or its default sockets). Every test labels its containers with a run id
of its own and checks that none is left afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine
from docker import errors as docker_errors

from warmer.errors import UsageError
from warmer.runtimes.base import (
    HOST_LABEL,
    MANAGED_LABEL,
    PID_LABEL,
    STOP_GRACE_S,
    ContainerSpec,
    Mount,
    RunOutcome,
)

pytestmark = pytest.mark.docker
TRITON = "/root/.triton/cache"


def shell_spec(engine: Engine, run_id: str, script: str, **changes: Any) -> ContainerSpec:
    fields: dict[str, Any] = {
        "image": engine.image,
        "command": ["bash", "-c", script],
        "env": {},
        "secret_names": (),
        "mounts": (),
        "labels": {"warmer.job": "runtime-test", "warmer.run": run_id},
        "backend": "cpu",
        "gpus": "all",
    }
    fields.update(changes)
    return ContainerSpec(**fields)


def run(
    engine: Engine, spec: ContainerSpec, deadline_s: float = 60
) -> tuple[RunOutcome, list[str]]:
    seen: list[str] = []
    with engine.runtime.start(spec) as session:
        outcome = session.wait(deadline_s, seen.append)
    return outcome, seen


def test_stdout_lines_come_back_and_a_failure_is_an_outcome(engine: Engine, run_id: str) -> None:
    script = "echo one; echo to-stderr >&2; printf 'two\\nthree'; exit 3"
    outcome, seen = run(engine, shell_spec(engine, run_id, script))
    assert outcome.exit_code == 3
    assert not outcome.timed_out
    assert outcome.stdout_lines == ["one", "two", "three"]
    assert sorted(seen) == ["one", "three", "to-stderr", "two"]
    assert "to-stderr" in outcome.log_tail.splitlines()
    assert not engine.containers(run_id)


def test_an_image_entrypoint_does_not_wrap_the_command(engine: Engine, run_id: str) -> None:
    base = engine.client.containers.create(engine.image, ["true"], network_mode="none")
    try:
        image = base.commit(
            repository="warmer-test-entrypoint",
            tag=run_id,
            changes=['ENTRYPOINT ["echo", "wrapped:"]'],
        )
    finally:
        base.remove(force=True)
    try:
        spec = shell_spec(engine, run_id, "echo plain", image=image.id)
        outcome, _ = run(engine, spec)
    finally:
        engine.client.images.remove(image.id, force=True)
    assert outcome.stdout_lines == ["plain"]


def test_log_tail_keeps_the_last_fifty_lines(engine: Engine, run_id: str) -> None:
    outcome, _ = run(engine, shell_spec(engine, run_id, "seq 1 120"))
    assert outcome.exit_code == 0
    assert outcome.log_tail.splitlines() == [str(i) for i in range(71, 121)]
    assert len(outcome.stdout_lines) == 120


def test_deadline_stops_the_container_and_it_is_removed(engine: Engine, run_id: str) -> None:
    spec = shell_spec(engine, run_id, "echo started; sleep 600")
    with engine.runtime.start(spec) as session:
        outcome = session.wait(1.0, lambda line: None)
        assert len(engine.containers(run_id)) == 1  # stopped, still there for the harvest
    assert outcome.timed_out
    assert outcome.exit_code is None
    assert outcome.seconds < 1.0 + STOP_GRACE_S + 20  # stopped, not left to sleep 600 s
    assert outcome.stdout_lines == ["started"]
    assert not engine.containers(run_id)


def test_container_is_removed_when_the_caller_fails(engine: Engine, run_id: str) -> None:
    spec = shell_spec(engine, run_id, "sleep 600")
    with pytest.raises(RuntimeError, match="harvest broke"), engine.runtime.start(spec):
        assert len(engine.containers(run_id)) == 1
        raise RuntimeError("harvest broke")
    assert not engine.containers(run_id)


def test_secret_reaches_the_container_but_not_argv_labels_or_logs(
    engine: Engine, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"hf_{uuid.uuid4().hex}"
    monkeypatch.setenv("WARMER_TEST_TOKEN", secret)
    script = (
        "echo token=$WARMER_TEST_TOKEN; "
        "python3 -c 'import hashlib, os; "
        'print(hashlib.sha256(os.environ["WARMER_TEST_TOKEN"].encode()).hexdigest())\''
    )
    spec = shell_spec(engine, run_id, script, secret_names=("WARMER_TEST_TOKEN",))
    seen: list[str] = []
    with engine.runtime.start(spec) as session:
        outcome = session.wait(60, seen.append)
        (container,) = engine.containers(run_id)
        attrs = container.attrs
    assert outcome.exit_code == 0
    assert outcome.stdout_lines == ["token=***", hashlib.sha256(secret.encode()).hexdigest()]
    assert secret not in outcome.log_tail and "token=***" in outcome.log_tail
    assert all(secret not in line for line in seen)
    exposed = [
        attrs.get("Args"),
        attrs.get("Path"),
        attrs["Config"]["Cmd"],
        attrs["Config"]["Labels"],
    ]
    assert secret not in repr(exposed)


def test_a_run_that_writes_nothing_changes_nothing(engine: Engine, run_id: str) -> None:
    with engine.runtime.start(shell_spec(engine, run_id, "true")) as session:
        assert session.wait(60, lambda line: None).exit_code == 0
        assert session.changed_paths() == []


def test_read_tree_streams_files_with_absolute_names(
    engine: Engine, run_id: str, tmp_path: Path
) -> None:
    script = (
        f"mkdir -p {TRITON}/KEYA {TRITON}/KEYB/sub && "
        f"printf 'kernel-a' > {TRITON}/KEYA/a.cubin && "
        f"head -c 3000000 /dev/urandom > {TRITON}/KEYB/sub/big.bin && "
        f"sha256sum {TRITON}/KEYB/sub/big.bin"
    )
    mount = Mount(str(tmp_path), "/opt/warmer-test/data")  # a mount point is no change
    spec = shell_spec(engine, run_id, script, mounts=(mount,))
    with engine.runtime.start(spec) as session:
        outcome = session.wait(60, lambda line: None)
        files = {}
        directories = []
        for info, reader in session.read_tree(TRITON + "/"):
            if reader is None:
                directories.append(info.name)
            else:
                files[info.name] = reader.read()
        changed = session.changed_paths()
        missing = list(session.read_tree("/root/.cache/no-such-dir"))
    assert outcome.exit_code == 0
    big_digest = outcome.stdout_lines[-1].split()[0]
    assert set(files) == {f"{TRITON}/KEYA/a.cubin", f"{TRITON}/KEYB/sub/big.bin"}
    assert files[f"{TRITON}/KEYA/a.cubin"] == b"kernel-a"
    assert hashlib.sha256(files[f"{TRITON}/KEYB/sub/big.bin"]).hexdigest() == big_digest
    assert TRITON in directories and f"{TRITON}/KEYB/sub" in directories
    assert {f"{TRITON}/KEYA/a.cubin", f"{TRITON}/KEYB/sub/big.bin"} <= set(changed)
    assert not any(path.startswith(("/usr/sbin", "/run/podman-init", "/opt")) for path in changed)
    assert missing == []


def test_preload_puts_files_into_a_fresh_container(engine: Engine, run_id: str) -> None:
    payload = os.urandom(100_000)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, mode in (
            ("root/.triton/cache/KEY/k.hsaco", payload, 0o644),
            ("tmp/torchinductor_root/fxgraph/x/entry", b"graph", 0o600),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))
    script = (
        f"sha256sum {TRITON}/KEY/k.hsaco | cut -d' ' -f1; "
        "cat /tmp/torchinductor_root/fxgraph/x/entry; echo; "
        "stat -c %a /tmp/torchinductor_root/fxgraph/x/entry"
    )
    with engine.runtime.start(shell_spec(engine, run_id, script), preload=chunks) as session:
        outcome = session.wait(60, lambda line: None)
    assert outcome.exit_code == 0
    assert outcome.stdout_lines == [hashlib.sha256(payload).hexdigest(), "graph", "600"]


def test_missing_image_is_a_usage_error_naming_it(engine: Engine, run_id: str) -> None:
    spec = shell_spec(engine, run_id, "true", image="warmer-no-such-image:0")
    with (
        pytest.raises(UsageError, match=r"warmer-no-such-image:0 .*pull"),
        engine.runtime.start(spec),
    ):
        pass


def test_sweep_removes_containers_of_dead_runs_only(engine: Engine, run_id: str) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    base = {MANAGED_LABEL: "1", HOST_LABEL: socket.gethostname(), "warmer.run": run_id}
    dead = engine.client.containers.create(
        engine.image, ["true"], labels={**base, PID_LABEL: str(finished.pid)}, network_mode="none"
    )
    alive = engine.client.containers.create(
        engine.image, ["true"], labels={**base, PID_LABEL: str(os.getpid())}, network_mode="none"
    )
    try:
        assert engine.runtime.sweep() >= 1
        assert [c.id for c in engine.containers(run_id)] == [alive.id]
    finally:
        for container in (dead, alive):
            with contextlib.suppress(docker_errors.NotFound):
                container.remove(force=True)
