"""Crashes and full disks: `warmer save`, `restore`, `import` and `pull` killed with SIGKILL at
seeded points, and run out of space on a small tmpfs.

Afterwards the store verifies, no final path holds a partly written file (what is left has
a hidden temp name that `gc` or the next run removes), and a rerun succeeds with the same
result. Kill points are file-system operations (Python's audit events for opens, renames,
removals and mkdirs under the test's directory), counted in a child process that kills
itself at the n-th: the same points every run, whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.bundles import make_manifest, opener
from helpers.registry import REGISTRY, needs_registry, synthetic

from warmer.bundle import verify_bundle, write_bundle
from warmer.store import Store

#: Runs `warmer ARGS`, killing itself with SIGKILL at the KILL_AT-th file-system operation
#: under PREFIX (0: never); prints how many there were on stderr when it ends normally.
DRIVER = """
import atexit, os, signal, sys
kill_at, prefix = int(sys.argv[1]), sys.argv[2]
events = {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod", "shutil.rmtree"}
seen = 0
def hook(event, args):
    global seen
    if event in events and args and str(args[0]).startswith(prefix):
        seen += 1
        if seen == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
atexit.register(lambda: print(f"WARMER-TEST-EVENTS {seen}", file=sys.stderr))
from warmer.cli import main
sys.argv = ["warmer", *sys.argv[3:]]
main()
"""
KILLS = 5


def warmer(
    *args: object, kill_at: int = 0, prefix: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", DRIVER, str(kill_at), str(prefix), *map(str, args)]
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )


def events_in(done: subprocess.CompletedProcess[str]) -> int:
    assert done.returncode == 0, done.stderr
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("WARMER-TEST-EVENTS ")][-1]
    return int(line.split()[1])


def killed(kill_at: int, *args: object, prefix: Path, env: dict[str, str] | None = None) -> None:
    """Run `warmer ARGS` to be killed at the kill_at-th operation (threads can make one
    operation fewer than counted before: then it ends normally, short of the point)."""
    done = warmer(*args, kill_at=kill_at, prefix=prefix, env=env)
    if done.returncode != -signal.SIGKILL:
        assert events_in(done) < kill_at, (kill_at, done.stderr)


def kill_points(total: int, seed: str) -> list[int]:
    """KILLS seeded points among `total` operations, the first and last among them."""
    chosen = random.Random(seed).sample(range(2, total), min(KILLS - 2, total - 2))
    return sorted({1, total, *chosen})


def store_verifies(store: Path, prefix: Path) -> None:
    done = warmer("verify", "--store", store, "--json", prefix=prefix)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True


def visible_files(root: Path) -> dict[str, bytes]:
    """Files under `root` at final names (no part of the path a hidden `.warmer-` temp)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part.startswith(".warmer-") for part in path.parts)
    }


def triton_like_cache(root: Path) -> Path:
    """Kernel directories of a few files each; one file large enough to be streamed."""
    generator = random.Random(11)
    for kernel in range(12):
        directory = root / f"{kernel:04x}"
        directory.mkdir(parents=True)
        (directory / "k.cubin").write_bytes(generator.randbytes(20_000 + kernel))
        (directory / "k.json").write_text(json.dumps({"name": f"k{kernel}"}))
    (root / "big" / "k.cubin").parent.mkdir()
    (root / "big" / "k.cubin").write_bytes(generator.randbytes(5 << 20))
    return root


def save_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `warmer save` that finds the Triton-like cache and nothing else."""
    return {
        "TRITON_CACHE_DIR": str(triton_like_cache(tmp_path / "cache")),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "no-inductor"),
        "VLLM_CACHE_ROOT": str(tmp_path / "no-vllm"),
        "HOME": str(tmp_path / "home"),
    }


def saved_once(tmp_path: Path) -> tuple[tuple[str, ...], dict[str, str], Path, int]:
    """(save arguments, environment, the bundle and the number of file-system operations of
    an uninterrupted save into a store of its own)."""
    env = save_env(tmp_path)
    save = ("save", "--kinds", "triton", "--name", "crash")
    reference = warmer(*save, "--store", tmp_path / "ref", "--out", tmp_path / "ref-out",
                       prefix=tmp_path, env=env)  # fmt: skip
    (bundle,) = (tmp_path / "ref-out").iterdir()
    return save, env, bundle, events_in(reference)


# -- kill -9 --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_save_killed_anywhere_leaves_a_verifying_store_and_a_rerun_succeeds(
    tmp_path: Path,
) -> None:
    save, env, expected, total = saved_once(tmp_path)
    store, out = tmp_path / "store", tmp_path / "out"
    for kill_at in kill_points(total, "save"):
        for leftover in (store, out):
            shutil.rmtree(leftover, ignore_errors=True)
        killed(kill_at, *save, "--store", store, "--out", out, prefix=tmp_path, env=env)
        store_verifies(store, tmp_path)
        for bundle in out.glob("[!.]*") if out.exists() else []:
            assert verify_bundle(bundle) == [], (kill_at, bundle)
        rerun = warmer(*save, "--store", store, "--out", out, prefix=tmp_path, env=env)
        assert rerun.returncode == 0, (kill_at, rerun.stderr)
        assert (out / expected.name).read_bytes() == expected.read_bytes()
        assert warmer("gc", "--store", store, prefix=tmp_path).returncode == 0
        assert [p for p in (store / "store-v1").rglob(".tmp-*")] == []


FILES = {
    "/c/A/x.cubin": b"new x " * 1000,
    "/c/A/deeper/y.json": b'{"y": 1}',
    "/c/B/sub/z.json": b'{"z": 1}',
    "/c/B/w.cubin": b"w" * 50_000,
    "/other/graph": b"graph bytes",
}


def partly_there(root: Path) -> dict[str, bytes]:
    """A target where c/A exists with an older x and a file of its own; B and other do not."""
    (root / "c/A").mkdir(parents=True)
    (root / "c/A/x.cubin").write_bytes(b"old x")
    (root / "c/A/keep").write_bytes(b"not in the bundle")
    return {"c/A/x.cubin": b"old x", "c/A/keep": b"not in the bundle"}


@pytest.mark.slow
def test_restore_killed_anywhere_leaves_whole_files_and_a_rerun_cleans_up(
    tmp_path: Path,
) -> None:
    bundle = write_bundle(make_manifest(FILES), opener(FILES), tmp_path / "b.tar.zst")
    restored = {path.lstrip("/"): data for path, data in FILES.items()}
    after = {**partly_there(tmp_path / "ref"), **restored}
    total = events_in(warmer("restore", bundle, "--root", tmp_path / "ref", prefix=tmp_path))
    assert visible_files(tmp_path / "ref") == after

    root = tmp_path / "root"
    for kill_at in kill_points(total, "restore"):
        shutil.rmtree(root, ignore_errors=True)
        old = partly_there(root)
        killed(kill_at, "restore", bundle, "--root", root, prefix=tmp_path)
        for name, data in visible_files(root).items():  # each file old or new, never part
            assert data in (old.get(name), restored.get(name)), (kill_at, name)
        rerun = warmer("restore", bundle, "--root", root, prefix=tmp_path)
        assert rerun.returncode == 0, (kill_at, rerun.stderr)
        assert visible_files(root) == after
        assert [p for p in root.rglob(".warmer-*")] == [], kill_at  # the killed run's staging


@pytest.mark.slow
def test_import_killed_anywhere_leaves_a_verifying_store_and_a_rerun_succeeds(
    tmp_path: Path,
) -> None:
    bundle = write_bundle(make_manifest(FILES), opener(FILES), tmp_path / "b.tar.zst")
    killed_and_rerun_into_a_store(tmp_path, "import", bundle, same=("ref", "snapshot", "files"))


def killed_and_rerun_into_a_store(tmp_path: Path, *command: object, same: tuple[str, ...]) -> None:
    """`warmer COMMAND --store S` killed at seeded points, each time into a fresh store: the
    store verifies, and a rerun reports what an uninterrupted run did (the `same` fields)."""
    reference = warmer(*command, "--store", tmp_path / "ref", "--json", prefix=tmp_path)
    expected = {key: json.loads(reference.stdout)[key] for key in same}
    store = tmp_path / "store"
    for kill_at in kill_points(events_in(reference), str(command[0])):
        shutil.rmtree(store, ignore_errors=True)
        killed(kill_at, *command, "--store", store, prefix=tmp_path)
        store_verifies(store, tmp_path)
        rerun = warmer(*command, "--store", store, "--json", prefix=tmp_path)
        assert rerun.returncode == 0, (kill_at, rerun.stderr)
        assert {key: json.loads(rerun.stdout)[key] for key in same} == expected, kill_at


# -- a full disk ---------------------------------------------------------------------------------


@dataclass
class SmallDisk:
    """A tmpfs of a few hundred KiB that a test fills, then grows to free space."""

    path: Path

    def resize(self, size: str) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True
        )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def refused_for_space(done: subprocess.CompletedProcess[str]) -> None:
    """Exit 1 (the machine's failure, not the input's) with a message, not a traceback."""
    assert done.returncode == 1, done.stderr
    assert "No space left on device" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_save_into_a_full_store_publishes_nothing_and_a_rerun_succeeds(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    save, env, expected, _events = saved_once(tmp_path)
    store, out = small_disk.path / "store", tmp_path / "out"
    refused_for_space(warmer(*save, "--store", store, "--out", out, prefix=tmp_path, env=env))
    assert not out.exists() or list(out.iterdir()) == []
    small_disk.resize("64m")  # space freed
    store_verifies(store, tmp_path)
    assert warmer(*save, "--store", store, "--out", out, prefix=tmp_path, env=env).returncode == 0
    assert (out / expected.name).read_bytes() == expected.read_bytes()


def test_a_bundle_onto_a_full_disk_leaves_no_partial_file(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    env = save_env(tmp_path)
    save = ("save", "--kinds", "triton", "--store", tmp_path / "store", "--out", small_disk.path)
    refused_for_space(warmer(*save, prefix=tmp_path, env=env))
    assert list(small_disk.path.iterdir()) == []
    store_verifies(tmp_path / "store", tmp_path)
    small_disk.resize("64m")
    assert warmer(*save, prefix=tmp_path, env=env).returncode == 0
    (bundle,) = small_disk.path.iterdir()
    assert verify_bundle(bundle) == []


def test_restore_onto_a_full_disk_leaves_the_target_as_it_was(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    files = {**FILES, "/c/B/large.cubin": random.Random(1).randbytes(1 << 20)}
    bundle = write_bundle(make_manifest(files), opener(files), tmp_path / "b.tar.zst")
    root = small_disk.path / "root"
    before = partly_there(root)
    done = warmer("restore", bundle, "--root", root, prefix=tmp_path)
    refused_for_space(done)
    assert f"cannot write under {root}" in done.stderr
    assert visible_files(root) == before and [p for p in root.rglob(".warmer-*")] == []
    small_disk.resize("64m")
    assert warmer("restore", bundle, "--root", root, prefix=tmp_path).returncode == 0
    assert visible_files(root) == {**before, **{p.lstrip("/"): d for p, d in files.items()}}


# -- pull from a registry ------------------------------------------------------------------------


def pushed(tmp_path: Path) -> str:
    """A reference in the test registry holding a snapshot of its own (about 1.5 MB)."""
    store = Store(tmp_path / "source")
    sizes = {f"/c/k{i:02d}/k.cubin": 100_000 + i for i in range(15)}
    ref = synthetic(store, "pulled", sizes, seed=uuid.uuid4().hex)
    reference = f"{REGISTRY}/crash/{uuid.uuid4().hex[:10]}:t"
    done = warmer("push", ref, reference, "--store", tmp_path / "source", prefix=tmp_path)
    assert done.returncode == 0, done.stderr
    return reference


@needs_registry
@pytest.mark.slow
def test_pull_killed_anywhere_leaves_a_verifying_store_and_a_rerun_succeeds(
    tmp_path: Path,
) -> None:
    killed_and_rerun_into_a_store(tmp_path, "pull", pushed(tmp_path), same=("ref", "files"))


@needs_registry
def test_pull_into_a_full_store_publishes_nothing_and_a_rerun_succeeds(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    reference = pushed(tmp_path)
    store = small_disk.path / "store"
    refused_for_space(warmer("pull", reference, "--store", store, prefix=tmp_path))
    small_disk.resize("64m")
    store_verifies(store, tmp_path)
    assert warmer("ls", "-q", "--store", store, prefix=tmp_path).stdout == ""
    done = warmer("pull", reference, "--store", store, "--json", prefix=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["files"] == 15
