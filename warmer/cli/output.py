"""Output for people (stderr, rich) and for scripts (one JSON document on stdout)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from warmer.cli.options import App
from warmer.units import format_duration, format_size

#: Messages, progress and logs: stderr, markup off so user strings print as they are.
console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
#: Data for people (tables, `-q` ids): stdout, so that commands compose.
data_console = Console(markup=False, highlight=False, width=None if sys.stdout.isatty() else 4096)


#: Set in the command's `click` context once it printed its JSON document (a failure after it
#: adds no second one); per invocation, so that commands invoked in one process stay apart.
_JSON_EMITTED = "warmer.json_emitted"


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout and nothing else (indented only for a terminal:
    indenting switches Python to its slow pure-Python encoder)."""
    context = click.get_current_context(silent=True)
    if context is not None:
        context.meta[_JSON_EMITTED] = True
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(document, indent=indent, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def emit_json_error(message: str, exit_code: int) -> None:
    """Under `--json`, a failure is a document too (`{"error": …, "exit": N}`), unless the
    command already printed its own (a `verify` report that found problems)."""
    context = click.get_current_context(silent=True)
    if context is None or not context.meta.get(_JSON_EMITTED):
        emit_json({"error": message, "exit": exit_code})


def ago(epoch: float) -> str:
    """`3d ago` for people; under a minute reads `just now`."""
    elapsed = time.time() - epoch
    return "just now" if elapsed < 60 else f"{format_duration(elapsed)} ago"


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    right: Sequence[str] = (),
    footer: str | None = None,
) -> None:
    """A table on stdout; `right` names the right-aligned columns (sizes).

    Plain text, written in one go: a table of 100,000 kernels prints in well under a second.
    """
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(column) for column in columns]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    aligned = [str.rjust if column in right else str.ljust for column in columns]

    def line(values: Sequence[str]) -> str:
        parts = [
            align(value, width) for align, value, width in zip(aligned, values, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [line(columns), *(line(row) for row in cells)]
    if footer:
        lines.append(footer)
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


#: Seconds between plain progress lines where stderr is not a terminal ...
PLAIN_EVERY = 10.0
#: ... and with `warmer -v` (on a terminal too).
VERBOSE_EVERY = 1.0


class ProgressPrinter:
    """Prints every kind of `warmer.progress` report on stderr, one printer for all commands:
    where a job starts (with `starts`), its log lines (unless `quiet`), the agent's progress
    and heartbeats, its phases, registry layers and tags. `files` counts move the bar of
    `progress_bar`, or, where there is no bar and the printer has a `label` (stderr not a
    terminal: CI logs), become a plain line every `every` seconds and one at `finish()`."""

    def __init__(
        self,
        *,
        quiet: bool = False,
        starts: bool = True,
        bar: Callable[[Mapping[str, Any]], None] | None = None,
        label: str | None = None,
        every: float = PLAIN_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet, self.starts, self.bar = quiet, starts, bar
        self.label, self.every, self.clock = label, every, clock
        self.started = clock()
        self._last: Mapping[str, Any] | None = None
        self._printed_at: float | None = None

    def __call__(self, kind: str, data: Mapping[str, Any]) -> None:
        job = data.get("job")
        if kind == "start" and self.starts:
            console.print(start_line(data))
        elif kind == "line" and not self.quiet:
            console.print(f"[{job}] | {data['line']}")
        elif kind == "progress":
            where = f" {data['i']}/{data['n']}" if data.get("i") and data.get("n") else ""
            still = (
                f": still running, {format_duration(data['elapsed_s'])}"
                if "elapsed_s" in data
                else ""
            )
            console.print(f"[{job}] {data.get('step', '')}{where}{still}")
        elif kind == "phase":
            console.print(f"[{job}] {data['phase']}…")
        elif kind == "files" and self.bar is not None:
            self.bar(data)
        elif kind == "files" and self.label is not None:
            self._last = data
            now = self.clock()
            if now - (self._printed_at or self.started) >= self.every:
                self._printed_at = now
                console.print(self.files_line(data))
        elif kind in ("layer", "tag"):
            console.print(f"{kind}: {data['detail']}")

    def files_line(self, data: Mapping[str, Any]) -> str:
        """`LABEL: 120/300 files, 4.2M/9.0M, 12s`: a plain progress line."""

        def count(done: str, total: str, show: Callable[[int], str]) -> str:
            whole = data.get(total)
            return show(data[done]) + (f"/{show(whole)}" if whole is not None else "")

        files = count("files", "files_total", str)
        size = count("bytes", "bytes_total", format_size)
        return (
            f"{self.label}: {files} files, {size}, {format_duration(self.clock() - self.started)}"
        )

    def finish(self) -> None:
        """The last plain line (what was done, in how long), when `files` were reported."""
        if self.label is not None and self.bar is None and self._last is not None:
            console.print(self.files_line(self._last))


def start_line(data: Mapping[str, Any]) -> str:
    """`[JOB] WHERE: IMAGE (ENGINE, BACKEND)`: a `start` report as printed."""
    what = f"{data['image'] or 'this host'} ({data['engine']}, {data['backend']})"
    return f"[{data['job']}] {data['where']}: {what}"


@contextmanager
def progress_bar(description: str) -> Iterator[ProgressPrinter]:
    """Progress of one operation on stderr, moved by the `files` reports of the printer it
    yields: a transient bar on a terminal; elsewhere (CI logs), and with `warmer -v`, plain
    lines (`restoring: 120/300 files, 4.2M/9.0M, 12s`) every 10 s (1 s with `-v`) and one
    when the operation ends."""
    verbose = is_verbose()
    if verbose or not console.is_terminal:
        printer = ProgressPrinter(
            label=description, every=VERBOSE_EVERY if verbose else PLAIN_EVERY
        )
        yield printer
        printer.finish()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[files]} files"),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None, files=0)

        def update(data: Mapping[str, Any]) -> None:
            total = data.get("bytes_total")
            bar.update(task, completed=data["bytes"], total=total, files=data["files"])

        yield ProgressPrinter(bar=update)


def is_verbose() -> bool:
    """Whether the `warmer` group was given `-v` (False outside a command)."""
    context = click.get_current_context(silent=True)
    app = context.find_object(App) if context is not None else None
    return app is not None and app.verbose
