"""`warmer env [--json]`: this machine's environment key, the one a restore is checked against."""

from __future__ import annotations

import click

from warmer.cli.options import json_option
from warmer.cli.output import emit_json, table
from warmer.envkey import EnvKey


@click.command()
@json_option
def env(as_json: bool) -> None:
    """Show this machine's environment key: its parts, tag and digest."""
    key = EnvKey.probe()
    parts = key.to_dict()
    if as_json:
        emit_json({"tag": key.tag, "digest": key.digest, "parts": parts})
        return
    rows = [(name, "-" if value is None else value) for name, value in parts.items()]
    table(["part", "value"], [*rows, ("tag", key.tag), ("digest", key.digest)])
