"""Options that many commands share, so that they read the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def store_option(function: F) -> F:
    """`--store DIR` (default: $WARMER_STORE, else ~/.cache/warmer)."""
    return click.option(
        "--store",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        envvar="WARMER_STORE",
        help="Store directory [default: $WARMER_STORE or ~/.cache/warmer].",
    )(function)


def json_option(function: F) -> F:
    """`--json`: one JSON document on stdout, nothing else there."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
    )(function)
