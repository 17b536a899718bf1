"""Settings: one model, the example configs that document it, and what the settings change."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from helpers.run import WRITE_KERNEL, warmer, write_job

from warmer.config import Settings, load_settings, settings
from warmer.errors import UsageError

CONFIGS = REPO / "configs"


def test_the_example_configs_list_exactly_the_settings() -> None:
    documented = set(
        re.findall(r"^# (WARMER_[A-Z_]+)=", (CONFIGS / "warmer.env").read_text(), re.M)
    )
    assert documented == set(Settings.env_names())

    example = yaml.safe_load((CONFIGS / "warmer.yaml").read_text())
    keys = {
        f"{section}.{key}" if isinstance(value, dict) else section
        for section, value in example.items()
        for key in (value if isinstance(value, dict) else [None])
    }
    assert keys == {*Settings.file_keys(), "version"}
    loaded = load_settings({"WARMER_CONFIG": str(CONFIGS / "warmer.yaml")})
    assert loaded.bundle_format == "zst" and [h.name for h in loaded.hosts] == [
        "gpu-a",
        "mi300",
        "builder",
    ]


def test_the_environment_wins_and_mistakes_name_where_they_are(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("bundle:\n  format: gz\nstore:\n  max_size: 20000000000\n")
    env = {"WARMER_CONFIG": str(config)}
    assert load_settings(env).bundle_format == "gz"
    assert load_settings(env).max_size == "20000000000"
    assert load_settings({**env, "WARMER_BUNDLE_FORMAT": "zst"}).bundle_format == "zst"
    with pytest.raises(UsageError, match=r"^WARMER_BUNDLE_FORMAT: Input should be 'zst' or 'gz'"):
        load_settings({**env, "WARMER_BUNDLE_FORMAT": "bz2"})
    config.write_text("bundle:\n  format: xz\n")
    with pytest.raises(UsageError, match=rf"^{re.escape(str(config))}: bundle\.format: "):
        load_settings(env)
    config.write_text("hosts:\n  - {name: a, url: x, backend: tpu}\n")
    with pytest.raises(UsageError, match=r"hosts\[0\]\.backend: .*'tpu' is not one of"):
        load_settings(env)


def test_settings_are_read_once_until_what_they_come_from_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("store:\n  max_size: 1G\n")
    monkeypatch.setenv("WARMER_CONFIG", str(config))
    first = settings()
    assert settings() is first and first.max_size == "1G"
    monkeypatch.setenv("WARMER_BUNDLE_FORMAT", "gz")
    assert settings() is not first and settings().bundle_format == "gz"
    config.write_text("store:\n  max_size: 2G\n  path: ~/elsewhere\n")
    assert settings().max_size == "2G" and settings().store == Path.home() / "elsewhere"


def test_bundle_format_sets_what_run_and_export_write(tmp_path: Path) -> None:
    script = WRITE_KERNEL
    job = write_job(
        tmp_path,
        None,
        image=None,
        engine={"kind": "command", "command": ["bash", "-c", script]},
        warmup={},
    )
    gz = {"WARMER_BUNDLE_FORMAT": "gz"}
    ran = warmer(
        "run", str(job), "--runtime", "local", "--out", str(tmp_path / "dist"), "--json",
        tmp_path=tmp_path, env=gz,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)["jobs"][0]
    bundle = Path(result["bundle"])
    assert bundle.name.endswith(".tar.gz") and bundle.read_bytes()[:2] == b"\x1f\x8b"

    for name in ("out", "out-gz"):
        (tmp_path / name).mkdir()
    exported = warmer("export", result["ref"], "-o", str(tmp_path / "out"), tmp_path=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert [p.name.endswith(".tar.zst") for p in (tmp_path / "out").iterdir()] == [True]
    exported = warmer(
        "export", result["ref"], "-o", str(tmp_path / "out-gz"), tmp_path=tmp_path, env=gz
    )
    assert exported.returncode == 0, exported.stderr
    assert [p.name.endswith(".tar.gz") for p in (tmp_path / "out-gz").iterdir()] == [True]

    wrong = warmer("export", result["ref"], "-o", str(tmp_path / "x"), tmp_path=tmp_path,
                   env={"WARMER_BUNDLE_FORMAT": "bz2"})  # fmt: skip
    assert wrong.returncode == 2 and "WARMER_BUNDLE_FORMAT" in wrong.stderr
