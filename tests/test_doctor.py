"""`warmer doctor` against real things: a store, a lock held by another process, a tmpfs that
is nearly full, a registry port where nothing listens, engines that do not answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from conftest import saved_triton
from helpers.registry import REGISTRY, needs_registry
from test_crash import SmallDisk, small_disk  # noqa: F401 (the fixture)

from warmer.cli import cli

NAMES = {"config", "engine", "registry", "store", "free space", "env key"}


def doctor(store: Path, env: dict[str, str] | None = None) -> tuple[Result, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["doctor", "--store", str(store), "--json"], env=env)
    document: dict[str, Any] = json.loads(result.stdout)
    return result, document


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    checks: list[dict[str, Any]] = document["checks"]
    return {check["name"]: check for check in checks}


def test_a_ready_machine_passes_with_a_line_per_check(triton_cache: Path, tmp_path: Path) -> None:
    saved_triton(triton_cache, tmp_path)
    result, document = doctor(tmp_path / "store", env={"WARMER_REGISTRY": ""})
    assert result.exit_code == 0, result.output
    checks = by_name(document)
    assert set(checks) >= NAMES and document["ok"] is True
    assert checks["store"]["status"] == "ok" and "1 snapshot(s)" in checks["store"]["detail"]
    assert checks["registry"]["detail"].startswith("none configured")
    assert all(check["status"] in ("ok", "warn", "fail") for check in document["checks"])

    table = CliRunner().invoke(cli, ["doctor", "--store", str(tmp_path / "store")])
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "DETAIL"]
    assert {line.split()[0] for line in lines[1:]} <= {"ok", "warn", "fail"}


def test_a_registry_out_of_reach_fails_with_exit_1(tmp_path: Path) -> None:
    result, document = doctor(tmp_path / "store", env={"WARMER_REGISTRY": "127.0.0.1:9/warm"})
    assert result.exit_code == 1 and document["ok"] is False
    registry = by_name(document)["registry"]
    assert registry["status"] == "fail" and "127.0.0.1:9" in registry["detail"]
    assert "1 check(s) failed: registry" in result.stderr


def test_a_broken_setting_fails_the_config_check_and_the_rest_still_run(tmp_path: Path) -> None:
    result, document = doctor(tmp_path / "store", env={"WARMER_BUNDLE_FORMAT": "bz2"})
    assert result.exit_code == 1
    checks = by_name(document)
    assert (
        checks["config"]["status"] == "fail"
        and "WARMER_BUNDLE_FORMAT" in checks["config"]["detail"]
    )
    assert set(checks) == NAMES and checks["env key"]["status"] != "fail"


def test_no_engine_is_a_warning_with_a_hint(tmp_path: Path) -> None:
    nowhere = f"unix://{tmp_path}/none.sock"
    env = {"DOCKER_HOST": nowhere, "WARMER_PODMAN_SOCKET": nowhere, "WARMER_REGISTRY": ""}
    result, document = doctor(tmp_path / "store", env=env)
    assert result.exit_code == 0, result.output
    engine = by_name(document)["engine"]
    assert engine["status"] == "warn" and "local runtime" in engine["hint"]


def test_a_store_held_by_a_prune_is_a_warning_not_a_wait(
    triton_cache: Path, tmp_path: Path
) -> None:
    saved_triton(triton_cache, tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from warmer.store import Store; s = Store(sys.argv[1]); s.list()\n"
            "with s._lock.exclusive():\n print('held', flush=True); sys.stdin.read()",
            str(tmp_path / "store"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result, document = doctor(tmp_path / "store", env={"WARMER_REGISTRY": ""})
    finally:
        holder.communicate("")
    assert result.exit_code == 0
    store = by_name(document)["store"]
    assert store["status"] == "warn" and "held alone" in store["detail"]


def test_a_nearly_full_disk_fails(small_disk: SmallDisk) -> None:  # noqa: F811
    result, document = doctor(small_disk.path / "store", env={"WARMER_REGISTRY": ""})
    assert result.exit_code == 1
    space = [c for c in document["checks"] if c["name"] == "free space"]
    assert any(c["status"] == "fail" and str(small_disk.path) in c["detail"] for c in space)


@needs_registry
def test_the_configured_registry_answers(tmp_path: Path) -> None:
    result, document = doctor(tmp_path / "store", env={"WARMER_REGISTRY": f"{REGISTRY}/warm"})
    registry = by_name(document)["registry"]
    assert registry["status"] == "ok" and "answers" in registry["detail"], result.output
