"""Fuzzing (hypothesis) of what signatures bring in from others: DSSE envelopes and in-toto
statements, bytes flipped, wrong shapes, bad base64, deep nesting and huge payloads.

The parsers may raise only TrustError, and every command that reads an envelope (restore,
import, push of a bundle file, show, pull) exits 2 with no traceback, writing nothing.
Examples are few and derandomized, with no example database, as in tests/test_fuzz.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers.registry import REGISTRY, needs_registry
from hypothesis import given, settings
from hypothesis import strategies as st

from warmer.bundle import read_manifest
from warmer.cli import cli
from warmer.errors import TrustError
from warmer.provenance import Trust, check_subject
from warmer.signing import (
    MAX_ENVELOPE_BYTES,
    envelope_bytes,
    load_public_key,
    load_signer,
    read_envelopes,
    sidecar,
    sign,
)


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None)


def warmer(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


text = st.text(max_size=12) | st.tuples(
    st.text(max_size=4), st.characters(categories=["Cs"]), st.text(max_size=4)
).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
nested = st.integers(1, 100_000).map(lambda depth: "[" * depth + "]" * depth)
b64 = st.binary(max_size=64).map(lambda data: base64.b64encode(data).decode())
#: Statements as an attacker writes them: the right keys with wrong values, and the reverse.
statements = json_values | st.fixed_dictionaries(
    {
        "_type": st.just("https://in-toto.io/Statement/v1") | text,
        "subject": json_values
        | st.lists(
            st.fixed_dictionaries(
                {"name": text, "digest": json_values | st.dictionaries(text, text)}
            ),
            max_size=3,
        ),
        "predicateType": text,
        "predicate": json_values,
    }
)
payloads = (
    statements.map(lambda value: json.dumps(value).encode(errors="surrogatepass"))
    | nested.map(str.encode)
    | st.binary(max_size=64)
)
envelopes = json_values | st.fixed_dictionaries(
    {
        "payload": payloads.map(lambda data: base64.b64encode(data).decode()) | text,
        "payloadType": st.just("application/vnd.in-toto+json") | text,
        "signatures": json_values
        | st.lists(
            st.fixed_dictionaries({"keyid": text | st.just(""), "sig": b64 | text}), max_size=3
        ),
    }
)
#: Whole envelope files: JSON lines of envelopes, or anything at all.
documents = (
    st.lists(envelopes, min_size=1, max_size=3).map(
        lambda items: b"\n".join(json.dumps(i).encode(errors="surrogatepass") for i in items)
    )
    | nested.map(str.encode)
    | st.binary(max_size=256)
)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A saved bundle, a trusted key pair, and a store that keeps the bundle's snapshot."""
    where = tmp_path_factory.mktemp("fuzz-provenance")
    assert warmer("key", "generate", "-o", where / "ci").exit_code == 0
    (where / "cache" / "KEY").mkdir(parents=True)
    (where / "cache" / "KEY" / "k.cubin").write_bytes(b"kernel")
    env = {"TRITON_CACHE_DIR": str(where / "cache"), "WARMER_STORE": str(where / "store")}
    done = warmer("save", "--name", "fz", "--kinds", "triton", "--out", where, "--json", env=env)
    assert done.exit_code == 0, done.output
    yield {
        "where": where,
        "bundle": Path(json.loads(done.stdout)["bundle"]),
        "key": where / "ci",
        "store": where / "store",
        "manifest": read_manifest(Path(json.loads(done.stdout)["bundle"])),
    }


def refused(result: Result) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def objects(store: Path) -> list[Path]:
    """The objects a store holds (none when it was never made)."""
    return list((store / "store-v1" / "objects").rglob("*"))


@given(documents)
@fuzz(120)
def test_the_parsers_raise_only_trust_errors(made: dict[str, Any], data: bytes) -> None:
    with contextlib.suppress(TrustError):
        read_envelopes(data, "fuzz")
    with contextlib.suppress(TrustError):
        check_subject(data, made["manifest"], "fuzz")


@given(documents)
@fuzz(60)
def test_every_command_that_reads_a_signature_refuses_a_hostile_one(
    made: dict[str, Any], data: bytes
) -> None:
    bundle, key = made["bundle"], made["key"]
    sidecar(bundle).write_bytes(data)
    root = made["where"] / f"root-{uuid.uuid4().hex[:8]}"
    store = made["where"] / f"store-{uuid.uuid4().hex[:8]}"
    trust = ("--trust", f"{key}.pub")
    refused(warmer("restore", bundle, "--root", root, *trust))
    refused(warmer("import", bundle, "--store", store, *trust))
    refused(warmer("import", bundle, "--store", store))
    refused(warmer("push", bundle, "127.0.0.1:9/fuzz/x:t", "--store", store))
    assert not root.exists() and objects(store) == []
    kept = made["store"] / "store-v1" / "attestations"
    for path in kept.iterdir():
        path.write_bytes(data)
    refused(warmer("show", "fz", "--store", made["store"]))


@pytest.mark.parametrize("part", ["payload", "sig", "lines", "statement"])
def test_huge_envelopes_and_statements_are_refused_before_parsing(
    made: dict[str, Any], part: str
) -> None:
    """Past each limit: the file, a line count, a statement (signed by the trusted key)."""
    signer = load_signer(made["key"], lambda: None)
    huge = b" " * (MAX_ENVELOPE_BYTES - 1000)
    data = {
        "payload": b'{"a":"' + b"x" * (MAX_ENVELOPE_BYTES + 1) + b'"}',
        "sig": envelope_bytes(sign(b"{}", signer)) + huge + b"x" * 2000,
        "lines": b"{}\n" * 100,
        "statement": envelope_bytes(sign(b'{"_type":"' + b"x" * (1 << 20) + b'"}', signer)),
    }[part]
    trust = Trust((load_public_key(Path(f"{made['key']}.pub")),))
    with pytest.raises(TrustError, match=r"limit|more than|envelopes"):
        trust.check(data, read_manifest(made["bundle"]), "huge", "-")
    sidecar(made["bundle"]).write_bytes(data)
    refused(
        warmer(
            "restore",
            made["bundle"],
            "--root",
            made["where"] / "r",
            "--trust",
            f"{made['key']}.pub",
        )
    )


@needs_registry
@given(documents)
@fuzz(8)
def test_pull_refuses_a_hostile_signature_referrer(made: dict[str, Any], data: bytes) -> None:
    from warmer.oci import Reference, Registry
    from warmer.registry import push_attestation

    repo = f"{REGISTRY}/fuzz/{uuid.uuid4().hex[:10]}"
    sidecar(made["bundle"]).unlink(missing_ok=True)
    pusher = made["where"] / f"push-{uuid.uuid4().hex[:8]}"
    pushed = warmer("push", made["bundle"], repo + ":t", "--store", pusher, "--json")
    assert pushed.exit_code == 0, pushed.output
    digest = json.loads(pushed.stdout)["digest"]
    push_attestation(Registry(Reference.parse(repo)), digest, 0, data)
    clean = made["where"] / f"pull-{uuid.uuid4().hex[:8]}"
    refused(warmer("pull", f"{repo}:t", "--store", clean, "--trust", f"{made['key']}.pub"))
    refused(warmer("pull", f"{repo}:t", "--store", clean))
    assert objects(clean) == []
