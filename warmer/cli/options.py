"""Options that many commands share, so that they read the same everywhere."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from warmer.config import Settings

F = TypeVar("F", bound=Callable[..., object])


class App:
    """What every command shares through the `warmer` group's `ctx.obj`: the settings, read
    on first use (a command that needs none never fails on a broken config file), and
    whether `-v` was given."""

    verbose: bool = False

    @functools.cached_property
    def settings(self) -> Settings:
        from warmer.config import settings

        return settings()


def current_settings() -> Settings:
    """The settings of the command being run."""
    return click.get_current_context().ensure_object(App).settings


def store_option(function: F) -> F:
    """`--store DIR` (default: $WARMER_STORE, else ~/.cache/warmer)."""
    return click.option(
        "--store",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Store directory [default: $WARMER_STORE, store.path in the config, or "
        "~/.cache/warmer].",
    )(function)


def json_option(function: F) -> F:
    """`--json`: one JSON document on stdout, nothing else there."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
    )(function)


def complete_ref(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """Shell completion of a REF argument: the store's refs that start with what was typed
    (read only, no lock: `Store.peek_refs`); file names when none does (a bundle)."""
    from click.shell_completion import CompletionItem

    from warmer.store import Store

    root = ctx.params.get("store")
    try:
        refs = Store(root).peek_refs()
    except Exception:  # a broken config must not break the user's shell
        refs = []
    matches = [CompletionItem(ref) for ref in refs if ref.startswith(incomplete)]
    return matches or [CompletionItem(incomplete, type="file")]
