"""Push and pull through a real OCI registry, and what a second, mostly shared push sends.

    python bench/registry.py [--registry 127.0.0.1:5055] [--size 1G] [--share 0.9] [--image]

Needs a registry (`.ci/registry-up` starts Debian's docker-registry on 127.0.0.1:5055; the
default is $WARMER_TEST_REGISTRY). Prints, side by side from one run: push and pull throughput
of a ~1 GB Triton-like snapshot, then the bytes sent by a second push of a snapshot that keeps
`--share` of the first one's kernel entries and replaces the rest, against the first push and
against pushing the second bundle as one blob (what a tarball-as-artifact push sends).
Nothing is asserted: numbers are reported.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from store import build_tree, drop_dir, write_kernel  # bench/store.py

from warmer.bundle import write_bundle
from warmer.caches import CacheRoot
from warmer.oci import Reference, Registry
from warmer.registry import pull, push
from warmer.saving import save
from warmer.store import Store
from warmer.units import format_size, parse_size


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    os.sync()
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def replace_entries(tree: Path, share: float, seed: int) -> int:
    """Drop (1 - share) of the kernel entries and write as many bytes of new ones."""
    rng = random.Random(seed)
    entries = sorted(p for p in tree.iterdir() if p.is_dir())
    dropped = rng.sample(entries, round(len(entries) * (1 - share)))
    gone = sum(f.stat().st_size for d in dropped for f in d.iterdir())
    for entry in dropped:
        shutil.rmtree(entry)
    added = 0
    while added < gone:
        added += write_kernel(tree, rng)
    return len(dropped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--registry", default=os.environ.get("WARMER_TEST_REGISTRY", "127.0.0.1:5055")
    )
    parser.add_argument("--size", default="1G")
    parser.add_argument("--share", type=float, default=0.9)
    parser.add_argument("--image", action="store_true", help="Also time the image form (gzip).")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="warmer-bench-registry-", dir=args.workdir))
    try:
        run(work, args.registry, parse_size(args.size), args.share, args.image)
    finally:
        drop_dir(work)


def run(work: Path, registry: str, size: int, share: float, image: bool) -> None:
    repo = Reference.parse(f"{registry}/bench/{uuid.uuid4().hex[:8]}")
    tree = work / "cache"
    tree_bytes = build_tree(tree, size, seed=1)
    files = sum(1 for p in tree.rglob("*") if p.is_file())
    print(f"snapshot: {files} files, {format_size(tree_bytes)} (Triton layout) -> {repo}")
    store = Store(work / "store")
    roots = [CacheRoot("triton", str(tree))]
    first = save(name="bench", roots=roots, out=None, store=store).snapshot.ref

    push_s, one = timed(push, store, first, repo.with_tag("one"))
    pull_s, pulled = timed(pull, Store(work / "pulled"), repo.with_tag("one"))
    rows = [
        ("push (artifact, zstd layers)", push_s, one.bytes, one.bytes_sent),
        ("pull into an empty store", pull_s, pulled.bytes, pulled.bytes_received),
    ]
    if image:
        image_s, as_image = timed(push, store, first, repo.with_tag("image"), form="image")
        rows.append(
            ("push (image form, gzip layers)", image_s, as_image.bytes, as_image.bytes_sent)
        )
    print(f"\n{'measure':<34}{'time':>9}{'files':>11}{'sent/recv':>11}{'MB/s':>8}")
    for label, seconds, content, wire in rows:
        print(
            f"{label:<34}{seconds:>8.1f}s{format_size(content):>11}{format_size(wire):>11}"
            f"{content / seconds / 1e6:>8.0f}"
        )

    replaced = replace_entries(tree, share, seed=2)
    second = save(name="bench", roots=roots, out=None, store=store)
    again_s, two = timed(push, store, second.snapshot.ref, repo.with_tag("two"))
    bundle = write_bundle(second.manifest, store.open_object, work / "two.tar.zst")
    whole = Registry(repo)
    blob_s, _ = timed(_upload_file, whole, bundle)
    print(
        f"\nsecond push: {replaced} kernel entries of the first replaced "
        f"(shares {share:.0%} of its entries), base {two.base}"
    )
    print(f"{'measure':<44}{'sent':>11}{'time':>9}{'of 1st':>8}")
    for label, sent, seconds in (
        ("first push", one.bytes_sent, push_s),
        ("second push (warmer, base layers reused)", two.bytes_sent, again_s),
        ("second push as one bundle blob", whole.bytes_sent, blob_s),
    ):
        print(f"{label:<44}{format_size(sent):>11}{seconds:>8.1f}s{sent / one.bytes_sent:>8.2f}")
    print(f"layers: first {one.layers}, second {two.layers} ({two.layers_reused} reused)")


def _upload_file(registry: Registry, path: Path) -> None:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
        registry.upload_blob(handle, "sha256:" + digest.hexdigest(), path.stat().st_size)


if __name__ == "__main__":
    main()
