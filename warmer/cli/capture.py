"""`warmer capture BASE`: beside a running server, push what it compiles after start-up as a
delta on the bundle it was deployed with (see warmer/capture.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from warmer.cli.options import current_settings, json_option, store_option
from warmer.cli.output import console, emit_json
from warmer.units import format_size


@click.command()
@click.argument("base")
@click.option(
    "--root",
    "roots",
    metavar="KIND=PATH",
    multiple=True,
    help="A cache root to watch (repeatable) [default: every root this environment's "
    "variables name, as `warmer save` finds them].",
)
@click.option("--push", is_flag=True, help="Push each capture to the base's tag (--registry).")
@click.option(
    "--registry",
    metavar="REGISTRY/PREFIX",
    default=None,
    help="Where --push pushes [default: $WARMER_REGISTRY or registry.url in the config].",
)
@click.option("--once", is_flag=True, help="Stop after the first capture.")
@click.option(
    "--duration",
    metavar="DURATION",
    default=None,
    help="Stop after this long (`90s`, `10m`) [default: until interrupted].",
)
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between scans."
)
@click.option(
    "--settle",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds without a change before a batch of new files is taken.",
)
@store_option
@json_option
def capture(
    base: str,
    roots: tuple[str, ...],
    push: bool,
    registry: str | None,
    once: bool,
    duration: str | None,
    interval: float,
    settle: float,
    store: Path | None,
    as_json: bool,
) -> None:
    """Watch a running server's cache roots and capture what it compiles from now on as a
    delta on BASE (the store ref or registry reference it was deployed with)."""
    from warmer.caches import KINDS, CacheRoot, Facts, default_roots
    from warmer.capture import capture as run_capture
    from warmer.errors import UsageError
    from warmer.oci import Reference
    from warmer.store import Store
    from warmer.units import parse_duration

    settings = current_settings()
    if interval <= 0 or settle < 0:
        raise UsageError("--interval must be more than 0 and --settle 0 or more")
    watched = []
    for item in roots:
        kind, sep, path = item.partition("=")
        if not sep or kind not in KINDS or not path.startswith("/"):
            raise UsageError(
                f"--root {item!r}: give KIND=/absolute/path, KIND one of {', '.join(KINDS)}"
            )
        watched.append(CacheRoot(kind, path))
    if not watched:
        watched = default_roots(Facts.of_this_process())
    target = None
    if push:
        target = registry or settings.registry
        if not target:
            raise UsageError("--push needs a registry: --registry, WARMER_REGISTRY or registry.url")
        Reference.parse(target)
    try:
        seconds = parse_duration(duration) if duration is not None else None
    except ValueError as exc:
        raise UsageError(f"--duration: {exc}") from None

    def say(kind: str, data: Mapping[str, Any]) -> None:
        if kind == "watching":
            console.print(
                f"watching {len(data['roots'])} cache root(s) ({data['files']} file(s) there "
                "now) for what is compiled from now on"
            )
        elif kind == "captured":
            size = format_size(data["bytes"])
            console.print(f"captured {data['files']} file(s), {size}: {data['ref']}")

    with Store(store) as opened:
        results = run_capture(
            opened,
            base,
            watched,
            registry=target,
            insecure=settings.insecure,
            once=once,
            duration_s=seconds,
            interval_s=interval,
            settle_s=settle,
            on_event=say,
        )
    for result in results:
        if result.push:
            console.print(
                f"pushed {result.push['reference']} ({result.push['layers_reused']} "
                f"layers reused, {format_size(result.push['bytes_sent'])} sent)"
            )
    if as_json:
        emit_json({"captures": [result.to_dict() for result in results]})
