"""Store builders: files put into a store, and manifests of them for a fixed env."""

from __future__ import annotations

from pathlib import Path

from warmer.store import FileEntry, Manifest, Store

ENV: dict[str, object] = {
    "torch": "2.13.0+cpu",
    "cuda": None,
    "triton": "3.9.0",
    "python": "3.11.7",
    "backend": "cpu",
}
TAG = "torch2.13.0-cpu-triton3.9.0"


def ingest_tree(store: Store, tree: Path, image_root: str, kind: str) -> list[FileEntry]:
    """Store every file under `tree` as if it lived at `image_root` in the image."""
    entries = []
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        digest, size = store.put_file(path)
        image_path = f"{image_root}/{path.relative_to(tree).as_posix()}"
        entries.append(FileEntry(image_path, kind, digest, size, path.stat().st_mode & 0o7777))
    return entries


def put_files(store: Store, files: dict[str, bytes], kind: str = "triton") -> list[FileEntry]:
    return [
        FileEntry(path, kind, store.put_bytes(data), len(data), 0o644)
        for path, data in files.items()
    ]


def manifest(name: str, files: list[FileEntry], tag: str = TAG) -> Manifest:
    return Manifest(name=name, env=ENV, env_tag=tag, env_digest="blake3:0123", files=tuple(files))
