"""Bundles: one tarball holding `warmer.json` first, then the cache files at their image paths.

A bundle is deterministic (same content, same bytes): members are sorted, owners and times
are fixed, and zstd's multi-threaded output does not depend on the thread count. Reading is
a single streaming pass that refuses anything hostile or broken (absolute or `..` names,
links, devices, unexpected or missing members, wrong sizes or hashes) as it meets it, so a
caller that stages files until the end of the stream never installs a byte from a bad bundle.
"""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Literal, Protocol, cast

from warmer.errors import BundleError, UsageError
from warmer.files import atomic_file
from warmer.store.manifest import MAX_MANIFEST_BYTES, FileEntry, Manifest

if TYPE_CHECKING:
    from warmer.store import SnapshotInfo, Store

Format = Literal["zst", "gz", "tar"]

MANIFEST_NAME = "warmer.json"
#: Fixed member time (2020-01-01T00:00:00Z): same content, same bytes.
MEMBER_MTIME = 1577836800
_CHUNK = 1 << 20
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_SUFFIXES: dict[str, str] = {"zst": ".tar.zst", "gz": ".tar.gz", "tar": ".tar"}


def bundle_name(manifest: Manifest, fmt: Format = "zst") -> str:
    """`<job name>__<env tag>__<content id>.tar.zst`: readable and unique per content."""
    return f"{manifest.name}__{manifest.env_tag}__{manifest.content_id}{_SUFFIXES[fmt]}"


def member_name(path: str) -> str:
    """The tar member name of a file recorded at absolute `path` (relative, so ADD / works)."""
    return path.lstrip("/")


def write_tar(
    manifest: Manifest,
    open_object: Callable[[str], BinaryIO],
    out: IO[bytes],
    *,
    include_manifest: bool = True,
) -> None:
    """Write the uncompressed bundle tar of `manifest` to `out` (a stream).

    Without the manifest it is the plain file tree that a container preload unpacks at `/`.
    """
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if include_manifest:
            data = manifest.to_bytes()
            tar.addfile(tar_member(MANIFEST_NAME, len(data), 0o644), io.BytesIO(data))
        for entry in manifest.files:
            with open_object(entry.digest) as obj:
                tar.addfile(tar_member(member_name(entry.path), entry.size, entry.mode), obj)


def tar_member(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, MEMBER_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_bundle(
    manifest: Manifest,
    open_object: Callable[[str], BinaryIO],
    destination: Path,
    fmt: Format = "zst",
) -> Path:
    """Write a bundle file atomically; `destination` is a directory or a file name."""
    if destination.is_dir():
        destination = destination / bundle_name(manifest, fmt)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(destination, durable=True) as raw, compressed_writer(raw, fmt) as stream:
        write_tar(manifest, open_object, stream)
    return destination


@contextmanager
def compressed_writer(raw: IO[bytes], fmt: Format) -> Iterator[IO[bytes]]:
    if fmt == "zst":
        import zstandard

        compressor = zstandard.ZstdCompressor(level=3, threads=-1, write_checksum=True)
        with compressor.stream_writer(raw, closefd=False) as writer:
            yield writer
    elif fmt == "gz":
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            yield cast(IO[bytes], gz)
    elif fmt == "tar":
        yield raw
    else:
        raise UsageError(f"unknown bundle format {fmt!r}: use zst or gz")


@contextmanager
def _decompressed_reader(path: Path) -> Iterator[tuple[BinaryIO, Callable[[], None]]]:
    """The tar stream of a bundle file, and a check to run once it has been read to its end:
    that the compressed stream ended whole (gzip checks its own CRC and length at the end)."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise UsageError(f"{path}: no such bundle") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a bundle") from None
    with raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_ZSTD_MAGIC):
            import zstandard

            with zstandard.ZstdDecompressor().stream_reader(raw, read_size=_CHUNK) as reader:
                yield (
                    io.BufferedReader(reader, buffer_size=_CHUNK),
                    partial(_check_zstd_end, raw, path),
                )
        elif magic.startswith(_GZIP_MAGIC):
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield cast(BinaryIO, gz), lambda: None
        else:
            yield raw, lambda: None


def _check_zstd_end(raw: BinaryIO, path: Path) -> None:
    """Refuse a zstd frame cut short or followed by anything: the decompressor ends quietly
    at a truncated frame, so its block headers are walked here (a seek and 3 bytes each)."""
    import zstandard

    raw.seek(0)
    head = raw.read(18)  # the longest frame header
    try:
        position = zstandard.frame_header_size(head)
        has_checksum = zstandard.get_frame_parameters(head).has_checksum
    except zstandard.ZstdError as exc:
        raise BundleError(f"{path}: corrupt bundle (zstd frame header: {exc})") from None
    last = False
    while not last:
        raw.seek(position)
        header = raw.read(3)
        if len(header) < 3:
            raise BundleError(f"{path}: truncated bundle (the zstd frame ends early)")
        value = int.from_bytes(header, "little")
        last, kind, size = bool(value & 1), (value >> 1) & 3, value >> 3
        position += 3 + (1 if kind == 1 else size)  # an RLE block holds one byte
    end = position + (4 if has_checksum else 0)
    size = os.fstat(raw.fileno()).st_size
    if end > size:
        raise BundleError(f"{path}: truncated bundle (the zstd frame ends early)")
    if end < size:
        raise BundleError(f"{path}: {size - end} bytes after the end of the zstd frame: refused")


@dataclass
class BundleReader:
    """A bundle opened for one streaming pass: `manifest`, then `files()` once."""

    path: Path
    manifest: Manifest
    _tar: _TarReader

    def files(self) -> Iterator[tuple[FileEntry, VerifiedReader]]:
        """Each manifest entry with a reader of its member; the reader checks size and hash.

        The caller must read each reader to its end before moving on (a stream); its
        `finish()` raises BundleError when the bytes do not match the manifest.
        """
        expected = iter(self.manifest.files)
        while (member := self._tar.next()) is not None:
            entry = next(expected, None)
            if entry is None or member.name != member_name(entry.path):
                raise BundleError(
                    f"{self.path}: member {member.name!r} is not the next file in the manifest"
                    + (f" (expected {member_name(entry.path)!r})" if entry else "")
                )
            if member.size != entry.size:
                raise BundleError(
                    f"{self.path}: {entry.path}: size {member.size} in the tar, "
                    f"{entry.size} in the manifest"
                )
            reader = VerifiedReader(member, entry, self.path)
            yield entry, reader
            reader.finish()
        missing = next(expected, None)
        if missing is not None:
            raise BundleError(
                f"{self.path}: truncated: {missing.path} (and maybe more) listed in the manifest "
                "but missing from the tar"
            )
        self._tar.finish()


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class VerifiedReader(io.RawIOBase):
    """Reads one member while hashing it; `finish()` checks size and blake3."""

    def __init__(self, stream: _Readable, entry: FileEntry, bundle: Path) -> None:
        import blake3

        self._stream, self.entry, self._bundle = stream, entry, bundle
        self._hasher = blake3.blake3()
        self._seen = 0
        self._finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._take(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read_all(self) -> bytes:
        """The whole member, verified: one read and one hash update (not 8 KiB at a time)."""
        data = self._take(self.entry.size - self._seen) if self._seen < self.entry.size else b""
        self.finish()
        return data

    def _take(self, size: int) -> bytes:
        try:
            data = self._stream.read(size)
        except BundleError:
            raise
        except Exception as exc:  # gzip's EOFError, zstandard's errors, OSError
            raise BundleError(
                f"{self._bundle}: {self.entry.path}: corrupt or truncated bundle ({exc})"
            ) from None
        self._hasher.update(data)
        self._seen += len(data)
        return data

    def finish(self) -> None:
        """Drain what is left and raise BundleError when the bytes differ from the manifest."""
        if self._finished:
            return
        while self._take(_CHUNK):
            pass
        self._finished = True
        digest = "blake3:" + self._hasher.hexdigest()
        if self._seen != self.entry.size:
            raise BundleError(f"{self._bundle}: {self.entry.path}: truncated member")
        if digest != self.entry.digest:
            raise BundleError(
                f"{self._bundle}: {self.entry.path}: content does not match the manifest "
                f"(blake3 {digest[7:19]}…, expected {self.entry.digest[7:19]}…)"
            )


_BLOCK = 512
_MAX_PAX_HEADER = 1 << 20
#: Tar type flags a bundle never holds, by what they are.
_REFUSED_KINDS = {
    b"1": "hard link",
    b"2": "symlink",
    b"3": "device",
    b"4": "device",
    b"5": "directory",
    b"6": "fifo",
}


class _Member:
    """One member's bytes: reads stop at its end; a stream that ends early is a truncation."""

    def __init__(self, stream: IO[bytes], name: str, size: int, bundle: Path) -> None:
        self._stream, self.name, self.size, self._bundle = stream, name, size, bundle
        self.remaining = size

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = _read_exactly(self._stream, size, self._bundle)
        self.remaining -= size
        return data


class _TarReader:
    """A strict streaming reader of the tars warmer writes: POSIX (pax) headers, regular files.

    tarfile's stream mode spent more time than decompressing and hashing together (it slices
    a 10 KiB buffer for every read); this reads each header and each member in one call. It
    refuses, naming the member, whatever a bundle never holds: links, devices, directories,
    fifos, GNU or global headers, bad checksums, unsafe names.
    """

    def __init__(self, stream: IO[bytes], bundle: Path, check_end: Callable[[], None]) -> None:
        self._stream, self._bundle, self._check_end = stream, bundle, check_end
        self._current: _Member | None = None

    def finish(self) -> None:
        """After the end marker: read to the end of the stream, where only the tar's zero
        padding may be, and check that the compressed stream ended whole."""
        while chunk := _read(self._stream, _CHUNK, self._bundle):
            if chunk.strip(b"\0"):
                raise BundleError(f"{self._bundle}: data after the end of the tar: refused")
        self._check_end()

    def next(self) -> _Member | None:
        """The next member (after skipping what is left of the current one), None at the end."""
        if self._current is not None:
            left = self._current.remaining + (-self._current.size % _BLOCK)
            while left:
                left -= len(_read_exactly(self._stream, min(left, _CHUNK), self._bundle))
            self._current = None
        overrides: dict[str, str] = {}
        while True:
            block = _read_exactly(self._stream, _BLOCK, self._bundle)
            if not block.strip(b"\0"):
                return None
            kind, name, size = self._header(block)
            if kind != b"x":
                break
            if size > _MAX_PAX_HEADER:
                raise BundleError(f"{self._bundle}: an implausibly large pax header: refused")
            overrides = _pax_records(
                _read_exactly(self._stream, size + (-size % _BLOCK), self._bundle)[:size],
                self._bundle,
            )
        name = overrides.get("path", name)
        if "size" in overrides:
            size = _octal_or_decimal(overrides["size"].encode(), 10, self._bundle)
        if kind not in (b"0", b"\0"):
            what = _REFUSED_KINDS.get(kind, f"special file (tar type {kind!r})")
            raise BundleError(f"{self._bundle}: member {name!r} is a {what}: refused")
        self._current = _Member(self._stream, _checked_name(name, self._bundle), size, self._bundle)
        return self._current

    def _header(self, block: bytes) -> tuple[bytes, str, int]:
        if block[257:263] != b"ustar\0":
            raise BundleError(f"{self._bundle}: not a warmer bundle (a member header is not POSIX)")
        stored = _octal_or_decimal(block[148:156], 8, self._bundle)
        if stored != sum(block[:148]) + 8 * ord(" ") + sum(block[156:]):
            raise BundleError(f"{self._bundle}: corrupt bundle (a header checksum is wrong)")
        name = block[:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0]
        full = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
        return block[156:157], full, _octal_or_decimal(block[124:136], 8, self._bundle)


def _read_exactly(stream: IO[bytes], size: int, bundle: Path) -> bytes:
    data = _read(stream, size, bundle)
    while len(data) < size and (more := _read(stream, size - len(data), bundle)):
        data += more
    if len(data) < size:
        raise BundleError(f"{bundle}: truncated bundle (the tar ends early)")
    return data


def _read(stream: IO[bytes], size: int, bundle: Path) -> bytes:
    """Up to `size` bytes; what a decompressor raises for damage becomes a BundleError."""
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as exc:  # gzip raises all three
        raise BundleError(f"{bundle}: corrupt or truncated bundle ({exc})") from None
    except Exception as exc:  # zstandard raises its own error type
        if type(exc).__module__.startswith("zstandard"):
            raise BundleError(f"{bundle}: corrupt or truncated bundle ({exc})") from None
        raise


def _octal_or_decimal(field: bytes, base: int, bundle: Path) -> int:
    try:
        value = int(field.strip(b"\0 ") or b"0", base)
    except ValueError:
        raise BundleError(f"{bundle}: corrupt bundle (a bad number in a header)") from None
    if value < 0:
        raise BundleError(f"{bundle}: corrupt bundle (a negative number in a header)")
    return value


def _pax_records(data: bytes, bundle: Path) -> dict[str, str]:
    """`<length> <key>=<value>\\n` records (POSIX pax extended header)."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        length_text, _space, _rest = data[position : position + 20].partition(b" ")
        length = _octal_or_decimal(length_text, 10, bundle)
        record = data[position : position + length]
        key, equals, value = record[len(length_text) + 1 : -1].partition(b"=")
        if length <= len(length_text) + 1 or not equals or not record.endswith(b"\n"):
            raise BundleError(f"{bundle}: corrupt bundle (a malformed pax header)")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def _checked_name(name: str, bundle: Path) -> str:
    """`name`, refused unless it is a plain relative file name inside the bundle."""
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise BundleError(f"{bundle}: member {name!r} has an absolute or unsafe name: refused")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts) or posixpath.normpath(name) != name:
        raise BundleError(
            f"{bundle}: member {name!r} escapes the target or is not normalised: refused"
        )
    return name


@contextmanager
def open_bundle(path: Path) -> Iterator[BundleReader]:
    """Open a bundle for one streaming pass; the manifest is read and validated first."""
    path = Path(path)
    with _decompressed_reader(path) as (stream, check_end):
        tar = _TarReader(stream, path, check_end)
        try:
            first = tar.next()
        except BundleError as exc:  # text, an empty file, another archive format
            detail = str(exc).removeprefix(f"{path}: ")
            raise BundleError(f"{path}: not a warmer bundle ({detail})") from None
        if first is None or first.name != MANIFEST_NAME:
            raise BundleError(f"{path}: not a warmer bundle ({MANIFEST_NAME} must come first)")
        if first.size > MAX_MANIFEST_BYTES:
            raise BundleError(
                f"{path}: {MANIFEST_NAME} is {first.size:,} bytes, "
                f"more than the limit of {MAX_MANIFEST_BYTES:,}"
            )
        try:
            manifest = Manifest.from_bytes(first.read())
        except BundleError as exc:
            raise BundleError(f"{path}: {MANIFEST_NAME}: {exc}") from None
        yield BundleReader(path, manifest, tar)


def read_manifest(path: Path) -> Manifest:
    """Only the manifest of a bundle (cheap: the first member)."""
    with open_bundle(path) as bundle:
        return bundle.manifest


def read_bundle(path: Path) -> tuple[Manifest, Iterator[tuple[FileEntry, BinaryIO]]]:
    """The manifest and a verified stream of its files (a generator that owns the file)."""
    manifest = read_manifest(path)

    def files() -> Iterator[tuple[FileEntry, BinaryIO]]:
        with open_bundle(path) as bundle:
            yield from bundle.files()  # type: ignore[misc]

    return manifest, files()


def verify_bundle(path: Path) -> list[str]:
    """Every problem found by reading the whole bundle (empty when it is intact)."""
    try:
        with open_bundle(path) as bundle:
            for _entry, reader in bundle.files():
                reader.finish()
    except BundleError as exc:
        return [str(exc)]
    return []


def export_bundle(store: Store, ref: str, destination: Path, fmt: Format = "zst") -> Path:
    """Write the snapshot `ref` of `store` as a bundle (a directory or a file name)."""
    _info, manifest = store.resolve(ref)
    return write_bundle(manifest, store.open_object, destination, fmt)


def import_bundle(store: Store, path: Path) -> SnapshotInfo:
    """Add a bundle's files and snapshot to `store`, verifying every byte on the way."""
    with open_bundle(path) as bundle:
        for entry, reader in bundle.files():
            digest, _size = store.put_stream(reader, entry.size)  # type: ignore[arg-type]
            reader.finish()
            if digest != entry.digest:  # pragma: no cover - finish() raises first
                raise BundleError(f"{path}: {entry.path}: content does not match the manifest")
        return store.commit(bundle.manifest)
