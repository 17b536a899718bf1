"""Check: will a bundle hit a target, and if not, which factor differs — before deploying.

The target is probed by the same agent probe that recorded the bundle's key factors at
harvest (`python -m warmer.agent probe --key-factors`), run by a runtime: inside the
deployment image (docker, podman) or on this machine (local). The prediction compares, per
cache kind the bundle holds, the environment key's parts and the key factors each compiler
hashes (`warmer.envkey.ENV_KINDS`, `FACTORS`): a kind misses when a part of its key differs,
and every such part is named with its two values.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import warmer
from warmer.bundle import read_manifest
from warmer.caches import KINDS
from warmer.envkey import EnvKey, FactorDifference, env_differences, factor_differences
from warmer.errors import JobFailed, NothingToRestore, UsageError
from warmer.runtimes import ContainerSpec, Mount, get_runtime
from warmer.runtimes.base import AGENT_PACKAGE_TARGET
from warmer.sources import in_store, is_bundle
from warmer.store.manifest import Manifest

#: How long the probe may take in the target (it imports torch and hashes its sources).
PROBE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class KindVerdict:
    """One cache kind of the bundle: whether it would hit, and each factor that says not."""

    kind: str
    files: int
    hit: bool
    factors: list[FactorDifference]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "files": self.files,
            "hit": self.hit,
            "factors": [factor.to_dict() for factor in self.factors],
        }


@dataclass(frozen=True)
class CheckResult:
    """The prediction for one bundle and one target."""

    source: str
    target: str
    ref: str
    env_tag: str
    target_env_tag: str
    #: whether the bundle recorded its key factors (else only the environment key was compared)
    exact: bool
    kinds: list[KindVerdict]
    warnings: list[str] = field(default_factory=list)

    @property
    def hit(self) -> bool:
        return all(verdict.hit for verdict in self.kinds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "ref": self.ref,
            "env_tag": self.env_tag,
            "target_env_tag": self.target_env_tag,
            "exact": self.exact,
            "hit": self.hit,
            "kinds": [verdict.to_dict() for verdict in self.kinds],
            "warnings": self.warnings,
        }


def check(
    source: str | Path,
    *,
    image: str | None = None,
    runtime: str | None = None,
    backend: str | None = None,
    store: Path | None = None,
    insecure: bool | None = None,
) -> CheckResult:
    """Predict whether the bundle that `source` names (a bundle file, registry reference or
    store ref: `warmer.sources`) hits the target: `image` through `runtime` (docker, podman),
    or this machine with the local runtime (the default without `image`). NothingToRestore when
    there is no such bundle."""
    runtime = runtime or ("docker" if image else "local")
    if (image is None) != (runtime == "local"):
        raise UsageError(
            "--runtime local probes this machine: leave out --image"
            if image
            else f"--runtime {runtime} probes an image: name it with --image"
        )
    label, manifest = bundle_manifest(source, store=store, insecure=insecure)
    target = f"image {image} ({runtime})" if image else "this machine"
    probed = probe_target(image, runtime, backend or str(manifest.env.get("backend") or "cpu"))
    env = EnvKey.from_dict(probed.get("env") or {})
    factors = probed.get("key_factors")
    return predict(
        manifest,
        env,
        factors if isinstance(factors, dict) else None,
        source=label,
        target=target,
    )


def bundle_manifest(
    source: str | Path, *, store: Path | None = None, insecure: bool | None = None
) -> tuple[str, Manifest]:
    """(label, manifest) of what `source` names; NothingToRestore when it names nothing."""
    if is_bundle(source):
        if not Path(source).is_file():
            raise NothingToRestore(f"{source}: no such bundle")
        return str(source), read_manifest(Path(source))
    from warmer.store import Store

    with Store(store) as opened:
        _info, manifest = in_store(
            opened, str(source), insecure=insecure, touch=False, restoring=True
        )
    return str(source), manifest


def probe_target(image: str | None, runtime: str, backend: str) -> dict[str, Any]:
    """The agent probe's answer in the target: `{"env": …, "key_factors": …}`."""
    package_dir = os.path.dirname(os.path.abspath(warmer.__file__))
    spec = ContainerSpec(
        image=image or "",
        command=["python3", "-m", "warmer.agent", "probe", "--key-factors"],
        env={"PYTHONPATH": os.path.dirname(AGENT_PACKAGE_TARGET), "PYTHONUNBUFFERED": "1"},
        secret_names=(),
        mounts=(Mount(package_dir, AGENT_PACKAGE_TARGET, read_only=True),),
        labels={"warmer.job": "check", "warmer.run": uuid.uuid4().hex[:12]},
        backend=backend,
        gpus="all",
    )
    with get_runtime(runtime).start(spec) as session:
        outcome = session.wait(PROBE_TIMEOUT_S, lambda line: None)
    where = f"in {image}" if image else "on this machine"
    if outcome.timed_out:
        raise JobFailed(
            f"the probe {where} took more than {PROBE_TIMEOUT_S:.0f}s", outcome.log_tail
        )
    for line in reversed(outcome.stdout_lines):
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and isinstance(document.get("env"), dict):
            return document
    raise JobFailed(
        f"the probe {where} printed no answer (exit code {outcome.exit_code}); "
        "does the image have python3?",
        outcome.log_tail,
    )


def predict(
    manifest: Manifest,
    here: EnvKey,
    here_factors: Mapping[str, object] | None,
    *,
    source: str = "",
    target: str = "",
) -> CheckResult:
    """Per cache kind of `manifest`: hit, or miss with every differing part of its key."""
    differences = env_differences(EnvKey.from_dict(manifest.env), here)
    differences += factor_differences(manifest.key_factors, here_factors)
    counts: dict[str, int] = {}
    for entry in manifest.files:
        if entry.kind != "other":
            counts[entry.kind] = counts.get(entry.kind, 0) + 1
    verdicts = []
    for kind, files in sorted(counts.items(), key=lambda item: KINDS.index(item[0])):
        missing = [d for d in differences if d.misses(kind)]
        verdicts.append(KindVerdict(kind, files, not missing, missing))
    warnings = [str(d) for d in differences if not d.kinds]
    if manifest.key_factors is None:
        warnings.append(
            "the bundle records no key factors (made by an older warmer): only the "
            "environment key was compared"
        )
    if here_factors is None:
        warnings.append("the target's key factors could not be read: only the environment key")
    return CheckResult(
        source=source,
        target=target,
        ref=manifest.ref,
        env_tag=manifest.env_tag,
        target_env_tag=here.tag,
        exact=manifest.key_factors is not None and here_factors is not None,
        kinds=verdicts,
        warnings=warnings,
    )
