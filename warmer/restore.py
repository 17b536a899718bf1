"""Restore: install a bundle's caches where this machine's runtimes look for them.

All or nothing: every file is streamed into a temp file beside its destination and checked
against the manifest; only when the whole bundle has been read and verified are the temp
files renamed into place. A hostile or broken bundle therefore installs nothing, and nothing
is ever written outside the target root. Triton group files are re-pointed when files land
at another absolute path than the one recorded (`--root`, `--map`), so the caches still hit.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from warmer.bundle import VerifiedReader, open_bundle
from warmer.caches import is_triton_group, rewrite_group
from warmer.envkey import EnvKey, compare
from warmer.errors import BundleError, EnvMismatch, UsageError, WarmerError
from warmer.harvest import relocate
from warmer.store.cas import digest_file
from warmer.store.manifest import Manifest

#: progress(files_done, bytes_done, files_total, bytes_total)
RestoreProgress = Callable[[int, int, int, int], None]


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did (or, with dry_run, would do)."""

    bundle: str
    root: str
    name: str
    env_tag: str
    files: int
    bytes: int
    written: int
    bytes_written: int
    skipped_identical: int
    rewritten: int
    dry_run: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Staged:
    temp: str
    destination: str
    mode: int


def destination_of(path: str, root: str, mapping: Mapping[str, str]) -> str:
    """Where a file recorded at `path` lands: `root` + the relocated path, never outside root."""
    moved = relocate(path, mapping)
    if not moved.startswith("/") or posixpath.normpath(moved) != moved or "/../" in moved + "/":
        raise UsageError(f"--map turns {path} into {moved!r}, which is not a clean absolute path")
    base = os.path.abspath(root)
    destination = os.path.normpath(os.path.join(base, moved.lstrip("/")))
    if os.path.commonpath([base, destination]) != base:
        raise BundleError(f"{path} would land outside {base}: refused")
    return destination


def check_environment(manifest: Manifest, *, force: bool) -> list[str]:
    """Compare the bundle's env key with this machine's; refuse mismatches unless forced."""
    differences = compare(EnvKey.from_dict(manifest.env), EnvKey.probe())
    mismatches = [str(d) for d in differences if d.severity == "mismatch"]
    if mismatches and not force:
        raise EnvMismatch(mismatches)
    return [str(d) for d in differences]


def restore(
    path: str | Path,
    *,
    root: str | Path = "/",
    force: bool = False,
    dry_run: bool = False,
    mapping: Mapping[str, str] | None = None,
    check_env: bool = True,
    progress: RestoreProgress | None = None,
) -> RestoreReport:
    """Install the bundle at `path` under `root` (see the module docstring).

    Raises EnvMismatch (exit 4) when the bundle was made for another environment and `force`
    is false, BundleError (exit 2) for a corrupt or hostile bundle.
    """
    bundle_path = Path(path)
    mapping = dict(mapping or {})
    root_dir = os.path.abspath(root)
    if not dry_run and not os.path.isdir(root_dir):
        raise UsageError(f"--root {root_dir}: no such directory")
    staged: list[_Staged] = []
    created_dirs: list[str] = []
    written = bytes_written = skipped = rewritten = 0
    installed = False
    try:
        with open_bundle(bundle_path) as bundle:
            manifest = bundle.manifest
            warnings = check_environment(manifest, force=force) if check_env else []
            total_files, total_bytes, done_bytes = len(manifest.files), manifest.total_size, 0
            for index, (entry, reader) in enumerate(bundle.files(), start=1):
                destination = destination_of(entry.path, root_dir, mapping)
                group_dir = os.path.dirname(destination)
                if is_triton_group(entry.path):
                    original = reader.read_all()
                    data = rewrite_group(original, group_dir) or original
                    if data is not original:
                        rewritten += 1
                    identical = _same_bytes(destination, data)
                else:
                    identical = _same_file(destination, entry.size, entry.digest)
                    data = None
                if identical:
                    reader.finish()
                    skipped += 1
                elif dry_run:
                    reader.finish()
                    written += 1
                    bytes_written += entry.size
                else:
                    _stage(_Staged("", destination, entry.mode), data, reader, staged, created_dirs)
                    written += 1
                    bytes_written += entry.size if data is None else len(data)
                done_bytes += entry.size
                if progress:
                    progress(index, done_bytes, total_files, total_bytes)
        for item in staged:
            os.chmod(item.temp, item.mode)
            os.replace(item.temp, item.destination)
        installed = True
    except PermissionError as exc:
        raise WarmerError(f"cannot write under {root_dir}: {exc}") from None
    finally:
        if not installed:
            _discard(staged, created_dirs)
    return RestoreReport(
        bundle=str(bundle_path),
        root=root_dir,
        name=manifest.name,
        env_tag=manifest.env_tag,
        files=len(manifest.files),
        bytes=manifest.total_size,
        written=written,
        bytes_written=bytes_written,
        skipped_identical=skipped,
        rewritten=rewritten,
        dry_run=dry_run,
        warnings=warnings,
    )


def _same_file(path: str, size: int, digest: str) -> bool:
    try:
        if not os.path.isfile(path) or os.path.islink(path) or os.path.getsize(path) != size:
            return False
        return digest_file(Path(path))[0] == digest
    except OSError:
        return False


def _same_bytes(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as existing:
            return existing.read(len(data) + 1) == data
    except OSError:
        return False


def _stage(
    item: _Staged,
    data: bytes | None,
    reader: VerifiedReader,
    staged: list[_Staged],
    created_dirs: list[str],
) -> None:
    """Write one file to a temp name beside its destination; renamed only once all verified.

    The temp file is registered before a byte is written, so a failure anywhere removes it.
    """
    directory = os.path.dirname(item.destination)
    _makedirs(directory, created_dirs)
    if os.path.isdir(item.destination) and not os.path.islink(item.destination):
        raise BundleError(f"{item.destination} is a directory here: refused to replace it")
    fd, item.temp = tempfile.mkstemp(prefix=".warmer-", suffix=".tmp", dir=directory)
    staged.append(item)
    with os.fdopen(fd, "wb") as out:
        if data is not None:
            out.write(data)
        else:
            while chunk := reader.read(1 << 20):
                out.write(chunk)
            reader.finish()


def _makedirs(directory: str, created_dirs: list[str]) -> None:
    missing: list[str] = []
    current = directory
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for path in reversed(missing):
        os.mkdir(path, 0o755)
        created_dirs.append(path)


def _discard(staged: list[_Staged], created_dirs: list[str]) -> None:
    """Remove what a failed restore staged: temp files, then the directories it made."""
    for item in staged:
        Path(item.temp).unlink(missing_ok=True)
    for directory in reversed(created_dirs):
        with contextlib.suppress(OSError):
            os.rmdir(directory)
