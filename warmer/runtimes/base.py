"""What every runtime shares: the container spec, the outcome of a run, and the two protocols.

The runner builds a `ContainerSpec` from a job and talks to any runtime (docker, podman,
local) through `Runtime` and `Session` only. Stdlib only: importing this costs nothing.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

from warmer.errors import UsageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: Where the runner mounts the warmer package (read-only) inside every container.
AGENT_PACKAGE_TARGET = "/opt/warmer/warmer"

#: Labels the runtimes add to every container they create; `sweep` finds leftovers by them.
MANAGED_LABEL = "warmer.managed"
PID_LABEL = "warmer.pid"
HOST_LABEL = "warmer.host"

#: How many log lines a `RunOutcome.log_tail` keeps.
TAIL_LINES = 50
#: Seconds a stopped run gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 10

MASK = "***"


@dataclass(frozen=True)
class Mount:
    """A host path bound into the container (read-only unless asked otherwise)."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a runtime needs to start one run; built by the runner from a job.

    Secrets appear by name only: their values are read from this process's environment when
    the container starts and go nowhere else (not in argv, labels, logs or the spec).
    """

    image: str
    command: list[str]
    env: dict[str, str]
    secret_names: tuple[str, ...]
    mounts: tuple[Mount, ...]
    labels: dict[str, str]
    backend: str
    gpus: str | int | list[int]
    network: str = "none"
    user: str | None = None
    workdir: str | None = None
    shm_size: int | None = None


@dataclass
class RunOutcome:
    """How a run ended. A non-zero exit code is an outcome, not an error: the runner decides."""

    exit_code: int | None
    timed_out: bool
    seconds: float
    log_tail: str
    stdout_lines: list[str]


class Session(Protocol):
    """A started run whose files can still be read after it stopped."""

    def wait(self, deadline_s: float, on_line: Callable[[str], None]) -> RunOutcome:
        """Stream the output to `on_line` until the run ends or `deadline_s` passes."""
        ...

    def changed_paths(self) -> list[str]:
        """Absolute paths the run added or modified."""
        ...

    def read_tree(self, path: str) -> Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]:
        """Every member under `path`, named by its absolute path, with a reader for regular
        files (None otherwise); each reader is valid until the next member. A missing path
        yields nothing."""
        ...


class Runtime(Protocol):
    """Starts sessions; `start` removes what it created when its context exits."""

    name: str

    def start(
        self, spec: ContainerSpec, preload: Iterable[bytes] | None = None
    ) -> AbstractContextManager[Session]:
        """Start `spec`, with the uncompressed tar stream `preload` unpacked at / first."""
        ...

    def sweep(self) -> int:
        """Remove what crashed runs left behind; return how many things were removed."""
        ...


class ChunkStream(io.RawIOBase):
    """A read-only binary file over an iterable of byte chunks (an HTTP body, a tar stream).

    Lets `tarfile.open(fileobj=..., mode="r|")` read a stream without a temporary copy;
    chunks are sliced through a memoryview, so megabyte chunks are not copied per read.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._current:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._current = memoryview(chunk)
        target = memoryview(buffer).cast("B")
        size = min(len(target), len(self._current))
        target[:size] = self._current[:size]
        self._current = self._current[size:]
        return size


def open_chunks(chunks: Iterable[bytes]) -> BinaryIO:
    """A buffered binary reader over `chunks` (see `ChunkStream`)."""
    return io.BufferedReader(ChunkStream(chunks), buffer_size=1 << 20)


def read_secrets(names: Iterable[str], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The values of the secrets named by a spec, from the host environment."""
    missing = [name for name in names if name not in environ]
    if missing:
        raise UsageError(f"secret(s) not set in this environment: {', '.join(missing)}")
    return {name: environ[name] for name in names}


#: The shortest secret value (or line of a multi-line one) that is masked in logs and looked
#: for in harvested files: a shorter one would mask ordinary text everywhere (a secret `1`
#: would hide every 1 in the log) and match half the files.
MIN_SECRET_LENGTH = 4


def secret_pieces(value: str) -> list[str]:
    """What gives a secret value away: each line of it (output arrives line by line, so no
    line of output holds more than one), leaving out lines shorter than MIN_SECRET_LENGTH."""
    lines = dict.fromkeys(line.rstrip("\r") for line in value.split("\n"))
    return [line for line in lines if len(line) >= MIN_SECRET_LENGTH]


def masker(secret_values: Iterable[str]) -> Callable[[str], str]:
    """A function that replaces every secret value in a line by `***`; a multi-line value is
    masked line by line, since output arrives in lines. Longest first, so that a secret that
    contains another is masked whole."""
    values = sorted(
        {piece for value in secret_values for piece in secret_pieces(value)}, key=len, reverse=True
    )

    def mask(line: str) -> str:
        for value in values:
            line = line.replace(value, MASK)
        return line

    return mask
