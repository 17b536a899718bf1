"""A job's secrets stay out of everything warmer prints and publishes: a multi-line value is
masked line by line, and a run that wrote a secret's value into its caches publishes nothing
(exit 3, naming the file and the secret, never the value)."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import Engine
from helpers.run import warmer

from warmer.caches import CacheRoot
from warmer.harvest import SecretScan, collect_stream
from warmer.runtimes.base import secret_pieces
from warmer.store import Store

SECRET_NAME = "WARMER_TEST_KEY"


def multi_line_secret() -> str:
    """A PEM-like value, unique to the test, so that any copy of it found is a leak."""
    body = uuid.uuid4().hex
    return f"-----BEGIN TEST KEY-----\n{body[:16]}\n{body[16:]}\n-----END TEST KEY-----"


def test_a_scan_finds_a_value_split_across_reads() -> None:
    secret = b"value-" + uuid.uuid4().hex.encode()
    data = b"x" * 1000 + secret + b"y" * 1000
    for step in (1, 7, 1000, 1003, len(data)):
        scan = SecretScan({"A": [secret], "B": [b"absent-value"]})
        reader = scan.reader(io.BytesIO(data))
        while reader.read(step):
            pass
        assert scan.found == {"A"}, step


def test_a_large_streamed_file_with_a_secret_is_dropped_from_the_store(tmp_path: Path) -> None:
    """Files over 16 MiB stream into the store while they are scanned: one that holds a
    secret (across the store's 1 MiB copy chunks) is removed again, the others are kept."""
    secret = multi_line_secret()
    line = secret.splitlines()[1].encode()
    big = bytearray(17 << 20)
    big[(1 << 20) - 5 : (1 << 20) - 5 + len(line)] = line  # straddles the first chunk's end
    clean = b"kernel bytes"
    members = [
        ("/root/.triton/cache/K/big.cubin", len(big), 0o644, io.BytesIO(bytes(big))),
        ("/root/.triton/cache/K/k.json", len(clean), 0o644, io.BytesIO(clean)),
    ]
    needles = {SECRET_NAME: [p.encode() for p in secret_pieces(secret)]}
    with Store(tmp_path / "store") as store:
        harvest = collect_stream(
            store, members, [CacheRoot("triton", "/root/.triton/cache")], secrets=needles
        )
        assert harvest.leaks == [("/root/.triton/cache/K/big.cubin", SECRET_NAME)]
        assert [entry.path for entry in harvest.entries] == ["/root/.triton/cache/K/k.json"]
        assert store.has(harvest.entries[0].digest)
    assert not [
        p for p in (tmp_path / "store").rglob("*") if p.is_file() and line in p.read_bytes()
    ]


def command_job(tmp_path: Path, image: str | None) -> Path:
    """A job that prints its secret (multi-line) and writes it into its Triton cache."""
    cache = '"${TRITON_CACHE_DIR:-${TRITON_HOME:-/root}/.triton/cache}"'  # local: TRITON_HOME
    script = (
        f'printf "the key is %s\\n" "${SECRET_NAME}" >&2; '
        f"mkdir -p {cache}/KEY {cache}/LEAK; echo kernel > {cache}/KEY/k.cubin; "
        f'printf "%s" "${SECRET_NAME}" > {cache}/LEAK/k.json'
    )
    job = {
        "version": 1,
        "name": "leaky",
        "image": image,
        "engine": {"kind": "command", "command": ["sh", "-c", script]},
        "secrets": [SECRET_NAME],
        "timeout": "5m",
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in job.items() if v is not None}))
    return path


def check_leaky_run(tmp_path: Path, engine: Engine | None) -> None:
    secret = multi_line_secret()
    job = command_job(tmp_path, engine.image if engine else None)
    out = tmp_path / "dist"
    args = ["run", str(job), "--out", str(out), "--json"]
    done = warmer(
        *args,
        *(["--runtime", "local"] if engine is None else []),
        tmp_path=tmp_path,
        engine=engine,
        env={SECRET_NAME: secret},
    )
    assert done.returncode == 3, done.stderr
    printed = done.stdout + done.stderr
    assert "the key is ***" in done.stderr
    for line in secret.splitlines():
        assert line not in printed, f"{line!r} was printed"
    [result] = json.loads(done.stdout)["jobs"]
    assert not result["ok"]
    assert f"LEAK/k.json holds {SECRET_NAME}" in result["error"]
    assert "nothing was published" in result["error"]
    assert not out.exists() or list(out.iterdir()) == []
    with Store(tmp_path / "store") as store:
        assert store.list() == []
    stored = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert not [p for p in stored if secret.splitlines()[1].encode() in p.read_bytes()]


def test_a_local_job_that_leaks_a_secret_publishes_nothing(tmp_path: Path) -> None:
    check_leaky_run(tmp_path, None)


@pytest.mark.docker
def test_a_container_job_that_leaks_a_secret_publishes_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    check_leaky_run(tmp_path, engine)
