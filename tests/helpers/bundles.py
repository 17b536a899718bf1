"""Bundle builders: a small manifest, an object opener, and tars written by hand."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from warmer.bundle import MANIFEST_NAME
from warmer.envkey import EnvKey
from warmer.store.cas import digest_bytes
from warmer.store.manifest import FileEntry, Manifest

FILES = {
    "/root/.triton/cache/KEY/add_kernel.cubin": b"\x7fELF" + bytes(range(256)) * 40,
    "/root/.triton/cache/KEY/add_kernel.json": b'{"name": "add_kernel"}',
    "/tmp/torchinductor_root/fxgraph/ab/graph": b"graph bytes",
}


def make_manifest(files: dict[str, bytes] = FILES, *, env: EnvKey | None = None) -> Manifest:
    env = env or EnvKey.probe()
    entries = tuple(
        FileEntry(
            path=path,
            kind="triton" if "triton" in path else "inductor",
            digest=digest_bytes(data),
            size=len(data),
            mode=0o644,
        )
        for path, data in sorted(files.items())
    )
    return Manifest(
        name="unit", env=env.to_dict(), env_tag=env.tag, env_digest=env.digest, files=entries
    )


def opener(files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    by_digest = {digest_bytes(data): data for data in files.values()}
    return lambda digest: io.BytesIO(by_digest[digest])


def raw_tar(
    path: Path,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    *,
    fmt: int = tarfile.PAX_FORMAT,
    global_headers: dict[str, str] | None = None,
) -> Path:
    """Write a tar by hand, for bundles that warmer itself would never write."""
    with tarfile.open(path, "w", format=fmt, pax_headers=global_headers) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, data: bytes = b"", **attrs: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data if info.isreg() else None


def manifest_member(manifest: Manifest) -> tuple[tarfile.TarInfo, bytes | None]:
    return member(MANIFEST_NAME, manifest.to_bytes())
