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
from typing import IO, TYPE_CHECKING, BinaryIO, Literal, cast

from warmer.errors import BundleError, StoreError, UsageError
from warmer.files import atomic_file
from warmer.store.digests import Readable, VerifiedStream
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
_SUFFIXES: dict[Format, str] = {"zst": ".tar.zst", "gz": ".tar.gz", "tar": ".tar"}


def format_of_name(name: str) -> Format | None:
    """The format a bundle file name says by its suffix (`x.tar.gz`, `x.tgz`: gz), or None."""
    if name.endswith(".tgz"):
        return "gz"
    return next((fmt for fmt, suffix in _SUFFIXES.items() if name.endswith(suffix)), None)


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
            with stored_object(open_object, entry) as obj:
                tar.addfile(tar_member(member_name(entry.path), entry.size, entry.mode), obj)


@contextmanager
def stored_object(
    open_object: Callable[[str], BinaryIO], entry: FileEntry
) -> Iterator[VerifiedStream]:
    """A store object as an export or a push reads it: hashed while it streams, so a damaged
    object is refused (StoreError naming it) before the bundle or the push is published."""
    with open_object(entry.digest) as obj:
        stream = VerifiedStream(
            obj,
            entry.digest,
            entry.size,
            f"store object {entry.digest} ({entry.path})",
            StoreError,
            against="its name",
            hint="the store is damaged (warmer verify); importing a good bundle repairs it",
        )
        yield stream
        stream.finish()


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
    *,
    directory: bool | None = None,
) -> Path:
    """Write a bundle file atomically; `destination` is a directory (made when missing) where
    `directory` says so, or by default when it is one, else a file name."""
    if directory or (directory is None and destination.is_dir()):
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
def _decompressed_reader(path: Path) -> Iterator[tuple[IO[bytes], Callable[[], None]]]:
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
            yield decompressing(raw, "zst"), partial(_check_zstd_end, raw, path)
        elif magic.startswith(_GZIP_MAGIC):
            yield decompressing(raw, "gz"), lambda: None
        else:
            yield raw, lambda: None


def decompressing(raw: IO[bytes], fmt: Format) -> IO[bytes]:
    """The tar stream inside `raw` (a bundle's or a layer's), read in large chunks."""
    if fmt == "zst":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=_CHUNK)
        return io.BufferedReader(reader, buffer_size=_CHUNK)
    if fmt == "gz":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    return raw


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
    _tar: TarReader

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


class VerifiedReader(VerifiedStream):
    """Reads one file of a manifest (a bundle member, a store object) while hashing it;
    `finish()` checks size and blake3 against its entry (a BundleError naming both)."""

    def __init__(self, stream: Readable, entry: FileEntry, bundle: Path) -> None:
        super().__init__(
            stream,
            entry.digest,
            entry.size,
            f"{bundle}: {entry.path}",
            BundleError,
            against="the manifest",
        )
        self.entry = entry


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


class TarMember:
    """One member's bytes: reads stop at its end; a stream that ends early is a truncation."""

    def __init__(self, tar: TarReader, name: str, size: int) -> None:
        self._tar, self.name, self.size = tar, name, size
        self.remaining = size

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self._tar._read_exactly(size)
        self.remaining -= size
        return data


class TarReader:
    """A strict streaming reader of the tars warmer writes: POSIX (pax) headers, regular files.

    Every tar warmer reads is one it wrote, and may come from anyone: bundles, and the layers
    of a pull. tarfile's stream mode spent more time than decompressing and hashing together
    (it slices a 10 KiB buffer for every read); this reads each header and each member in one
    call. It refuses with a BundleError (exit 2), naming `source` and the member, whatever
    warmer never writes: links, devices, directories, fifos, GNU or global headers, bad
    checksums, unsafe names. `kind` names the tar in messages ("bundle", "layer");
    `check_end` runs once the stream has been read to its end (a compressed frame ended whole).
    """

    def __init__(
        self,
        stream: IO[bytes],
        source: str | Path,
        check_end: Callable[[], None] = lambda: None,
        *,
        kind: str = "bundle",
    ) -> None:
        self._stream, self._source, self._check_end = stream, source, check_end
        self._kind = kind
        self._current: TarMember | None = None

    def members(self) -> Iterator[TarMember]:
        """Each member in turn (read it or not before the next), then `finish()`."""
        while (member := self.next()) is not None:
            yield member
        self.finish()

    def finish(self) -> None:
        """After the end marker: read to the end of the stream, where only the tar's zero
        padding may be, and check that the compressed stream ended whole."""
        while chunk := self._read(_CHUNK):
            if chunk.strip(b"\0"):
                raise self._refused("data after the end of the tar: refused")
        self._check_end()

    def next(self) -> TarMember | None:
        """The next member (after skipping what is left of the current one), None at the end."""
        if self._current is not None:
            left = self._current.remaining + (-self._current.size % _BLOCK)
            while left:
                left -= len(self._read_exactly(min(left, _CHUNK)))
            self._current = None
        overrides: dict[str, str] = {}
        while True:
            block = self._read_exactly(_BLOCK)
            if not block.strip(b"\0"):
                return None
            kind, name, size = self._header(block)
            if kind != b"x":
                break
            if size > _MAX_PAX_HEADER:
                raise self._refused("an implausibly large pax header: refused")
            overrides = self._pax_records(self._read_exactly(size + (-size % _BLOCK))[:size])
        name = overrides.get("path", name)
        if "size" in overrides:
            size = self._number(overrides["size"].encode(), 10)
        if kind not in (b"0", b"\0"):
            what = _REFUSED_KINDS.get(kind, f"special file (tar type {kind!r})")
            raise self._refused(f"member {name!r} is a {what}: refused")
        self._current = TarMember(self, self._checked_name(name), size)
        return self._current

    def _refused(self, message: str) -> BundleError:
        return BundleError(f"{self._source}: {message}")

    def _header(self, block: bytes) -> tuple[bytes, str, int]:
        if block[257:263] != b"ustar\0":
            raise self._refused(f"not a warmer {self._kind} (a member header is not POSIX)")
        stored = self._number(block[148:156], 8)
        if stored != sum(block[:148]) + 8 * ord(" ") + sum(block[156:]):
            raise self._refused(f"corrupt {self._kind} (a header checksum is wrong)")
        name = block[:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0]
        full = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
        return block[156:157], full, self._number(block[124:136], 8)

    def _read_exactly(self, size: int) -> bytes:
        data = self._read(size)
        while len(data) < size and (more := self._read(size - len(data))):
            data += more
        if len(data) < size:
            raise self._refused(f"truncated {self._kind} (the tar ends early)")
        return data

    def _read(self, size: int) -> bytes:
        """Up to `size` bytes; what a decompressor raises for damage becomes a BundleError."""
        try:
            return self._stream.read(size)
        except (OSError, EOFError, zlib.error) as exc:  # gzip raises all three
            raise self._refused(f"corrupt or truncated {self._kind} ({exc})") from None
        except Exception as exc:  # zstandard raises its own error type
            if type(exc).__module__.startswith("zstandard"):
                raise self._refused(f"corrupt or truncated {self._kind} ({exc})") from None
            raise

    def _number(self, field: bytes, base: int) -> int:
        try:
            value = int(field.strip(b"\0 ") or b"0", base)
        except ValueError:
            raise self._refused(f"corrupt {self._kind} (a bad number in a header)") from None
        if value < 0:
            raise self._refused(f"corrupt {self._kind} (a negative number in a header)")
        return value

    def _pax_records(self, data: bytes) -> dict[str, str]:
        """`<length> <key>=<value>\\n` records (POSIX pax extended header)."""
        records: dict[str, str] = {}
        position = 0
        while position < len(data):
            length_text, _space, _rest = data[position : position + 20].partition(b" ")
            length = self._number(length_text, 10)
            record = data[position : position + length]
            key, equals, value = record[len(length_text) + 1 : -1].partition(b"=")
            if length <= len(length_text) + 1 or not equals or not record.endswith(b"\n"):
                raise self._refused(f"corrupt {self._kind} (a malformed pax header)")
            records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
            position += length
        return records

    def _checked_name(self, name: str) -> str:
        """`name`, refused unless it is a plain relative file name inside the tar."""
        if name.startswith("/") or "\\" in name or "\x00" in name:
            raise self._refused(f"member {name!r} has an absolute or unsafe name: refused")
        parts = name.split("/")
        if any(part in ("", ".", "..") for part in parts) or posixpath.normpath(name) != name:
            raise self._refused(f"member {name!r} escapes the target or is not normalised: refused")
        return name


@contextmanager
def open_bundle(path: Path) -> Iterator[BundleReader]:
    """Open a bundle for one streaming pass; the manifest is read and validated first."""
    path = Path(path)
    with _decompressed_reader(path) as (stream, check_end):
        tar = TarReader(stream, path, check_end)
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


def export_bundle(
    store: Store, ref: str, destination: Path, fmt: Format = "zst", *, directory: bool | None = None
) -> Path:
    """Write the snapshot `ref` of `store` as a bundle (a directory or a file name, see
    `write_bundle`); an unknown ref fails before anything is made."""
    _info, manifest = store.resolve(ref)
    return write_bundle(manifest, store.open_object, destination, fmt, directory=directory)


def import_bundle(store: Store, path: Path, expect: str | None = None) -> SnapshotInfo:
    """Add a bundle's files and snapshot to `store`, verifying every byte on the way;
    `expect`: the snapshot id it must have (one checked before, such as a signed one)."""
    with open_bundle(path) as bundle:
        if expect is not None and bundle.manifest.digest != expect:
            raise BundleError(f"{path}: its manifest changed while it was read")
        for entry, reader in bundle.files():
            digest, _size = store.put_stream(reader, entry.size, repair=True)  # type: ignore[arg-type]
            reader.finish()
            if digest != entry.digest:  # pragma: no cover - finish() raises first
                raise BundleError(f"{path}: {entry.path}: content does not match the manifest")
        return store.commit(bundle.manifest)
