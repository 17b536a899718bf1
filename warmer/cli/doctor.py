"""`warmer doctor`: is this machine ready to warm, store, push and restore? One line a check."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import click

from warmer.cli.options import current_settings, json_option, store_option
from warmer.cli.output import console, emit_json, table
from warmer.errors import WarmerError
from warmer.units import format_size

Status = Literal["ok", "warn", "fail"]

#: Free space under which a restore or a save may well run out, and under which it will.
LOW_SPACE = 5 << 30
NO_SPACE = 512 << 20


@dataclass(frozen=True)
class Check:
    """One check's verdict: what was looked at, what was found, and what to do about it."""

    name: str
    status: Status
    detail: str
    hint: str = ""


@click.command()
@store_option
@json_option
def doctor(store: Path | None, as_json: bool) -> None:
    """Check the settings, container engines, registry, store, free space and env key.

    Exit 0 when no check fails (warnings allowed), 1 otherwise.
    """
    checks: list[Check] = []
    for name, run in CHECKS.items():
        checks.extend(_guarded(name, run, store))
    failed = [check for check in checks if check.status == "fail"]
    if as_json:
        emit_json({"checks": [asdict(check) for check in checks], "ok": not failed})
    else:
        table(
            ["STATUS", "CHECK", "DETAIL"],
            [(check.status, check.name, check.detail) for check in checks],
        )
        for check in checks:
            if check.hint and check.status != "ok":
                console.print(f"{check.name}: {check.hint}")
    if failed:
        names = ", ".join(check.name for check in failed)
        raise WarmerError(f"{len(failed)} check(s) failed: {names}")


def _guarded(
    name: str, run: Callable[[Path | None], list[Check]], store: Path | None
) -> list[Check]:
    """A check that raises is a failed check of its name, never a traceback."""
    try:
        return run(store)
    except (WarmerError, OSError) as exc:
        return [Check(name, "fail", str(exc))]


def _config(_store: Path | None) -> list[Check]:
    from warmer.config import config_path

    settings = current_settings()  # a bad file or variable raises: the check fails with it
    path = config_path()
    where = f"{path}" if path is not None and path.exists() else "no config file: defaults"
    return [Check("config", "ok", f"{where}; bundles {settings.bundle_format}")]


def _engines(_store: Path | None) -> list[Check]:
    """Docker and Podman: which answers, and its version. None answering is a warning: the
    local runtime still works."""
    from warmer.errors import UsageError
    from warmer.runtimes.docker import default_docker_url, podman_base_url

    found = []
    try:
        podman: str | None = podman_base_url()
    except UsageError:
        podman = None
    for name, url in (("docker", default_docker_url()), ("podman", podman)):
        if url is None:
            continue
        version = _engine_version(url)
        if version is not None:
            found.append(f"{name} {version} at {url}")
    if found:
        return [Check("engine", "ok", "; ".join(found))]
    return [
        Check(
            "engine",
            "warn",
            f"no container engine answers (docker at {default_docker_url()}, podman: "
            f"{podman or 'no socket'})",
            "start Docker or `podman system service`, set DOCKER_HOST or WARMER_PODMAN_SOCKET; "
            "without one, `warmer run` uses the local runtime",
        )
    ]


def _engine_version(url: str) -> str | None:
    """The engine's version at `url`, or None when nothing answers there."""
    try:
        import docker
        import docker.errors
    except ImportError:
        return None
    try:
        client = docker.DockerClient(base_url=url, timeout=5)
    except (docker.errors.DockerException, OSError):
        return None
    try:
        return str(client.version().get("Version", "unknown version"))
    except (docker.errors.DockerException, OSError):
        return None
    finally:
        client.close()


def _registry(_store: Path | None) -> list[Check]:
    """The configured registry (the cold tier, `--push`): reachable, credentials accepted."""
    from warmer.oci import Registry, credentials
    from warmer.registry import tier_reference
    from warmer.sources import allow_insecure

    configured = current_settings().registry
    if not configured:
        return [Check("registry", "ok", "none configured (WARMER_REGISTRY, registry.url)")]
    reference = tier_reference(configured, "doctor", None)
    who = "with credentials" if credentials(reference.registry) else "anonymously"
    try:
        Registry(reference, insecure=allow_insecure(None)).tags()
    except WarmerError as exc:
        return [Check("registry", "fail", f"{configured}: {exc}", "see docs/registry.md")]
    return [Check("registry", "ok", f"{configured}: answers, reads tags {who}")]


def _store(store: Path | None) -> list[Check]:
    """The store: where, writable, its snapshots, and whether a gc or prune holds it now."""
    from warmer.store import Store

    opened = Store(store)
    root = opened.root
    if not root.exists():
        parent = _existing_ancestor(root)
        if not os.access(parent, os.W_OK):
            return [Check("store", "fail", f"{root}: missing, and {parent} is not writable")]
        return [Check("store", "ok", f"{root}: not created yet (the first save makes it)")]
    if not os.access(root, os.W_OK):
        return [Check("store", "fail", f"{root}: not writable by this user")]
    if opened.busy():
        hint = "a gc or prune is running; wait for it, or find it with `fuser`"
        return [Check("store", "warn", f"{root}: held alone by another process", hint)]
    with opened:
        infos = opened.list()
        stored = opened.stored_size()
    detail = f"{root}: {len(infos)} snapshot(s), {format_size(stored)} stored"
    return [Check("store", "ok", detail)]


def _space(store: Path | None) -> list[Check]:
    """Free space where the store and the caches (temp dir, home) live, once per device."""
    import tempfile

    from warmer.store import Store

    places = {
        "store": _existing_ancestor(Store(store).root),
        "temp dir": Path(tempfile.gettempdir()),
        "home": Path.home(),
    }
    seen: set[int] = set()
    checks = []
    for what, path in places.items():
        device = path.stat().st_dev
        if device in seen:
            continue
        seen.add(device)
        free = shutil.disk_usage(path).free
        detail = f"{format_size(free)} free at {path} ({what})"
        if free < NO_SPACE:
            checks.append(Check("free space", "fail", detail, "free some space: `warmer prune`"))
        elif free < LOW_SPACE:
            hint = "a large bundle may not fit: `warmer prune --max-size …`"
            checks.append(Check("free space", "warn", detail, hint))
        else:
            checks.append(Check("free space", "ok", detail))
    return checks


def _env_key(_store: Path | None) -> list[Check]:
    """This machine's environment key (`warmer env`): what a restore here is checked against."""
    from warmer.envkey import EnvKey

    key = EnvKey.probe()
    if key.to_dict().get("torch") is None:
        hint = "warm in a container (`warmer run`), or install torch for the local runtime"
        return [Check("env key", "warn", f"{key.tag}: no torch in this Python", hint)]
    return [Check("env key", "ok", f"{key.tag} ({key.digest})")]


def _existing_ancestor(path: Path) -> Path:
    """`path`, or its nearest parent that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


#: Each check by the name its lines carry, in the order they print.
CHECKS: dict[str, Callable[[Path | None], list[Check]]] = {
    "config": _config,
    "engine": _engines,
    "registry": _registry,
    "store": _store,
    "free space": _space,
    "env key": _env_key,
}
