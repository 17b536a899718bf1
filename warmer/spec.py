"""Job spec, version 1: the schema, and loading YAML files into validated, frozen jobs.

A job file holds one job (a mapping with `name`) or a `jobs:` list with optional top-level
`version` and `defaults`; any job may carry a `matrix:` that expands it over values. Every
problem in a file is reported at once, each with its field path (`jobs[1].warmup.batch_sizes[0]`),
so one `warmer validate` run shows everything to fix. docs/spec.md documents each field.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from warmer.caches import KINDS
from warmer.errors import SpecError, UsageError
from warmer.units import parse_duration, parse_size

__all__ = [
    "DTYPES",
    "Backend",
    "CompileOptions",
    "Engine",
    "InputSpec",
    "InvalidSpec",
    "Job",
    "Problem",
    "Warmup",
    "job_from_dict",
    "load_jobs",
]

Backend = Literal["cuda", "rocm", "cpu"]

#: Tensor dtypes a torch-compile input may have (torch attribute names).
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_FACTORY_RE = re.compile(rf"{_DOTTED}:{_DOTTED}")
_VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NETWORK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_MATRIX_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: No job spec nests this deep; a hostile one must meet this limit, not Python's stack.
_MAX_DEPTH = 32
#: No job spec holds this many values once YAML aliases are expanded (a billion-laughs
#: document is a few lines that expand to billions: refused before anything copies it).
_MAX_VALUES = 1_000_000

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True)

Loc = tuple[str | int, ...]


class _CrossFieldProblems(ValueError):
    """Raised by model validators: problems that involve several fields, each at its own field.

    Pydantic reports a model validator's error at the model; the loader moves each problem to
    the field it names, so the message points where the fix goes.
    """

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__(
            "; ".join(f"{_format_path('', loc)}: {message}" for loc, message in problems)
        )


def _raise_any(problems: list[tuple[Loc, str]]) -> None:
    if problems:
        raise _CrossFieldProblems(problems)


# --- field types -------------------------------------------------------------------------

PositiveInt = Annotated[StrictInt, Field(ge=1)]
FiniteNumber = Annotated[StrictFloat, Field(allow_inf_nan=False)]


def _check_env_name(name: str) -> str:
    if not _ENV_NAME_RE.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
        )
    return name


def _scalar_to_str(value: Any) -> Any:
    """YAML scalars as the strings the user wrote: numbers and booleans become text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        raise ValueError("no value; write an empty string as '' (host values belong in secrets)")
    return value


def _check_volume(volume: str) -> str:
    parts = volume.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"{volume!r} is not HOST:CONTAINER[:ro|rw]")
    host, container = parts[0], parts[1]
    if not (host.startswith("/") or _VOLUME_NAME_RE.fullmatch(host)):
        raise ValueError(f"host side {host!r} must be an absolute path or a named volume")
    if not container.startswith("/"):
        raise ValueError(f"container side {container!r} must be an absolute path")
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        raise ValueError(f"mode {parts[2]!r} must be ro or rw")
    return volume


EnvName = Annotated[str, AfterValidator(_check_env_name)]
#: a scheduler resource a job asks for (Ray custom resources such as warmer-arch-sm90)
_RESOURCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}")


def _check_resources(resources: dict[str, float]) -> dict[str, float]:
    for name, amount in resources.items():
        if not _RESOURCE_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a resource name (letters, digits, _.:/-)")
        if not amount > 0:
            raise ValueError(f"{name}: the amount must be more than 0")
    return resources


EnvValue = Annotated[str, BeforeValidator(_scalar_to_str)]
Volume = Annotated[str, AfterValidator(_check_volume)]


# --- models ------------------------------------------------------------------------------


class InputSpec(BaseModel):
    """One input tensor for torch-compile: its shape, dtype and the range of its random values."""

    model_config = _MODEL_CONFIG

    shape: tuple[PositiveInt, ...]
    dtype: str = "float32"
    low: FiniteNumber = 0.0
    high: FiniteNumber = 1.0

    @field_validator("shape")
    @classmethod
    def _not_a_scalar(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        # Checked here, not with min_length, so that a bad dim is not reported twice.
        if not shape:
            raise ValueError("needs at least 1 dimension")
        return shape

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str) -> str:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; one of: {', '.join(DTYPES)}")
        return dtype

    @model_validator(mode="after")
    def _range_not_empty(self) -> InputSpec:
        if self.high <= self.low:
            _raise_any([(("high",), f"must be greater than low ({self.low:g})")])
        return self


class CompileOptions(BaseModel):
    """Arguments for `torch.compile` (torch-compile engine only)."""

    model_config = _MODEL_CONFIG

    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    dynamic: bool | None = None
    backend: str = Field(default="inductor", min_length=1)
    fullgraph: bool = False


class Engine(BaseModel):
    """What the agent runs inside the image: a compiled model, vLLM, or the user's own command."""

    model_config = _MODEL_CONFIG

    kind: Literal["torch-compile", "vllm", "command"]
    model: str | None = Field(default=None, min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)
    compile: CompileOptions = Field(default_factory=CompileOptions)
    mode: Literal["offline", "serve"] = "offline"
    command: list[str] | None = Field(default=None, min_length=1)

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, command: Any) -> Any:
        """A command written as one string is split like a shell would (no expansion)."""
        return shlex.split(command) if isinstance(command, str) else command

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> Engine:
        problems: list[tuple[Loc, str]] = []
        if self.kind in ("torch-compile", "vllm") and self.model is None:
            problems.append((("model",), f"required for kind {self.kind}"))
        if self.kind == "torch-compile" and self.model and not _FACTORY_RE.fullmatch(self.model):
            problems.append(
                (
                    ("model",),
                    f"{self.model!r} is not 'package.module:factory' (a callable that "
                    "returns the torch.nn.Module)",
                )
            )
        if self.kind == "command":
            if self.command is None:
                problems.append((("command",), "required for kind command"))
            if self.model is not None:
                problems.append((("model",), "not used by kind command; pass it in the command"))
        elif self.command is not None:
            problems.append((("command",), "only for kind command"))
        if self.kind != "torch-compile" and self.compile != CompileOptions():
            problems.append((("compile",), "only for kind torch-compile"))
        if self.kind != "vllm" and self.mode != "offline":
            problems.append((("mode",), "only for kind vllm"))
        _raise_any(problems)
        return self


class Warmup(BaseModel):
    """The traffic that makes the engine compile: inputs (torch-compile) or prompts (vLLM)."""

    model_config = _MODEL_CONFIG

    prompts: list[str] = Field(default_factory=list)
    prompt_lengths: list[PositiveInt] = Field(default_factory=list)
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1)
    max_tokens: PositiveInt = 16
    inputs: list[InputSpec] = Field(default_factory=list)
    repeat: PositiveInt = 1


#: Warm-up fields that only the vLLM engine reads; set for another kind they would be ignored.
_VLLM_WARMUP_FIELDS = ("prompts", "prompt_lengths", "batch_sizes", "max_tokens")


class Job(BaseModel):
    """One warm-up job, validated and frozen. `to_manifest()` is what gets stored."""

    model_config = _MODEL_CONFIG

    version: Literal[1] = 1
    name: str
    image: str | None = None
    backend: Backend = "cpu"
    gpus: Literal["all"] | int | list[int] = "all"
    engine: Engine
    warmup: Warmup = Field(default_factory=Warmup)
    caches: list[str] | None = Field(default=None, min_length=1)
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    secrets: list[EnvName] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)
    network: str = "none"
    user: str | None = None
    workdir: str | None = None
    shm_size: str | None = None
    timeout: float = 1800.0
    #: what a placer asks for besides the backend and GPUs (`warmer run --ray`: Ray custom
    #: resources, e.g. {warmer-arch-sm90: 1}); not stored when empty
    resources: Annotated[dict[str, float], AfterValidator(_check_resources)] = Field(
        default_factory=dict
    )

    @field_validator("name")
    @classmethod
    def _usable_in_file_names(cls, name: str) -> str:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a job name: 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return name

    @field_validator("image")
    @classmethod
    def _image_reference(cls, image: str | None) -> str | None:
        if image is not None and (not image or any(c.isspace() for c in image)):
            raise ValueError(f"{image!r} is not an image reference")
        return image

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, gpus: Any) -> Any:
        """`all`, a count N >= 1, or device ids as a list or a string such as "0,1"."""
        if gpus == "all":
            return gpus
        if isinstance(gpus, str):
            ids = [part.strip() for part in gpus.split(",")]
            if not all(part.isascii() and part.isdigit() for part in ids):
                raise ValueError(f"{gpus!r} is not 'all', a count or device ids such as '0,1'")
            gpus = [int(part) for part in ids]
        if isinstance(gpus, bool) or not isinstance(gpus, int | list):
            raise ValueError(f"{gpus!r} is not 'all', a count or a list of device ids")
        if isinstance(gpus, int):
            if gpus < 1:
                raise ValueError("a GPU count must be at least 1 (device ids go in a list: [0])")
            return gpus
        if not gpus or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in gpus
        ):
            raise ValueError(f"{gpus!r} is not a non-empty list of device ids (integers >= 0)")
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"device ids repeat in {gpus!r}")
        return gpus

    @field_validator("caches")
    @classmethod
    def _known_kinds(cls, caches: list[str] | None) -> list[str] | None:
        if caches is None:
            return None
        unknown = [kind for kind in caches if kind not in KINDS]
        if unknown:
            raise ValueError(
                f"unknown cache kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}"
            )
        if len(set(caches)) != len(caches):
            raise ValueError("cache kinds repeat")
        return caches

    @field_validator("secrets")
    @classmethod
    def _unique_secrets(cls, secrets: list[str]) -> list[str]:
        if len(set(secrets)) != len(secrets):
            raise ValueError("secret names repeat")
        return secrets

    @field_validator("network")
    @classmethod
    def _network_name(cls, network: str) -> str:
        if not _NETWORK_RE.fullmatch(network):
            raise ValueError(f"{network!r} is not a network (none, bridge, host or a network name)")
        return network

    @field_validator("user", "shm_size", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        """`user: 1000` and `shm_size: 1073741824` are meant as text."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("user")
    @classmethod
    def _user(cls, user: str | None) -> str | None:
        if user is not None and (not user or any(c.isspace() for c in user)):
            raise ValueError(f"{user!r} is not a user (name, uid or uid:gid)")
        return user

    @field_validator("workdir")
    @classmethod
    def _absolute_workdir(cls, workdir: str | None) -> str | None:
        if workdir is not None and not workdir.startswith("/"):
            raise ValueError(f"{workdir!r} must be an absolute path in the image")
        return workdir

    @field_validator("shm_size")
    @classmethod
    def _size(cls, shm_size: str | None) -> str | None:
        if shm_size is not None and parse_size(shm_size) == 0:
            raise ValueError("must be more than 0")
        return shm_size

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, timeout: Any) -> Any:
        """`20m`; a bare number (`timeout: 20`) is refused, not read as seconds."""
        return parse_duration(timeout) if isinstance(timeout, str | int | float) else timeout

    @model_validator(mode="after")
    def _fields_fit_engine(self) -> Job:
        problems: list[tuple[Loc, str]] = []
        kind = self.engine.kind
        if kind == "torch-compile" and not self.warmup.inputs:
            problems.append(
                (("warmup", "inputs"), "kind torch-compile needs at least one input to compile for")
            )
        if kind != "torch-compile" and self.warmup.inputs:
            problems.append((("warmup", "inputs"), "only for engine kind torch-compile"))
        if kind != "vllm":
            default = Warmup()
            for field in _VLLM_WARMUP_FIELDS:
                if getattr(self.warmup, field) != getattr(default, field):
                    problems.append((("warmup", field), "only for engine kind vllm"))
        for index, secret in enumerate(self.secrets):
            if secret in self.env:
                problems.append(
                    (
                        ("secrets", index),
                        f"{secret} is also set in env; a secret comes from the host only",
                    )
                )
        _raise_any(problems)
        return self

    def to_manifest(self) -> dict[str, Any]:
        """The job as plain JSON data, safe to store: secrets are names, never values."""
        return self.model_dump(mode="json", exclude=set() if self.resources else {"resources"})

    @classmethod
    def from_manifest(cls, stored: Mapping[str, Any]) -> Job:
        """A job that `to_manifest` wrote, validated again: the manifest keeps the timeout in
        seconds (what the agent reads), where a spec must write its unit."""
        timeout = stored.get("timeout")
        seconds = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        return cls.model_validate({**stored, "timeout": f"{timeout}s"} if seconds else stored)


# --- problems and the error that lists them ----------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a spec file: the field path (empty for the whole file) and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidSpec(SpecError):
    """Every problem found in one spec file; `field`/`message` are the first problem's."""

    def __init__(self, file: str, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        first = self.problems[0]
        super().__init__(file, first.field, first.message)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return super().__str__()
        listed = "\n".join(f"  {problem}" for problem in self.problems)
        return f"{self.file}: {len(self.problems)} problems\n{listed}"


def _format_path(prefix: str, loc: Sequence[str | int]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PATH_KEY_RE.fullmatch(part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc` inside a Job, if there is one."""
    model: type[BaseModel] | None = Job
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = _model_in(field.annotation)
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None


def _unknown_field_message(loc: Sequence[str | int]) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown field"
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"unknown field (did you mean {close[0]!r}?)"
    return f"unknown field (known: {', '.join(known)})"


def _problems_from(error: ValidationError, prefix: str) -> list[Problem]:
    problems: list[Problem] = []
    for item in error.errors():
        loc = [part for part in item["loc"] if part != "[key]"]
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, _CrossFieldProblems):
            problems += [
                Problem(_format_path(prefix, [*loc, *at]), text) for at, text in cause.problems
            ]
        elif item["type"] == "extra_forbidden":
            problems.append(Problem(_format_path(prefix, loc), _unknown_field_message(loc)))
        elif item["type"] == "missing":
            problems.append(Problem(_format_path(prefix, loc), "required"))
        elif cause is not None:
            problems.append(Problem(_format_path(prefix, loc), str(cause)))
        else:
            given = item["input"]
            shown = "" if isinstance(given, dict | list) else f" (got {given!r:.60})"
            problems.append(Problem(_format_path(prefix, loc), item["msg"] + shown))
    return problems


# --- YAML --------------------------------------------------------------------------------

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_DROPPED_TAGS = (_BOOL_TAG, _INT_TAG, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 scalars and no duplicate keys.

    Only true/false are booleans (so `COUNTRY: NO` stays text), only plain decimals are
    integers (`0755`, `1000:50` stay text), dates stay text; a key given twice is an error
    instead of the last one silently winning.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_SpecLoader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)


def _read_yaml(path: Path, file: str) -> Any:
    if not path.exists():
        raise UsageError(f"job file not found: {file}")
    if not path.is_file():
        raise UsageError(f"not a job file: {file}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSpec(file, [Problem("", f"not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from exc
    try:
        document = yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass: no object tags
    except RecursionError:  # the YAML composer recurses once per level of nesting
        raise InvalidSpec(file, [Problem("", "invalid YAML: nested too deep")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "cannot parse"
        raise InvalidSpec(file, [Problem("", f"invalid YAML{where}: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise InvalidSpec(file, [Problem("", f"invalid YAML: {exc}")]) from None
    problems = list(_unusable_values(document)) or list(_oversized(document))
    if problems:
        raise InvalidSpec(file, problems)
    return document


def _oversized(document: Any) -> Iterator[Problem]:
    """A document that refers to itself, or that expands past _MAX_VALUES values: YAML
    aliases share one node however often they are used, but every later step (validation,
    the job's JSON, the manifest) copies it once per use."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    pending: list[tuple[Any, bool]] = [(document, False)] if _is_node(document) else []
    while pending:
        value, children_done = pending.pop()
        items = list(value.values()) if isinstance(value, Mapping) else value
        if children_done:
            open_nodes.discard(id(value))
            sizes[id(value)] = 1 + sum(sizes.get(id(item), 1) for item in items)
            if sizes[id(value)] > _MAX_VALUES:
                yield Problem("", f"more than {_MAX_VALUES:,} values once YAML aliases expand")
                return
            continue
        if id(value) in open_nodes:
            yield Problem("", "a YAML alias refers to a node that contains it")
            return
        open_nodes.add(id(value))
        pending.append((value, True))
        pending.extend((item, False) for item in items if _is_node(item) and id(item) not in sizes)


def _is_node(value: object) -> bool:
    return isinstance(value, Mapping | list)


def _unusable_values(document: Any) -> Iterator[Problem]:
    """What nothing downstream can handle: nesting deeper than _MAX_DEPTH (every later step
    recurses), and text with no UTF-8 form (a lone surrogate from a "\\udc80" escape, which
    the job's JSON, its environment and the manifest could not carry)."""
    pending: list[tuple[Any, list[str | int]]] = [(document, [])]
    seen: set[int] = set()  # YAML aliases share a node: walk it once, not once per alias
    while pending:
        value, loc = pending.pop()
        if isinstance(value, Mapping | list):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if len(loc) > _MAX_DEPTH:
            yield Problem(_format_path("", loc[:_MAX_DEPTH]), f"nested deeper than {_MAX_DEPTH}")
            return
        if _no_utf8(value):
            yield Problem(_format_path("", loc), f"{value!r} is not valid Unicode")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if _no_utf8(key):
                    yield Problem(_format_path("", loc), f"key {key!r} is not valid Unicode")
                else:
                    pending.append((item, [*loc, str(key)]))
        elif isinstance(value, list):
            pending.extend((item, [*loc, index]) for index, item in enumerate(value))


def _no_utf8(value: object) -> bool:
    """Text that cannot be encoded (a lone surrogate)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False


# --- matrix and defaults -----------------------------------------------------------------

Scalar = str | int | float | bool


def _substitute(value: Any, combination: Mapping[str, Scalar]) -> Any:
    """`${key}` in every string; a string that is only `${key}` takes the value's type."""
    if isinstance(value, str):
        whole = _MATRIX_REF_RE.fullmatch(value)
        if whole and whole.group(1) in combination:
            return combination[whole.group(1)]

        def text(match: re.Match[str]) -> str:
            if match.group(1) not in combination:
                return match.group(0)
            found = combination[match.group(1)]
            return json.dumps(found) if isinstance(found, bool) else str(found)

        return _MATRIX_REF_RE.sub(text, value)
    if isinstance(value, Mapping):
        return {key: _substitute(item, combination) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, combination) for item in value]
    return value


def _matrix_combinations(matrix: Any, prefix: str) -> tuple[list[dict[str, Scalar]], list[Problem]]:
    """The cartesian product of a job's matrix, or the problems with the matrix itself."""
    where = _format_path(prefix, ["matrix"])
    if not isinstance(matrix, Mapping) or not matrix:
        return [], [Problem(where, "must be a non-empty mapping of key: [values]")]
    problems = []
    for key, values in matrix.items():
        at = _format_path(where, [str(key)])
        if not isinstance(key, str) or not _ENV_NAME_RE.fullmatch(key):
            problems.append(
                Problem(at, "a matrix key must be an identifier ([A-Za-z_][A-Za-z0-9_]*)")
            )
        if not isinstance(values, list) or not values:
            problems.append(Problem(at, "must be a non-empty list of values"))
        elif not all(isinstance(v, str | int | float) for v in values):
            problems.append(Problem(at, "values must be scalars (text, numbers, true/false)"))
    if problems:
        return [], problems
    keys = list(matrix)
    return [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*matrix.values())
    ], []


def _merge(defaults: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` under `job`: mappings merge key by key, anything else in `job` wins."""
    merged = dict(defaults)
    for key, value in job.items():
        base = merged.get(key)
        if isinstance(base, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(base, value)
        else:
            merged[key] = value
    return merged


# --- loading -----------------------------------------------------------------------------


def _validate(data: Mapping[str, Any], prefix: str) -> Job | list[Problem]:
    try:
        return Job.model_validate(data)
    except ValidationError as exc:
        return _problems_from(exc, prefix)


def job_from_dict(data: Mapping[str, Any], *, file: str = "<job>", prefix: str = "") -> Job:
    """Validate one job mapping (no matrix); raises InvalidSpec listing every problem."""
    if not isinstance(data, Mapping):
        raise InvalidSpec(file, [Problem(prefix, "a job must be a mapping")])
    if "matrix" in data:
        where = _format_path(prefix, ["matrix"])
        raise InvalidSpec(file, [Problem(where, "only job files expand a matrix (load_jobs)")])
    result = _validate(data, prefix)
    if isinstance(result, list):
        raise InvalidSpec(file, result)
    return result


def _expand(raw: Mapping[str, Any], prefix: str) -> tuple[list[Job], list[Problem]]:
    """The jobs one entry of a file makes (one, or one per matrix combination)."""
    if "matrix" not in raw:
        result = _validate(raw, prefix)
        return ([], result) if isinstance(result, list) else ([result], [])
    body = {key: value for key, value in raw.items() if key != "matrix"}
    combinations, problems = _matrix_combinations(raw["matrix"], prefix)
    if problems:
        return [], problems
    jobs: list[Job] = []
    seen_in: dict[Problem, list[str]] = {}
    for combination in combinations:
        result = _validate(_substitute(body, combination), prefix)
        if isinstance(result, Job):
            jobs.append(result)
            continue
        label = ", ".join(f"{key}={value}" for key, value in combination.items())
        for problem in result:
            seen_in.setdefault(problem, []).append(label)
    for problem, labels in seen_in.items():
        if len(labels) < len(combinations):
            problem = Problem(problem.field, f"{problem.message} (matrix {'; '.join(labels)})")
        problems.append(problem)
    names = [job.name for job in jobs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        problems.append(
            Problem(
                _format_path(prefix, ["matrix"]),
                f"expands to the same job name more than once ({', '.join(repeated)}); "
                "put the matrix keys in name, e.g. name: tiny-${dim}",
            )
        )
    return jobs, problems


def _entries(document: Any) -> Iterator[tuple[str, Any] | Problem]:
    """(field prefix, raw job mapping) for each job in a parsed file, or file-level problems."""
    if document is None:
        yield Problem("", "the file holds no job")
        return
    if not isinstance(document, Mapping):
        yield Problem("", "the top level must be a job (a mapping with name) or jobs: [...]")
        return
    if "jobs" not in document:
        yield "", document
        return
    for key in document:
        if key not in ("version", "defaults", "jobs"):
            yield Problem(
                _format_path("", [str(key)]),
                "unknown field (beside jobs: only version and defaults; job fields go in each job)",
            )
    version = document.get("version", 1)
    if version != 1 or isinstance(version, bool):
        yield Problem("version", f"{version!r} is not a spec version this warmer reads (1)")
        version = 1
    defaults = document.get("defaults")
    if defaults is None:
        defaults = {}
    elif not isinstance(defaults, Mapping):
        yield Problem("defaults", "must be a mapping of job fields")
        defaults = {}
    known = set(Job.model_fields) | {"matrix"}
    for key in defaults:
        if key == "name":
            yield Problem("defaults.name", "each job names itself")
        elif key not in known:
            yield Problem(_format_path("defaults", [str(key)]), _unknown_field_message([key]))
    defaults = {key: value for key, value in defaults.items() if key != "name" and key in known}
    jobs = document["jobs"]
    if not isinstance(jobs, list) or not jobs:
        yield Problem("jobs", "must be a non-empty list of jobs")
        return
    for index, raw in enumerate(jobs):
        prefix = f"jobs[{index}]"
        if not isinstance(raw, Mapping):
            yield Problem(prefix, "must be a job (a mapping with name)")
        else:
            yield prefix, _merge({"version": version, **defaults}, raw)


def require_images(jobs: Sequence[Job], runtime: str, source: object = None) -> None:
    """A container runtime starts each job's image: refuse the jobs that name none, saying
    what to add (`source`, the job file, leads the message when known)."""
    if runtime == "local":
        return
    missing = [job.name for job in jobs if not job.image]
    if missing:
        which = "job" if len(missing) == 1 else "jobs"
        where = f"{source}: " if source is not None else ""
        raise UsageError(
            f"{where}{which} {', '.join(missing)}: `image` is required for a container runtime: "
            "add `image: REPOSITORY:TAG` (a digest pin is best) to the job, or run it with "
            "--runtime local"
        )


def load_jobs(path: Path | str, *, only: str | None = None) -> list[Job]:
    """Every job in a spec file, validated and matrix-expanded, in file order.

    Raises UsageError when the file is missing or `only` names no job, and InvalidSpec (a
    SpecError) listing every problem in the file, each with its field path.
    """
    file = str(path)
    document = _read_yaml(Path(path), file)
    jobs: list[Job] = []
    problems: list[Problem] = []
    first_seen: dict[str, str] = {}
    for entry in _entries(document):
        if isinstance(entry, Problem):
            problems.append(entry)
            continue
        prefix, raw = entry
        expanded, entry_problems = _expand(raw, prefix)
        problems += entry_problems
        for job in expanded:
            if job.name in first_seen and first_seen[job.name] != prefix:
                where = _format_path(prefix, ["name"])
                problems.append(
                    Problem(where, f"duplicate job name {job.name!r} (also {first_seen[job.name]})")
                )
            first_seen.setdefault(job.name, prefix)
        jobs += expanded
    if problems:
        raise InvalidSpec(file, problems)
    if only is None:
        return jobs
    chosen = [job for job in jobs if job.name == only]
    if not chosen:
        names = ", ".join(job.name for job in jobs)
        raise UsageError(f"{file}: no job named {only!r}; the file has: {names}")
    return chosen
