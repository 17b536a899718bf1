"""One way to report progress: `progress(kind, data)`, a kind of event and its details.

Whatever takes a while reports through a `Progress` callable, and the command line prints
every kind through one printer (`warmer.cli.output.ProgressPrinter`). A producer sends only
the kinds below; a consumer ignores the kinds it does not know.

- `start`, a job starts (fanout): `job`, `where` (runtime or engine URL), `image`, `engine`,
  `backend`
- `phase`, a job's step (runner): `job`, `phase`
- `line`, a warm-up's log line (runner): `job`, `line`
- `progress`, the agent's own progress (runner): `job`, `step`, `i` and `n` when it counts;
  a heartbeat of a step still running adds `elapsed_s`
- `files`, files handled (harvest, save, restore, push, pull): `files`, `bytes`;
  `files_total` and `bytes_total` when known
- `layer`, a registry layer uploaded, reused or fetched (push, pull): `detail`
- `tag`, a tag picked or passed over by `--auto` (pull): `detail`

`job` is the job's name, `NAME@HOST` in a fan-out over hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: progress(kind, data): see the module doc for the kinds and their data
Progress = Callable[[str, Mapping[str, Any]], None]


def silent(kind: str, data: Mapping[str, Any]) -> None:
    """A `Progress` that reports nothing."""
