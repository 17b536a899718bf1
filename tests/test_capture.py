"""Capture after readiness: a real torch.compile process compiles a new input shape after it
said `ready`; `warmer capture` beside it pushes what it wrote as a delta on the deployed
bundle (layers reused), and `warmer run --fold` puts it into the next bundle."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HELPERS
from helpers.registry import REGISTRY, needs_registry
from helpers.run import WARMER, WRITE_KERNEL, warmer, warmer_environ, write_job

from warmer.bundle import open_bundle
from warmer.caches import CacheRoot
from warmer.capture import Watcher
from warmer.oci import Reference
from warmer.registry import pull, push, tier_reference
from warmer.saving import save
from warmer.store import Store

LIMIT_S = 300


def test_a_batch_is_taken_only_once_nothing_changed_for_the_settle_time(tmp_path: Path) -> None:
    import threading

    root = tmp_path / "triton"
    (root / "OLD").mkdir(parents=True)
    (root / "OLD" / "k.cubin").write_text("old")
    watcher = Watcher([CacheRoot("triton", str(root))], interval_s=0.05, settle_s=0.5)
    writer_done = threading.Event()

    def write_burst() -> None:
        for i in range(5):  # a burst over ~0.4 s: one batch, not five
            (root / f"K{i}").mkdir()
            (root / f"K{i}" / "k.cubin").write_text(str(i))
            time.sleep(0.08)
        writer_done.set()

    threading.Thread(target=write_burst).start()
    batch = watcher.next_batch(threading.Event(), time.monotonic() + 30)
    assert writer_done.is_set()
    assert sorted(Path(p).parent.name for p in batch) == [f"K{i}" for i in range(5)]
    watcher.taken(batch)
    assert watcher.next_batch(threading.Event(), time.monotonic() + 0.3) == {}


def _wait_line(process: subprocess.Popen[str], wanted: str) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + LIMIT_S
    for line in process.stdout:
        if line.strip() == wanted:
            return
        assert time.monotonic() < deadline, f"no {wanted!r} in time"
    pytest.fail(f"the server ended (exit {process.wait()}) before {wanted!r}")


@needs_registry
def test_a_compile_after_readiness_lands_in_the_registry_and_the_next_bundle(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    inductor = tmp_path / "inductor"
    env = {"TORCHINDUCTOR_CACHE_DIR": str(inductor), "TRITON_CACHE_DIR": str(tmp_path / "t")}
    trigger = tmp_path / "trigger"
    server = subprocess.Popen(
        [sys.executable, str(HELPERS / "serve_compile.py"), str(trigger)],
        stdout=subprocess.PIPE,
        text=True,
        env=warmer_environ(tmp_path, env),
    )
    capture = None
    try:
        _wait_line(server, "ready")
        # the bundle this server was deployed with: what start-up compiled, pushed
        store = Store(tmp_path / "store")
        base = save(name="server", roots=[CacheRoot("inductor", str(inductor))], store=store,
                    out=None)  # fmt: skip
        prefix = f"{REGISTRY}/capture-{tmp_path.name.lower()}"
        target = tier_reference(prefix, "server", base.manifest.env_tag)
        push(store, base.snapshot.ref, target)
        store.close()
        capture = subprocess.Popen(
            [*WARMER, "capture", base.snapshot.ref, "--root", f"inductor={inductor}",
             "--push", "--registry", prefix, "--once", "--interval", "0.2", "--settle", "3",
             "--duration", "4m", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=warmer_environ(tmp_path),
        )  # fmt: skip
        assert capture.stderr is not None
        while "watching" not in (capture.stderr.readline() or "watching"):
            pass
        assert capture.poll() is None, capture.communicate()
        trigger.touch()
        _wait_line(server, "compiled-new-shape")
        stdout, stderr = capture.communicate(timeout=LIMIT_S)
        assert capture.returncode == 0, stderr
    finally:
        server.kill()
        server.wait()
        if capture is not None and capture.poll() is None:
            capture.kill()
    (captured,) = json.loads(stdout)["captures"]
    base_paths = {e.path for e in base.manifest.files}
    added = captured["added"]
    assert added and all(p.startswith(f"{inductor}/") for p in added)
    assert not set(added) & base_paths  # a new shape: new graphs and kernels, nothing rewritten
    assert captured["push"]["layers_reused"] >= 1  # the deployed bundle's layers, not re-sent
    # what a fresh replica pulls from the tag: the deployed files and the captured ones
    with Store(tmp_path / "fresh") as fresh:
        report = pull(fresh, Reference.parse(captured["push"]["reference"]))
        _info, pulled = fresh.resolve(report.ref)
        assert {e.path for e in pulled.files} == base_paths | set(added)
    # the next bundle of the job `server` carries the capture
    script = WRITE_KERNEL
    job = write_job(tmp_path, None, name="server", image=None, warmup={},
                    engine={"kind": "command", "command": ["bash", "-c", script]})  # fmt: skip
    done = warmer(
        "run", str(job), "--runtime", "local", "--fold", captured["ref"],
        "--out", str(tmp_path / "dist"), "--json", tmp_path=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stdout)["jobs"][0]
    with open_bundle(Path(entry["bundle"])) as bundle:
        paths = {e.path for e in bundle.manifest.files}
    assert set(added) <= paths and any(p.endswith("/KEY/k.cubin") for p in paths)
    assert f"folded {len(base_paths | set(added))} captured file(s)" in done.stderr
