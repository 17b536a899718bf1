"""The snapshot manifest: which files, where in the image, with which content.

The same canonical JSON is a snapshot in the store and `warmer.json` in a bundle, so it is
validated as untrusted input: every field is checked and errors name the field.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from warmer.caches import KINDS
from warmer.errors import BundleError
from warmer.store.cas import digest_bytes, is_digest

#: Names and env tags end up in refs (`name@tag`) and bundle file names.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")
_CONTENT_ID_LENGTH = 12
_FILE_KINDS = frozenset((*KINDS, "other"))
#: A manifest is untrusted input that is parsed whole: these bound what parsing it may cost
#: (a 1 GB Triton cache holds about 30,000 files; an entry is about 250 bytes).
MAX_FILES = 250_000
MAX_MANIFEST_BYTES = 64 << 20
#: json.loads builds every value before any is checked. Each value but the first follows a
#: comma or opens with a bracket or brace, so counting those bytes bounds what it builds:
#: a file entry is one object and five fields; env, job, verify and key_factors get the rest.
VALUES_PER_FILE = 6
_OTHER_VALUES = 400_000
#: How deep env, job and verify may nest (a job spec is a few levels deep).
_MAX_DEPTH = 32


def bound_files(data: bytes, values_per_file: int = VALUES_PER_FILE) -> None:
    """Refuse JSON that lists more than MAX_FILES files of `values_per_file` values each,
    counted in its bytes before anything is built from them (a manifest, or a registry
    config that embeds one)."""
    values = data.count(b",") + data.count(b"[") + data.count(b"{")
    if values > values_per_file * MAX_FILES + _OTHER_VALUES:
        raise BundleError(
            f"files: about {values // values_per_file:,} entries, "
            f"more than the limit of {MAX_FILES:,}"
        )


def canonical_json(value: object) -> bytes:
    """The one byte form that digests are taken of: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_name(value: object, field: str) -> str:
    """A snapshot name or env tag: safe in a ref and in a file name."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise BundleError(
            f"{field}: {value!r} is not a valid name (letters, digits and . _ + = -; "
            "up to 128 characters, starting with a letter or digit)"
        )
    return value


def _check_path(path: object) -> str:
    if not isinstance(path, str):
        raise BundleError(f"path: must be a string, not {type(path).__name__}")
    if not path.startswith("/") or path.startswith("//") or path == "/":
        raise BundleError(f"path: {path!r} must be an absolute file path")
    if "\x00" in path or ".." in path.split("/") or posixpath.normpath(path) != path:
        raise BundleError(f"path: {path!r} must be normalised and contain no '..' parts")
    _check_text(path, "path")
    return path


def _check_text(value: str, field: str) -> None:
    """Refuse text that has no UTF-8 form (a lone surrogate, which JSON's \\u escapes allow):
    it could be neither written to a file name nor hashed as canonical JSON."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BundleError(f"{field}: {value!r} is not valid Unicode (a lone surrogate)") from None


def _check_json(value: object, field: str) -> None:
    """Every string (keys too) of a JSON value is valid Unicode, nested at most _MAX_DEPTH
    deep; iterative, so a hostile depth meets this limit rather than Python's stack."""
    pending: list[tuple[object, str, int]] = [(value, field, 0)]
    while pending:
        item, where, depth = pending.pop()
        if depth > _MAX_DEPTH:
            raise BundleError(f"{field}: nested deeper than {_MAX_DEPTH} levels (at {where})")
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise BundleError(f"{where}: must be an object with string keys")
                _check_text(key, f"{where} key")
                pending.append((child, f"{where}.{key}", depth + 1))
        elif isinstance(item, list):
            pending.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))


def _check_int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{field}: must be an integer, not {value!r}")
    return value


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot: absolute path in the image, cache kind, content digest."""

    path: str
    kind: str
    digest: str
    size: int
    mode: int

    def __post_init__(self) -> None:
        _check_path(self.path)
        if not isinstance(self.kind, str) or self.kind not in _FILE_KINDS:
            known = ", ".join(sorted(_FILE_KINDS))
            raise BundleError(f"kind: {self.kind!r} for {self.path} is not one of {known}")
        if not is_digest(self.digest):
            raise BundleError(f"digest: {self.digest!r} for {self.path} is not blake3:<64 hex>")
        if _check_int(self.size, "size") < 0:
            raise BundleError(f"size: {self.size} for {self.path} is negative")
        if not 0 <= _check_int(self.mode, "mode") <= 0o7777:
            raise BundleError(f"mode: {self.mode!r} for {self.path} is not a permission mode")
        # Restoring setuid/setgid/sticky bits from a bundle would be a privilege hazard.
        object.__setattr__(self, "mode", self.mode & 0o777)

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "kind": self.kind,
            "digest": self.digest,
            "size": self.size,
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> FileEntry:
        """Validate one entry of a manifest's `files` list."""
        if not isinstance(data, Mapping):
            raise BundleError(f"file entry must be an object, not {type(data).__name__}")
        fields = ("path", "kind", "digest", "size", "mode")
        missing = [name for name in fields if name not in data]
        extra = sorted(set(data) - set(fields))
        if missing or extra:
            where = data.get("path", "a file entry")
            problems = [f"missing {name}" for name in missing] + [f"unknown {k}" for k in extra]
            raise BundleError(f"{where}: {', '.join(problems)}")
        # The constructor checks every value's type and range.
        return cls(**{name: data[name] for name in fields})  # type: ignore[arg-type]


def _check_tree(files: tuple[FileEntry, ...]) -> None:
    """Refuse a path that is a file and also the directory of another: no tree holds both,
    and restoring it would fail half-way."""
    directories: dict[str, str] = {}  # every ancestor directory -> a file under it
    for entry in files:
        parent = entry.path.rpartition("/")[0]
        while parent and parent not in directories:
            directories[parent] = entry.path
            parent = parent.rpartition("/")[0]
    for entry in files:
        under = directories.get(entry.path)
        if under is not None:
            raise BundleError(
                f"files: {entry.path} is a file, and {under} needs it to be a directory"
            )


@dataclass(frozen=True)
class Manifest:
    """A snapshot: a named set of cache files for one environment, plus how it was made."""

    name: str
    env: dict[str, object]
    env_tag: str
    env_digest: str
    files: tuple[FileEntry, ...]
    job: dict[str, object] | None = None
    verify: dict[str, object] | None = None
    #: what each compiler keys on where the caches were made (`warmer.agent.probe.key_factors`);
    #: None in manifests written before warmer recorded them, and then left out of the bytes
    key_factors: dict[str, object] | None = None
    FORMAT: ClassVar[int] = 1

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        check_name(self.env_tag, "env_tag")
        if not isinstance(self.env_digest, str) or not self.env_digest:
            raise BundleError(f"env_digest: must be a non-empty string, not {self.env_digest!r}")
        _check_text(self.env_digest, "env_digest")
        sections = (
            ("env", self.env),
            ("job", self.job),
            ("verify", self.verify),
            ("key_factors", self.key_factors),
        )
        for field, value in sections:
            if value is None and field != "env":
                continue
            if not isinstance(value, dict):
                raise BundleError(f"{field}: must be an object with string keys")
            _check_json(value, field)
        files = tuple(sorted(self.files, key=lambda entry: entry.path))
        for entry in files:
            if not isinstance(entry, FileEntry):
                raise BundleError(f"files: {entry!r} is not a FileEntry")
        for before, after in itertools.pairwise(files):
            if before.path == after.path:
                raise BundleError(f"files: {before.path} is listed twice")
        _check_tree(files)
        object.__setattr__(self, "files", files)

    @functools.cached_property
    def content_id(self) -> str:
        """Short id of the files alone, so adding a verify result keeps the bundle name."""
        files = [entry.to_dict() for entry in self.files]
        return digest_bytes(canonical_json(files)).split(":", 1)[1][:_CONTENT_ID_LENGTH]

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.env_tag}"

    def to_dict(self) -> dict[str, object]:
        optional = {} if self.key_factors is None else {"key_factors": self.key_factors}
        return {
            **optional,
            "format": self.FORMAT,
            "name": self.name,
            "env": self.env,
            "env_tag": self.env_tag,
            "env_digest": self.env_digest,
            "job": self.job,
            "verify": self.verify,
            "files": [entry.to_dict() for entry in self.files],
            "content_id": self.content_id,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @functools.cached_property
    def digest(self) -> str:
        """The snapshot id: digest of the canonical bytes."""
        return digest_bytes(self.to_bytes())

    def with_verify(self, verify: dict[str, object]) -> Manifest:
        return dataclasses.replace(self, verify=verify)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse and validate a manifest from a store or a bundle; BundleError on anything wrong.

        Its size is bounded before it is parsed, so a hostile one costs at most that.
        """
        if len(data) > MAX_MANIFEST_BYTES:
            raise BundleError(
                f"manifest is {len(data):,} bytes, more than the limit of {MAX_MANIFEST_BYTES:,}"
            )
        bound_files(data)
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"manifest is not UTF-8 JSON: {exc}") from exc
        except RecursionError:
            raise BundleError("manifest is not JSON that can be read: nested too deep") from None
        return cls.from_document(document)

    @classmethod
    def from_document(cls, document: object) -> Manifest:
        """Validate a manifest already parsed from JSON (a registry config embeds one)."""
        if not isinstance(document, dict):
            raise BundleError("manifest must be a JSON object")
        version = document.get("format")
        if isinstance(version, bool) or version != cls.FORMAT:
            raise BundleError(
                f"format: {version!r} is not supported (this warmer reads {cls.FORMAT})"
            )
        expected = {"format", "name", "env", "env_tag", "env_digest", "job", "verify", "files"}
        expected.add("content_id")
        optional = {"key_factors"}
        missing = sorted(expected - set(document))
        extra = sorted(set(document) - expected - optional)
        if missing:
            raise BundleError(f"manifest lacks {', '.join(missing)}")
        if extra:
            raise BundleError(f"manifest has unknown field(s) {', '.join(extra)}")
        files = document["files"]
        if not isinstance(files, list):
            raise BundleError("files: must be a list")
        if len(files) > MAX_FILES:
            raise BundleError(
                f"files: {len(files):,} entries, more than the limit of {MAX_FILES:,}"
            )
        entries = []
        for position, entry in enumerate(files):
            try:
                entries.append(FileEntry.from_dict(entry))
            except BundleError as exc:
                raise BundleError(f"files[{position}]: {exc}") from exc
        manifest = cls(
            name=document["name"],
            env=document["env"],
            env_tag=document["env_tag"],
            env_digest=document["env_digest"],
            files=tuple(entries),
            job=document["job"],
            verify=document["verify"],
            key_factors=document.get("key_factors"),
        )
        if document["content_id"] != manifest.content_id:
            raise BundleError(
                f"content_id: {document['content_id']!r} does not match the files "
                f"({manifest.content_id})"
            )
        return manifest
