"""A Triton cache snapshotted into a store and exported as a bundle."""

from __future__ import annotations

from pathlib import Path


def saved(cache: Path, tmp_path: Path) -> tuple[str, Path, Path]:
    """Snapshot `cache` into a store and export it as a bundle: (ref, store root, bundle)."""
    from warmer.bundle import write_bundle
    from warmer.store import Store
    from warmer.store.manifest import FileEntry, Manifest

    with Store(tmp_path / "store") as store:
        files = []
        for path in sorted(p for p in cache.rglob("*") if p.is_file()):
            digest, size = store.put_file(path)
            files.append(FileEntry(str(path), "triton", digest, size, 0o644))
        manifest = Manifest(
            name="kernels",
            env={"triton": "3.9.0"},
            env_tag="triton3.9.0",
            env_digest="blake3:0123456789abcdef",
            files=tuple(files),
        )
        info = store.commit(manifest)
        bundle = write_bundle(manifest, store.open_object, tmp_path / "kernels.tar.zst")
    return info.ref, tmp_path / "store", bundle
