"""The agent protocol: progress and report lines on stdout, and the facts the host needs.

Only lines that start with a prefix below belong to the protocol. The agent keeps stdout to
itself (`Channel.take_stdout`): everything else the process or its children print goes to
stderr, so a library's stray `print` can never split a protocol line.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from warmer.caches import Facts

#: Version of the report's shape (the report's `agent` field).
PROTOCOL_VERSION = 1
PROGRESS_PREFIX = "WARMER-PROGRESS "
REPORT_PREFIX = "WARMER-REPORT "
#: Seconds between heartbeats of a step that is still running (a compile can go quiet for
#: minutes; a CI log, or a runner that kills quiet jobs, sees that the job is alive).
HEARTBEAT_S = 30.0


class EngineError(Exception):
    """A warm-up failure whose message says it all (no traceback worth printing)."""


@dataclass
class Outcome:
    """What an engine measured. hits/misses are its compile-cache lookups, normalised."""

    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    import_s: float | None = None
    compile_s: float | None = None
    #: further timings an engine reports (say, loading Mega-Cache artifacts)
    extra_timings: dict[str, float] = field(default_factory=dict)
    #: caches the engine found but could not use, as it said why: {"path", "reason", "hint"}
    recompiled: list[dict[str, str]] = field(default_factory=list)


class Channel:
    """Where protocol lines go; one JSON document per line, flushed at once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()  # heartbeats come from another thread

    @classmethod
    def take_stdout(cls) -> Channel:
        """Keep the real stdout for the protocol and send fd 1 (ours and children's) to stderr."""
        sys.stdout.flush()
        protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
        return cls(protocol)

    def send(self, prefix: str, document: Mapping[str, Any]) -> None:
        line = prefix + json.dumps(document, sort_keys=True, default=str) + "\n"
        with self.lock:
            self.stream.write(line)
            self.stream.flush()


class Progress:
    """Announces each warm-up step on the channel, sends a heartbeat (`elapsed_s`) every
    `heartbeat` seconds while it runs, and records how long it took."""

    def __init__(self, channel: Channel, heartbeat: float = HEARTBEAT_S) -> None:
        self.channel, self.heartbeat = channel, heartbeat
        self.total = 0
        self.steps: list[dict[str, Any]] = []

    def expect(self, total: int) -> None:
        """How many steps the engine plans, so that progress reads `i of n`."""
        self.total = total

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        index = len(self.steps) + 1
        announce = {"step": name, "i": index, "n": self.total}
        self.channel.send(PROGRESS_PREFIX, announce)
        started = time.perf_counter()
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.heartbeat):
                elapsed = round(time.perf_counter() - started, 1)
                self.channel.send(PROGRESS_PREFIX, {**announce, "elapsed_s": elapsed})

        beating = threading.Thread(target=beat, name="warmer-heartbeat", daemon=True)
        beating.start()
        try:
            yield
        finally:
            done.set()
            beating.join()
            self.steps.append({"name": name, "seconds": round(time.perf_counter() - started, 3)})


def facts() -> dict[str, Any]:
    """What decides where caches land in this process (read back by `Facts.from_report`)."""
    here = Facts.of_this_process()
    return {
        "home": here.home,
        "tmpdir": here.tmpdir,
        "user": here.user,
        "cwd": os.getcwd(),
        "environ": dict(here.environ),
    }


def parse_line(line: str) -> tuple[str, dict[str, Any]] | None:
    """("progress" | "report", document) for a protocol line; None for any other line."""
    for kind, prefix in (("progress", PROGRESS_PREFIX), ("report", REPORT_PREFIX)):
        if line.startswith(prefix):
            try:
                document = json.loads(line[len(prefix) :])
            except ValueError:
                return None
            return (kind, document) if isinstance(document, dict) else None
    return None
