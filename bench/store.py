"""Store and bundle throughput against tar + gzip, on a synthetic Triton-like cache tree.

    python bench/store.py [--size 1G] [--workdir DIR] [--refs 10000] [--rounds 3]

Prints, side by side from one run: save+export vs `tar -czf`, restore vs `tar -xzf` (and
`zstd -dc | tar -x` for scale; medians of --rounds rounds, every round printed), ingest
MB/s, stored bytes after two trees that share half their files (must equal the unique bytes),
and the median ref lookup over --refs refs. Nothing here is asserted: numbers are reported.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from warmer.bundle import write_bundle
from warmer.caches import CacheRoot
from warmer.envkey import EnvKey
from warmer.restoring import restore
from warmer.saving import save
from warmer.store import Store
from warmer.store.cas import digest_bytes
from warmer.store.manifest import FileEntry, Manifest
from warmer.units import format_size, parse_size

IR_SUFFIXES = (".source", ".ttir", ".ttgir", ".llir", ".ptx")


def kernel_key(rng: random.Random) -> str:
    return base64.b32encode(rng.randbytes(32)).decode().rstrip("=")[:52]


def binary(rng: random.Random, size: int) -> bytes:
    """Cubin-like bytes: part incompressible, part repetitive (real cubins compress ~2-3x)."""
    noise = rng.randbytes(size // 2)
    pattern = rng.randbytes(64) * (size // 128 + 1)
    return (noise + pattern)[:size]


def write_kernel(root: Path, rng: random.Random) -> int:
    """One Triton cache entry in the real layout; returns its bytes."""
    key, name = kernel_key(rng), f"kernel_{rng.randrange(10**6)}"
    entry = root / key
    entry.mkdir(parents=True)
    total = 0
    children = {}
    for suffix in IR_SUFFIXES:
        data = (f"// {name}{suffix}\n" + "x = y + z;\n" * rng.randrange(50, 400)).encode()
        (entry / f"{name}{suffix}").write_bytes(data)
        children[f"{name}{suffix}"] = str(entry / f"{name}{suffix}")
        total += len(data)
    cubin = binary(rng, rng.randrange(50_000, 500_000))
    (entry / f"{name}.cubin").write_bytes(cubin)
    meta = json.dumps({"name": name, "hash": key, "target": {"backend": "cuda", "arch": 90}})
    (entry / f"{name}.json").write_text(meta)
    children[f"{name}.cubin"] = str(entry / f"{name}.cubin")
    children[f"{name}.json"] = str(entry / f"{name}.json")
    (entry / f"__grp__{name}.json").write_text(json.dumps({"child_paths": children}))
    return total + len(cubin) + len(meta)


def build_tree(root: Path, size: int, seed: int) -> int:
    rng = random.Random(seed)
    total = 0
    while total < size:
        total += write_kernel(root, rng)
    return total


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Time one step; the disk's dirty pages are flushed first (not timed), so no step pays
    for the writeback of the one before it."""
    os.sync()
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def drop_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--refs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="restore rounds (median)")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="warmer-bench-", dir=args.workdir))
    try:
        run(work, size, args.refs, args.rounds)
    finally:
        drop_dir(work)


def run(work: Path, size: int, refs: int, rounds: int) -> None:
    tree = work / "cache"
    tree_bytes = build_tree(tree, size, seed=1)
    files = sum(1 for p in tree.rglob("*") if p.is_file())
    print(f"tree: {files} files, {format_size(tree_bytes)} (Triton layout, cubins 50-500 KB)")

    tar_c, _ = timed(
        subprocess.run,
        ["tar", "-czf", str(work / "t.tar.gz"), "-C", str(work), "cache"],
        check=True,
    )
    store = Store(work / "store")
    out = work / "out"
    out.mkdir()
    ingest_s, result = timed(
        save, name="bench", roots=[CacheRoot("triton", str(tree))], out=None, store=store
    )
    export_s, bundle = timed(write_bundle, result.manifest, store.open_object, out, "zst")
    save_export = ingest_s + export_s

    restore_s, tar_x, zstd_x = restore_rounds(work, bundle, files, rounds)

    rows = [
        ("export (zst) vs tar -czf", export_s, tar_c),
        ("save+export (zst) vs tar -czf", save_export, tar_c),
        (f"restore vs tar -xzf (median of {rounds})", restore_s, tar_x),
    ]
    print(f"\n{'measure':<34}{'warmer':>10}{'tar+gzip':>10}{'ratio':>8}")
    for label, ours, theirs in rows:
        print(f"{label:<34}{ours:>9.2f}s{theirs:>9.2f}s{ours / theirs:>8.2f}")
    if zstd_x is not None:
        print(
            f"{'  zstd -dc | tar -x (C, unverified)':<34}{zstd_x:>9.2f}s{tar_x:>9.2f}s"
            f"{zstd_x / tar_x:>8.2f}"
        )
    print(f"{'ingest throughput':<34}{tree_bytes / ingest_s / 1e6:>8.0f} MB/s")
    print(
        f"{'bundle size (zst) vs tar.gz':<34}{format_size(bundle.stat().st_size):>10}"
        f"{format_size((work / 't.tar.gz').stat().st_size):>10}"
    )

    # Dedup: a second tree sharing half the files of the first.
    second = work / "cache2"
    shutil.copytree(tree, second)
    rng = random.Random(2)
    entries = sorted(second.iterdir())
    for entry in entries[: len(entries) // 2]:
        drop_dir(entry)
        write_kernel(second, rng)
    before = objects_bytes(store)
    save(name="bench2", roots=[CacheRoot("triton", str(second))], out=None, store=store)
    unique: dict[str, int] = {}
    for root in (tree, second):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                unique[digest_bytes(data)] = len(data)
    manifests = sum(store.objects.path(info.snapshot).stat().st_size for info in store.list())
    content = objects_bytes(store) - manifests
    print(
        f"\n{'dedup: stored file bytes':<34}{content:>10}  unique bytes {sum(unique.values())}"
        f"  equal: {content == sum(unique.values())}"
        f"  (first tree alone {format_size(before)}, both trees {format_size(2 * tree_bytes)})"
    )

    lookup_ms = ref_lookup(work / "refs-store", refs)
    print(f"{'median ref lookup':<34}{lookup_ms:>8.3f} ms over {refs} refs")


def restore_rounds(
    work: Path, bundle: Path, files: int, rounds: int
) -> tuple[float, float, float | None]:
    """Median seconds of warmer restore, `tar -xzf` and (where zstd is installed) `zstd -dc |
    tar -x`, taken in rounds into fresh directories, the order rotating from round to round.

    Nothing is deleted until every round is done: this VM's ext4 has no journal, and there a
    file created within minutes of a mass deletion pays a scan past the deleted inodes, so a
    deletion between runs would slow whichever run comes next. Each written tree's page cache
    is dropped instead (untimed), so that memory pressure does not grow from round to round.
    """
    zstd = shutil.which("zstd")
    tar_zst = work / "t.tar.zst"
    if zstd:
        subprocess.run(
            ["tar", "-cf", str(tar_zst), "-I", "zstd -3", "-C", str(work), "cache"], check=True
        )

    def warmer(target: Path) -> None:
        report = restore(bundle, root=target)
        assert report.written == files

    def tar_xzf(target: Path) -> None:
        subprocess.run(["tar", "-xzf", str(work / "t.tar.gz"), "-C", str(target)], check=True)

    def zstd_tar(target: Path) -> None:
        command = f"{zstd} -dcq {tar_zst} | tar -x -C {target}"
        subprocess.run(command, shell=True, check=True)

    methods = {"warmer": warmer, "tar -xzf": tar_xzf, **({"zstd|tar": zstd_tar} if zstd else {})}
    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            target = work / f"x-{round_}-{name.split()[0].replace('|', '-')}"
            target.mkdir()
            seconds, _ = timed(methods[name], target)
            times[name].append(seconds)
            evict(target)
        shown = ", ".join(f"{name} {times[name][-1]:.2f}s" for name in names)
        print(f"  restore round {round_ + 1}: {shown}", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return medians["warmer"], medians["tar -xzf"], medians.get("zstd|tar")


def evict(tree: Path) -> None:
    """Write `tree` out and drop it from the page cache, keeping the files."""
    os.sync()
    for path in tree.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def objects_bytes(store: Store) -> int:
    return sum(p.stat().st_size for p in (store.root / "objects").rglob("*") if p.is_file())


def ref_lookup(root: Path, count: int) -> float:
    store = Store(root)
    env = EnvKey.probe()
    data = b"kernel"
    digest = store.put_bytes(data)
    for i in range(count):
        manifest = Manifest(
            name=f"job-{i}",
            env=env.to_dict(),
            env_tag=env.tag,
            env_digest=env.digest,
            files=(
                FileEntry(
                    path=f"/cache/{i}", kind="triton", digest=digest, size=len(data), mode=0o644
                ),
            ),
        )
        store.commit(manifest)
    rng = random.Random(3)
    samples = []
    for _ in range(1000):
        ref = f"job-{rng.randrange(count)}@{env.tag}"
        started = time.perf_counter()
        store.resolve(ref)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
