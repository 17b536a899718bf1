"""Settings a user changes through a config file or the environment (see configs/).

The file is YAML: `$WARMER_CONFIG`, else `$XDG_CONFIG_HOME/warmer/config.yaml` (default
`~/.config/warmer/config.yaml`), else none. Environment variables win over the file; command
options win over both. configs/warmer.yaml and configs/warmer.env are annotated examples.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmer.errors import UsageError

CONFIG_ENV = "WARMER_CONFIG"
#: Store location: $WARMER_STORE, else the config's store.path, else $XDG_CACHE_HOME/warmer.
STORE_ENV = "WARMER_STORE"
BACKENDS = ("cuda", "rocm", "cpu")


@dataclass(frozen=True)
class HostConfig:
    """A Docker engine that `warmer run --hosts` may send jobs to."""

    name: str
    url: str
    #: the backends of the jobs it takes; empty means any
    backends: tuple[str, ...] = ()
    #: jobs it runs at once
    slots: int = 1


@dataclass(frozen=True)
class Settings:
    """The merged settings: file, then environment."""

    store: Path | None = None
    max_size: str | None = None
    #: the cold tier: "REGISTRY/REPO" that a missing ref is pulled from
    registry: str | None = None
    #: allow plain HTTP to a registry that is not on loopback
    insecure: bool = False
    hosts: tuple[HostConfig, ...] = field(default_factory=tuple)
    source: Path | None = None


def config_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The config file in effect, or None when there is none."""
    explicit = environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UsageError(f"{CONFIG_ENV}={explicit}: no such file")
        return path
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    path = Path(base) / "warmer" / "config.yaml"
    return path if path.is_file() else None


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Read the config file (if any) and apply the environment over it."""
    path = config_path(environ)
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"{path}: cannot read the config: {exc}") from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"{path}: the config must be a mapping")
        data = loaded
    where = str(path) if path else "config"
    _known(data, ("version", "store", "registry", "hosts"), where, "")
    store = _section(data, "store", ("path", "max_size"), where)
    registry = _section(data, "registry", ("url", "insecure"), where)
    hosts = tuple(
        _host(item, f"hosts[{i}]", where) for i, item in enumerate(data.get("hosts") or [])
    )
    names = [host.name for host in hosts]
    if len(set(names)) != len(names):
        raise UsageError(f"{where}: hosts: names must be unique")
    store_path = environ.get(STORE_ENV) or store.get("path")
    insecure_env = environ.get("WARMER_REGISTRY_INSECURE")
    return Settings(
        store=Path(str(store_path)).expanduser() if store_path else None,
        max_size=environ.get("WARMER_MAX_SIZE") or _optional_str(store, "max_size", where),
        registry=environ.get("WARMER_REGISTRY") or _optional_str(registry, "url", where),
        insecure=_truthy(insecure_env) if insecure_env else bool(registry.get("insecure", False)),
        hosts=hosts,
        source=path,
    )


def settings() -> Settings:
    """The settings in effect now (read each time: tests and callers change the environment)."""
    return load_settings()


def default_store_root() -> Path:
    """Where the content-addressed store lives unless `--store` says otherwise."""
    configured = settings().store
    if configured is not None:
        return configured
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "warmer"


def default_compression() -> str:
    """Bundle compression: `zst` (default) or `gz` (what Docker's ADD unpacks)."""
    value = os.environ.get("WARMER_BUNDLE_FORMAT", "zst")
    if value not in ("zst", "gz"):
        raise ValueError(f"WARMER_BUNDLE_FORMAT must be zst or gz, not {value!r}")
    return value


def default_max_store_size() -> str | None:
    """The hot tier's byte budget for `warmer prune` without --max-size."""
    return settings().max_size


def _known(data: Mapping[str, Any], keys: tuple[str, ...], where: str, prefix: str) -> None:
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise UsageError(f"{where}: {prefix}{unknown[0]}: unknown key (known: {', '.join(keys)})")


def _section(
    data: Mapping[str, Any], name: str, keys: tuple[str, ...], where: str
) -> dict[str, Any]:
    value = data.get(name) or {}
    if not isinstance(value, dict):
        raise UsageError(f"{where}: {name}: must be a mapping")
    _known(value, keys, where, f"{name}.")
    return value


def _optional_str(section: Mapping[str, Any], key: str, where: str) -> str | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, (str, int)):
        raise UsageError(f"{where}: {key}: must be a string")
    return str(value)


def _host(item: Any, field_path: str, where: str) -> HostConfig:
    if not isinstance(item, dict):
        raise UsageError(f"{where}: {field_path}: must be a mapping with name and url")
    _known(item, ("name", "url", "backend", "slots"), where, f"{field_path}.")
    for key in ("name", "url"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise UsageError(f"{where}: {field_path}.{key}: required string")
    backends = item.get("backend") or []
    backends = [backends] if isinstance(backends, str) else backends
    for i, backend in enumerate(backends):
        if backend not in BACKENDS:
            raise UsageError(
                f"{where}: {field_path}.backend[{i}]: {backend!r} is not one of "
                + ", ".join(BACKENDS)
            )
    slots = item.get("slots", 1)
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise UsageError(f"{where}: {field_path}.slots: must be a whole number >= 1")
    return HostConfig(item["name"], item["url"], tuple(backends), slots)


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")
