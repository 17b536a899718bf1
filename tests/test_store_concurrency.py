"""Real processes against one store: concurrent writers, SIGKILL at any moment, gc vs writers."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest

from warmer.errors import StoreError
from warmer.store import FileEntry, Manifest, Store

REPO = Path(__file__).resolve().parents[1]

#: Saves snapshots in rounds of many objects (small ones whole, big ones streamed through a
#: temp file), committing each round; runs until killed unless ROUNDS is given.
WRITER = r"""
import io, os, random, sys
from pathlib import Path
from typing import IO
from warmer.store import FileEntry, Manifest, Store

root, name, scratch = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[5])
seed, rounds = int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
sizes = [rng.choice([0, 1, 100, 4096, 70_000]) for _ in range(60)] + [5 << 20]
shared = [rng.randbytes(size) for size in sizes]
round_number = 0
with Store(root) as store:
    print("ready", flush=True)
    while rounds == 0 or round_number < rounds:
        entries = []
        for index, size in enumerate(sizes):
            # Half the content is the same in every writer and round, half is new each round.
            data = shared[index] if index % 2 else os.urandom(size)
            path = f"/root/.triton/cache/R{round_number}/f{index}"
            if size > 1 << 20:
                digest, stored = store.put_stream(io.BytesIO(data), size)
            else:
                source = scratch / f"f{index}"
                source.write_bytes(data)
                digest, stored = store.put_file(source)
            entries.append(FileEntry(path, "triton", digest, stored, 0o644))
        env = {"torch": "2.13.0"}
        store.commit(Manifest(f"{name}-{round_number}", env, "tag", "blake3:00", tuple(entries)))
        print(f"committed {name}-{round_number}", flush=True)
        round_number += 1
"""

#: Streams stdin into the store: it blocks mid-object, so a kill leaves a half-written temp file.
STREAMER = r"""
import sys
from pathlib import Path
from typing import IO
from warmer.store import FileEntry, Manifest, Store

with Store(Path(sys.argv[1])) as store:
    store.put_stream(sys.stdin.buffer, int(sys.argv[2]))
"""

#: Writes objects, then waits for a line on stdin before committing them.
SLOW_COMMITTER = r"""
import sys
from pathlib import Path
from typing import IO
from warmer.store import FileEntry, Manifest, Store

with Store(Path(sys.argv[1])) as store:
    digest = store.put_bytes(b"not yet committed")
    print("written", flush=True)
    sys.stdin.readline()
    entry = FileEntry("/a", "other", digest, 17, 0o644)
    store.commit(Manifest("slow", {}, "tag", "blake3:00", (entry,)))
    print("committed", flush=True)
"""


def start(script: str, *args: object, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def assert_sound(root: Path) -> int:
    """Verify passes and every ref's files read back; returns the garbage count."""
    with Store(root) as store:
        report = store.verify()
        assert report.problems == []
        for info in store.list():
            _, manifest = store.resolve(info.ref, touch=False)
            assert all(store.objects.check(entry.digest) for entry in manifest.files)
        return report.garbage


def test_two_writers_at_once_corrupt_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    writers = []
    for name in ("alpha", "beta"):
        scratch = tmp_path / name
        scratch.mkdir()
        writers.append(start(WRITER, root, name, 7, 5, scratch))
    outputs = [writer.communicate(timeout=120)[0] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0]
    for name, output in zip(("alpha", "beta"), outputs, strict=True):
        assert output.splitlines()[-1] == f"committed {name}-4"
    assert assert_sound(root) == 0
    with Store(root) as store:
        assert sorted(info.name for info in store.list()) == [
            f"{name}-{n}" for name in ("alpha", "beta") for n in range(5)
        ]
        manifests = [store.resolve(info.ref, touch=False)[1] for info in store.list()]
        stored = [digest for _, digest in store.objects.iter_entries()]
    # The shared half, written by both processes in every round, is the same objects...
    alpha = {Path(e.path).name: e.digest for e in manifests[0].files}
    beta = {Path(e.path).name: e.digest for e in manifests[-1].files}
    assert all(alpha[f"f{index}"] == beta[f"f{index}"] for index in range(1, 60, 2))
    # ...stored once: one file per distinct digest, plus one per manifest.
    distinct = {entry.digest for manifest in manifests for entry in manifest.files}
    assert len(stored) == len(set(stored)) == len(distinct) + len(manifests)


def test_sigkill_at_any_moment_leaves_a_store_that_verifies(tmp_path: Path) -> None:
    root = tmp_path / "store"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    moments = random.Random(1234)
    garbage_seen = 0
    for attempt, delay in enumerate([None, 0.0, 0.05, 0.2, 0.45, 0.8, 1.3]):
        writer = start(WRITER, root, f"run{attempt}", attempt, 0, scratch)
        assert writer.stdout is not None
        if delay is None:  # while it starts: imports, layout, lock, index creation
            delay = moments.uniform(0.05, 0.2)
        else:
            assert writer.stdout.readline() == "ready\n"
        time.sleep(delay + moments.uniform(0, 0.05))
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=30)
        assert writer.returncode == -signal.SIGKILL
        garbage_seen += assert_sound(root)
    assert garbage_seen > 0  # the kills did land between writes and commits
    with Store(root) as store:
        committed = store.list()
        result = store.gc()
        assert result.objects_removed + result.temp_files_removed > 0
        report = store.verify()
        assert report.ok and report.garbage == 0
        assert [path for path, digest in store.objects.iter_entries() if digest is None] == []
        assert store.list() == committed


def test_sigkill_mid_object_leaves_a_temp_file_that_gc_removes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    streamer = start(STREAMER, root, 10 << 20, stdin=subprocess.PIPE)
    assert streamer.stdin is not None
    streamer.stdin.write("x" * (1 << 20))
    streamer.stdin.flush()
    objects = root / "store-v1" / "objects"
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size > 0 for p in objects.glob("*/.tmp-*")):
        assert time.monotonic() < deadline, "the streamer never started its object"
        time.sleep(0.01)
    streamer.send_signal(signal.SIGKILL)
    streamer.wait(timeout=30)
    with Store(root) as store:
        report = store.verify()
        assert report.ok and report.garbage == 1 and report.objects_checked == 0
        result = store.gc()
        assert result.temp_files_removed == 1 and result.bytes_freed >= 1 << 20
        assert list(store.objects.iter_entries()) == []


def test_gc_never_sweeps_what_another_process_has_not_committed_yet(tmp_path: Path) -> None:
    root = tmp_path / "store"
    writer = start(SLOW_COMMITTER, root, stdin=subprocess.PIPE)
    assert writer.stdin is not None and writer.stdout is not None
    assert writer.stdout.readline() == "written\n"
    with Store(root, lock_timeout=0.3) as store, pytest.raises(StoreError, match="in use"):
        store.gc()
    writer.stdin.write("go\n")
    writer.stdin.flush()
    assert writer.stdout.readline() == "committed\n"
    assert writer.wait(timeout=30) == 0
    with Store(root, lock_timeout=0.3) as store:
        assert store.gc().objects_removed == 0
        _, manifest = store.resolve("slow")
        with store.open_object(manifest.files[0].digest) as handle:
            assert handle.read() == b"not yet committed"


def test_threads_share_one_store_from_its_first_use(tmp_path: Path, triton_cache: Path) -> None:
    """As a harvest does: worker threads put files into a fresh Store, the caller commits."""
    sources = sorted(p for p in triton_cache.rglob("*") if p.is_file())
    with Store(tmp_path / "store") as store, ThreadPoolExecutor(8) as pool:
        stored = list(pool.map(store.put_file, sources))
        refs = list(pool.map(lambda n: store.commit(one_file_manifest(store, n)).ref, "abcdefgh"))
        entries = tuple(
            FileEntry(f"/cache/{p.relative_to(triton_cache)}", "triton", digest, size, 0o644)
            for p, (digest, size) in zip(sources, stored, strict=True)
        )
        store.commit(Manifest("harvest", {}, "tag", "blake3:00", entries))
        assert [info.ref for info in store.list()] == [
            *(f"{n}@tag" for n in "abcdefgh"),
            "harvest@tag",
        ]
        assert sorted(refs) == [f"{n}@tag" for n in "abcdefgh"]
        assert store.verify().problems == []


def one_file_manifest(store: Store, name: str) -> Manifest:
    entry = FileEntry("/a", "other", store.put_bytes(name.encode()), 1, 0o644)
    return Manifest(name, {}, "tag", "blake3:00", (entry,))


def _open_together(path: str, start: float) -> str:
    from warmer.sqlite import connect

    while time.time() < start:
        pass
    try:
        connect(Path(path)).execute("CREATE TABLE IF NOT EXISTS t (x)")
    except Exception as exc:  # reported, not raised: the parent asserts on every process
        return f"{type(exc).__name__}: {exc}"
    return ""


def test_processes_opening_a_new_index_together_all_get_in(tmp_path: Path) -> None:
    """SQLite refuses the WAL switch at once ("database is locked") when several processes
    create the file together; every one of them must still open it (it once failed in CI)."""
    import multiprocessing

    errors: list[str] = []
    with multiprocessing.get_context("fork").Pool(6) as pool:
        for attempt in range(12):
            path = str(tmp_path / f"index-{attempt}.sqlite")
            start = time.time() + 0.2
            errors += [e for e in pool.starmap(_open_together, [(path, start)] * 6) if e]
    assert errors == []


def warmer(*args: object, stdin: int | None = None) -> subprocess.Popen[str]:
    """The `warmer` command in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-c", "from warmer.cli import main; main()", *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def read_until(stream: IO[str], marker: str) -> str:
    """What `stream` printed up to `marker` (a prompt ends with no newline)."""
    seen = ""
    while marker not in seen:
        char = stream.read(1)
        assert char, f"ended before {marker!r}: {seen}"
        seen += char
    return seen


@pytest.mark.parametrize("change", ["pin", "commit", "rm"])
def test_what_changes_while_prune_asks_is_checked_again(tmp_path: Path, change: str) -> None:
    """`warmer prune` plans, then waits on its prompt holding only the shared lock. Another
    process pins a planned ref (or moves it, or removes one) meanwhile; the prune then
    deletes only what is still as planned: the pin is never lost."""
    root = tmp_path / "store"
    with Store(root) as store:
        for name in ("keep", "drop"):
            store.commit(one_file_manifest(store, name))
    prune = warmer("prune", "--max-size", "0", "--store", root, stdin=subprocess.PIPE)
    assert prune.stdin is not None and prune.stderr is not None
    assert "About to delete 2 snapshots" in read_until(prune.stderr, "Proceed? [y/N]: ")
    if change == "commit":
        with Store(root) as store:  # the ref moves to new content; the old becomes history
            store.commit(Manifest("keep", {}, "tag", "blake3:00", one_file_manifest(
                store, "new").files))  # fmt: skip
    else:
        other = warmer(change, "keep@tag", "--store", root, *(["-y"] if change == "rm" else []))
        assert other.wait(timeout=60) == 0, other.communicate()
    _out, err = prune.communicate("y\n", timeout=60)
    assert prune.returncode == 0, err
    expected = {"pin": [("keep@tag", True)], "commit": [("keep@tag", False)], "rm": []}
    with Store(root) as store:
        assert [(info.ref, info.pinned) for info in store.list()] == expected[change]
        assert store.verify().ok
    if change == "pin":
        assert "kept keep@tag" in err and "Deleted 1 snapshot(s)" in err
