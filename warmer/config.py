"""Settings: one model owns every setting warmer reads from a config file or the environment.

The file is YAML: `$WARMER_CONFIG`, else `$XDG_CONFIG_HOME/warmer/config.yaml` (default
`~/.config/warmer/config.yaml`), else none. Environment variables win over the file; command
options win over both. configs/warmer.yaml and configs/warmer.env list every setting, and a
test holds them to this model. A command reads the settings once, through the `ctx.obj` of
the `warmer` group; library code shares that same load through `settings()`, which reads
again only when the environment or the file changed.

Two readers stay outside on purpose, because they run where warmer's dependencies may not
be: the agent (stdlib only, inside the image) and `warmer.tracking` (inside Triton's own
processes, which reads $WARMER_STATE_DIR through `warmer.kernels.formats.state_dir`).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from warmer.errors import UsageError
from warmer.units import parse_duration, parse_size

CONFIG_ENV = "WARMER_CONFIG"
#: The cold tier's REGISTRY/PREFIX: `host.name[:port]`, `localhost[:port]` or `[::1]:port`,
#: then a repository path as OCI writes it (warmer.oci checks each full reference again).
_REGISTRY_PREFIX_RE = re.compile(
    r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::\d+)?|localhost(?::\d+)?|[A-Za-z0-9-]+:\d+"
    r"|\[[0-9A-Fa-f:]+\](?::\d+)?)"
    r"/[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
)
BACKENDS = ("cuda", "rocm", "cpu")


@dataclass(frozen=True, config=ConfigDict(extra="forbid", populate_by_name=True))
class HostConfig:
    """A Docker engine that `warmer run --hosts` may send jobs to."""

    name: str = Field(min_length=1)
    url: str = Field(min_length=1)
    #: the backends of the jobs it takes (`backend:` in the file, one or a list); empty: any
    backends: tuple[str, ...] = Field(default=(), alias="backend")
    #: jobs it runs at once
    slots: int = Field(default=1, ge=1, strict=True)

    @field_validator("backends", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, backends: tuple[str, ...]) -> tuple[str, ...]:
        for backend in backends:
            if backend not in BACKENDS:
                raise ValueError(f"{backend!r} is not one of {', '.join(BACKENDS)}")
        return backends


def _setting(default: Any, env: str, file: str | None = None) -> Any:
    """A field with the environment variable (and the config file key) that sets it."""
    return Field(default, json_schema_extra={"env": env, "file": file})


class Settings(BaseModel):
    """Every setting, merged: the config file, then the environment over it."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    #: the config file in effect
    config: Path | None = _setting(None, CONFIG_ENV)
    #: the local store, the hot tier
    store: Path | None = _setting(None, "WARMER_STORE", "store.path")
    #: its byte budget for `warmer prune` without --max-size
    max_size: str | None = _setting(None, "WARMER_MAX_SIZE", "store.max_size")
    #: the compression of bundles `run`, `save` and `export` write unless told
    bundle_format: Literal["zst", "gz"] = _setting("zst", "WARMER_BUNDLE_FORMAT", "bundle.format")
    #: the cold tier, REGISTRY/REPO: missing refs are pulled from it, `run --push` pushes to it
    registry: str | None = _setting(None, "WARMER_REGISTRY", "registry.url")
    #: plain HTTP to a registry that is not on loopback
    insecure: bool = _setting(False, "WARMER_REGISTRY_INSECURE", "registry.insecure")
    #: registry credentials (else Docker's own config); never in the file or in arguments
    registry_username: str | None = _setting(None, "WARMER_REGISTRY_USERNAME")
    registry_password: SecretStr | None = _setting(None, "WARMER_REGISTRY_PASSWORD")
    #: seconds one pull, push or restore from a registry may take in all (a duration: `1h`)
    registry_deadline: float = _setting(3600.0, "WARMER_REGISTRY_DEADLINE", "registry.deadline")
    #: warmer's own state (kernel index, hit logs); default ~/.cache/warmer
    state_dir: Path | None = _setting(None, "WARMER_STATE_DIR")
    #: the Podman service socket for `--runtime podman`
    podman_socket: str | None = _setting(None, "WARMER_PODMAN_SOCKET")
    #: the default of `warmer run --hosts`
    run_hosts: str | None = _setting(None, "WARMER_HOSTS")
    #: the private key that `run`, `save`, `export` and `push` sign with (their --sign)
    signing_key: Path | None = _setting(None, "WARMER_SIGNING_KEY", "signing.key")
    #: its passphrase when it is encrypted (else a prompt); never in the file or in arguments
    signing_passphrase: SecretStr | None = _setting(None, "WARMER_SIGNING_PASSPHRASE")
    #: public keys whose signatures `restore`, `pull`, `import` accept (their --trust)
    trust_keys: tuple[Path, ...] = _setting((), "WARMER_TRUST_KEYS", "trust.keys")
    #: refuse what no trusted key signed, even without --trust
    trust_require: bool = _setting(False, "WARMER_TRUST_REQUIRE", "trust.require")
    #: the Ray cluster `warmer run --ray` places jobs on (HOST:PORT of its head, or `auto`)
    cluster: str | None = _setting(None, "WARMER_RAY", "cluster.address")
    #: how many times Ray runs a job again whose node died (0: the job fails with its node)
    cluster_retries: int = _setting(0, "WARMER_RAY_RETRIES", "cluster.retries")
    #: a bundle up to this size comes back through Ray's object store; a larger one is pushed
    #: from its node to the registry (with --push) and only the reference comes back
    cluster_inline_max: str = _setting("256MiB", "WARMER_RAY_INLINE_MAX", "cluster.inline_max")
    #: Docker engines for `warmer run --hosts` (file only)
    hosts: tuple[HostConfig, ...] = Field(default=(), json_schema_extra={"file": "hosts"})

    @field_validator("config", "store", "state_dir")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("registry")
    @classmethod
    def _registry_prefix(cls, value: str | None) -> str | None:
        """REGISTRY/PREFIX, checked when read: a bad one is refused naming the variable or
        key, before any command creates or contacts anything."""
        if value is not None and not _REGISTRY_PREFIX_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not REGISTRY/PREFIX: a host (with a '.' or a port, or "
                "localhost), then a lowercase repository path, e.g. ghcr.io/acme/warm-caches"
            )
        return value

    @field_validator("max_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("registry_deadline", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        if not isinstance(value, str | int | float):
            raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 30m, 2h)")
        return parse_duration(value)

    @field_validator("trust_keys", mode="before")
    @classmethod
    def _key_list(cls, value: object) -> object:
        """`a.pub,b.pub` in the environment, a list (or one path) in the file."""
        return tuple(part for part in value.split(",") if part) if isinstance(value, str) else value

    @field_validator("signing_key", "trust_keys")
    @classmethod
    def _expand_keys(cls, value: Path | tuple[Path, ...] | None) -> object:
        if isinstance(value, tuple):
            return tuple(path.expanduser() for path in value)
        return value.expanduser() if value is not None else None

    @field_validator("cluster_retries")
    @classmethod
    def _not_negative(cls, retries: int) -> int:
        if retries < 0:
            raise ValueError("must be 0 or more")
        return retries

    @field_validator("cluster_inline_max")
    @classmethod
    def _a_size(cls, value: str) -> str:
        from warmer.units import parse_size

        parse_size(value)  # ValueError names what is wrong
        return value

    @field_validator("hosts")
    @classmethod
    def _unique_names(cls, hosts: tuple[HostConfig, ...]) -> tuple[HostConfig, ...]:
        names = [host.name for host in hosts]
        if len(set(names)) != len(names):
            raise ValueError("names must be unique")
        return hosts

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Environment variable -> field."""
        return cls._named_by("env")

    @classmethod
    def file_keys(cls) -> dict[str, str]:
        """Config file key (`section.key`, or `hosts`) -> field."""
        return cls._named_by("file")

    @classmethod
    def _named_by(cls, source: Literal["env", "file"]) -> dict[str, str]:
        names = {name: _extra(info, source) for name, info in cls.model_fields.items()}
        return {named: name for name, named in names.items() if named}


def _extra(info: Any, key: str) -> Any:
    extra = info.json_schema_extra
    return extra.get(key) if isinstance(extra, dict) else None


#: The config file's sections and their keys (`hosts` is a list: no keys of its own here).
_SECTIONS: dict[str, tuple[str, ...]] = {}
for _key in Settings.file_keys():
    _section, _, _name = _key.partition(".")
    _SECTIONS[_section] = (*_SECTIONS.get(_section, ()), *((_name,) if _name else ()))


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
    where = str(path) if path else "config"
    data = _read_file(path) if path is not None else {}
    values: dict[str, Any] = {}
    source: dict[str, str] = {}  # field -> what set it, for error messages
    _known(data, ("version", *_SECTIONS), where, "")
    for key, field in Settings.file_keys().items():
        section, _, name = key.partition(".")
        if not name:
            if data.get(section) is not None:
                values[field], source[field] = data[section], f"{where}: {key}"
            continue
        table = data.get(section) or {}
        if not isinstance(table, dict):
            raise UsageError(f"{where}: {section}: must be a mapping")
        _known(table, _SECTIONS[section], where, f"{section}.")
        if table.get(name) is not None:
            values[field], source[field] = table[name], f"{where}: {key}"
    for env, field in Settings.env_names().items():
        if environ.get(env):
            values[field], source[field] = environ[env], env
    values["config"] = path
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise UsageError(_explain(exc, source)) from None


def _read_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read the config: {exc}") from exc
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: the config must be a mapping")
    return loaded


def _known(data: Mapping[str, Any], keys: tuple[str, ...], where: str, prefix: str) -> None:
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise UsageError(f"{where}: {prefix}{unknown[0]}: unknown key (known: {', '.join(keys)})")


def _explain(exc: ValidationError, source: Mapping[str, str]) -> str:
    """The first problem, named the way the user wrote it: `WARMER_X` or `file: section.key`
    (`file: hosts[0].slots` for a host)."""
    error = exc.errors()[0]
    field, *rest = error["loc"]
    where = source.get(str(field), str(field))
    for part in rest:
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


_last: tuple[tuple[object, ...], Settings] | None = None
_last_lock = threading.Lock()


def settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings in effect: loaded once, and again only when what they come from changed
    (a variable of the model, the config file's location or its modification time)."""
    path = config_path(environ)
    key = (
        tuple(environ.get(name) for name in (*Settings.env_names(), "XDG_CONFIG_HOME")),
        path,
        path.stat().st_mtime_ns if path is not None else None,
    )
    global _last
    with _last_lock:
        if _last is None or _last[0] != key:
            _last = (key, load_settings(environ))
        return _last[1]


def default_store_root(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the content-addressed store lives unless `--store` says otherwise."""
    configured = settings(environ).store
    if configured is not None:
        return configured
    xdg = environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "warmer"
