"""Signed provenance: real keys, a real signed run (the local runtime, the command engine), its
statement checked against the job that made it, and every refusal of `--trust` with the target
and the store left as they were. The registry tests push to the real loopback registry.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers.registry import REGISTRY, needs_registry
from helpers.run import WRITE_KERNEL
from helpers.run import warmer as warmer_process

import warmer as api
from warmer.bundle import open_bundle, read_manifest, write_bundle
from warmer.cli import cli
from warmer.errors import TrustError
from warmer.provenance import PREDICATE_TYPE, payload, statement
from warmer.signing import envelope_bytes, load_signer, sidecar, sign
from warmer.store import Store

SECRET = "s3cr3t-4711"
COMMAND = WRITE_KERNEL


def warmer(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """The command in this process (CliRunner), its exception left in the result."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def refused(result: Result, why: str) -> None:
    """Exit 2, the reason named, and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert why in result.output, result.output


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`ci` (ed25519, the trusted signer) and `other` (ECDSA P-256, a foreign key)."""
    where = tmp_path_factory.mktemp("keys")
    for name, kind in (("ci", "ed25519"), ("other", "ecdsa")):
        done = warmer("key", "generate", "--type", kind, "-o", where / name)
        assert done.exit_code == 0, done.output
    return {"ci": where / "ci", "other": where / "other"}


def save(tmp_path: Path, name: str, content: bytes, *sign: str | Path) -> Path:
    """`warmer save` of a Triton-like cache holding `content`, signed with `sign`."""
    cache = tmp_path / f"cache-{name}"
    (cache / "KEY").mkdir(parents=True)
    (cache / "KEY" / "k.cubin").write_bytes(content)
    out = tmp_path / f"dist-{name}"
    env = {"TRITON_CACHE_DIR": str(cache), "WARMER_STORE": str(tmp_path / "made")}
    done = warmer(
        "save", "--name", name, "--kinds", "triton", "--out", out, "--json", *sign, env=env
    )
    assert done.exit_code == 0, done.output
    return Path(json.loads(done.stdout)["bundle"])


def state(root: Path, store: Path) -> tuple[list[str], list[str]]:
    """Every path under the target root and under the store, but its lock and index files
    (opening a store may create them; a refusal must add no ref, object or signature)."""
    target = sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []
    kept = (
        sorted(
            str(p.relative_to(store))
            for p in store.rglob("*")
            if p.is_file() and not p.name.startswith(("index.sqlite", "lock", "CACHEDIR"))
        )
        if store.exists()
        else []
    )
    return target, kept


# -- keys ------------------------------------------------------------------------------------------


def test_key_generate_writes_a_private_0600_and_a_public_key(tmp_path: Path) -> None:
    passphrase = "correct horse battery"
    env = {"WARMER_SIGNING_PASSPHRASE": passphrase}
    done = warmer("key", "generate", "-o", tmp_path / "enc", "--json", env=env)
    assert done.exit_code == 0, done.output
    made = json.loads(done.stdout)
    assert made["encrypted"] and made["type"] == "ed25519" and len(made["keyid"]) == 64
    assert stat.S_IMODE((tmp_path / "enc").stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "enc").read_bytes()
    assert passphrase not in done.output
    assert (tmp_path / "enc.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    again = warmer("key", "generate", "-o", tmp_path / "enc", env=env)
    refused(again, "already exists")

    signer = load_signer(tmp_path / "enc", lambda: passphrase)
    assert signer.public_key.keyid == made["keyid"]
    cache = tmp_path / "cache" / "KEY"
    cache.mkdir(parents=True)
    (cache / "k.cubin").write_bytes(b"x")
    wrong = {"WARMER_SIGNING_PASSPHRASE": "wrong", "TRITON_CACHE_DIR": str(cache.parent)}
    store = tmp_path / "store"
    done = warmer(
        "save", "--kinds", "triton", "--sign", tmp_path / "enc", "--store", store, env=wrong
    )
    refused(done, "wrong passphrase")
    assert not store.exists()  # checked before any work


# -- a signed run ----------------------------------------------------------------------------------


def test_a_signed_run_records_its_provenance_and_restores_under_trust(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "signed-run",
                "backend": "cpu",
                "engine": {"kind": "command", "command": ["bash", "-c", COMMAND]},
                "secrets": ["WARMER_TEST_TOKEN"],
                "env": {"WARMER_TEST_MODE": "on"},
                "timeout": "2m",
            }
        )
    )
    done = warmer_process(
        "run", str(job), "--runtime", "local", "--sign", str(keys["ci"]), "--out",
        str(tmp_path / "dist"), "--json", tmp_path=tmp_path, env={"WARMER_TEST_TOKEN": SECRET},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stdout)["jobs"][0]
    bundle = Path(entry["bundle"])
    assert entry["signature"] == str(sidecar(bundle))
    signed = sidecar(bundle).read_bytes()
    assert SECRET.encode() not in signed and SECRET not in done.stdout + done.stderr

    manifest = read_manifest(bundle)
    envelope = json.loads(signed)
    document = json.loads(base64.b64decode(envelope["payload"]))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert document["_type"] == "https://in-toto.io/Statement/v1"
    assert document["predicateType"] == PREDICATE_TYPE
    assert document["subject"] == [
        {"name": bundle.name.removesuffix(".tar.zst"), "digest": {"blake3": manifest.digest[7:]}}
    ]
    build = document["predicate"]["buildDefinition"]
    assert build["buildType"] == "urn:warmer:run:v1"
    assert build["externalParameters"]["job"] == manifest.job
    made = build["externalParameters"]["job"]
    assert made["name"] == "signed-run" and made["engine"]["command"][-1] == COMMAND
    assert made["secrets"] == ["WARMER_TEST_TOKEN"] and made["env"] == {"WARMER_TEST_MODE": "on"}
    inner = build["internalParameters"]
    assert inner["runtime"] == "local" and inner["host"] == socket.gethostname()
    assert (inner["env"], inner["envTag"]) == (manifest.env, manifest.env_tag)
    run = document["predicate"]["runDetails"]
    assert run["builder"]["version"] == {"warmer": api.__version__}
    assert run["metadata"]["startedOn"] <= run["metadata"]["finishedOn"]

    shown = warmer("show", "signed-run", "--json", env={"WARMER_STORE": str(tmp_path / "store")})
    provenance = json.loads(shown.stdout)["provenance"]
    assert provenance["statement"] == document and len(provenance["signatures"]) == 1

    root = tmp_path / "root"
    ok = warmer("restore", bundle, "--root", root, "--trust", f"{keys['ci']}.pub", "--json")
    assert ok.exit_code == 0, ok.output
    assert [p.read_bytes() for p in root.rglob("k.cubin")] == [b"kernel\n"]


# -- refusals ------------------------------------------------------------------------------------


def check_refused(
    tmp_path: Path, bundle: Path, trusted: Path, why: str, env: dict[str, str] | None = None
) -> None:
    """`restore` and `import` of `bundle` under trust of `trusted` both refuse, naming `why`,
    with the target and the store as they were."""
    root, store = tmp_path / "root", tmp_path / "store"
    before = state(root, store)
    trust = ["--trust", trusted] if trusted else []
    refused(warmer("restore", bundle, "--root", root, *trust, env=env), why)
    refused(warmer("import", bundle, "--store", store, *trust, env=env), why)
    assert state(root, store) == before
    with pytest.raises(TrustError, match=why):
        api.restore(str(bundle), root=str(root), trust=[trusted] if trusted else None)
    assert state(root, store) == before


def test_unsigned_and_untrusted_bundles_are_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    trusted = Path(f"{keys['ci']}.pub")
    unsigned = save(tmp_path, "unsigned", b"u" * 64)
    assert not sidecar(unsigned).exists()
    check_refused(tmp_path, unsigned, trusted, "unsigned")

    foreign = save(tmp_path, "foreign", b"f" * 64, "--sign", keys["other"])
    check_refused(tmp_path, foreign, trusted, "signed by an untrusted key")

    # the same statement re-signed with a foreign key in place of the trusted one
    signed = save(tmp_path, "resigned", b"r" * 64, "--sign", keys["ci"])
    data = base64.b64decode(json.loads(sidecar(signed).read_bytes())["payload"])
    other = load_signer(keys["other"], lambda: None)
    sidecar(signed).write_bytes(envelope_bytes(sign(data, other)))
    check_refused(tmp_path, signed, trusted, "signed by an untrusted key")


def test_another_bundles_statement_and_a_bundle_altered_after_signing_are_refused(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    trusted = Path(f"{keys['ci']}.pub")
    first = save(tmp_path, "first", b"1" * 64, "--sign", keys["ci"])
    second = save(tmp_path, "second", b"2" * 64, "--sign", keys["ci"])
    sidecar(second).write_bytes(sidecar(first).read_bytes())
    check_refused(tmp_path, second, trusted, "the signed statement is about another bundle")

    # its manifest edited (a verify result claimed): the snapshot id no longer matches
    manifest = read_manifest(first)
    edited = manifest.with_verify({"hit_rate": 1.0})
    write_bundle(edited, lambda _digest: io.BytesIO(b"1" * 64), first)  # first's own bytes
    check_refused(tmp_path, first, trusted, "altered after signing")

    # a file's bytes changed behind an intact manifest: caught against the signed blake3
    # (write_bundle checks what it writes, so the bytes are changed in a plain tar after it)
    plain = first.with_name(first.name.removesuffix(".zst"))
    write_bundle(manifest, lambda _digest: io.BytesIO(b"1" * 64), plain, "tar")
    plain.write_bytes(plain.read_bytes().replace(b"1" * 64, b"X" * 64))
    sidecar(plain).write_bytes(sidecar(first).read_bytes())
    with open_bundle(plain) as opened:
        assert opened.manifest.digest == manifest.digest
    check_refused(tmp_path, plain, trusted, "altered after signing")


def test_trust_require_in_the_settings_applies_without_options(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    unsigned = save(tmp_path, "plain", b"p" * 64)
    signed = save(tmp_path, "signed", b"s" * 64, "--sign", keys["ci"])
    env = {"WARMER_TRUST_REQUIRE": "1", "WARMER_TRUST_KEYS": f"{keys['ci']}.pub"}
    root = tmp_path / "root"
    refused(warmer("restore", unsigned, "--root", root, env=env), "unsigned")
    assert not root.exists()
    assert warmer("restore", signed, "--root", root, env=env).exit_code == 0
    none = warmer("restore", signed, "--root", root, env={"WARMER_TRUST_REQUIRE": "1"})
    refused(none, "no key is trusted")
    not_a_key = warmer("restore", signed, "--root", root, "--trust", keys["ci"])
    refused(not_a_key, "not a PEM public key")


def test_import_export_keep_the_signature_and_gc_drops_it_with_its_snapshot(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    signed = save(tmp_path, "kept", b"k" * 64, "--sign", keys["ci"])
    store = tmp_path / "store"
    trust = ("--trust", f"{keys['ci']}.pub")
    assert warmer("import", signed, "--store", store, *trust).exit_code == 0
    out = tmp_path / "again.tar.gz"
    exported = warmer("export", "kept", "-o", out, "--store", store, "--json")
    assert json.loads(exported.stdout)["signature"] == str(sidecar(out))
    root = tmp_path / "root"
    assert warmer("restore", out, "--root", root, *trust).exit_code == 0  # gz: same subject
    restored = warmer("restore", "kept", "--root", root, "--store", store, *trust)
    assert restored.exit_code == 0, restored.output
    # a second key signs the kept statement too: both signatures travel
    assert (
        warmer("export", "kept", "-o", out, "--store", store, "--sign", keys["other"]).exit_code
        == 0
    )
    assert len(json.loads(sidecar(out).read_bytes())["signatures"]) == 2
    assert warmer("restore", out, "--root", root, "--trust", f"{keys['other']}.pub").exit_code == 0

    opened = Store(store)
    opened.remove_ref(opened.resolve("kept")[0].ref)
    opened.gc()
    opened.close()
    assert list((store / "store-v1" / "attestations").iterdir()) == []


# -- through the registry --------------------------------------------------------------------------


@needs_registry
def test_a_signed_push_restores_under_trust_on_a_clean_store(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    repo = f"{REGISTRY}/sign/{uuid.uuid4().hex[:10]}"
    signed = save(tmp_path, "pushed", os.urandom(4096), "--sign", keys["ci"])
    pushed = warmer("push", signed, repo, "--store", tmp_path / "pusher", "--json")
    assert pushed.exit_code == 0, pushed.output
    report = json.loads(pushed.stdout)
    assert report["attestation"].endswith(report["digest"].replace(":", "-") + ".att")
    target = f"{repo}:{report['reference'].rsplit(':', 1)[1]}"

    root, clean = tmp_path / "root", tmp_path / "clean"
    before = state(root, clean)
    wrong = warmer(
        "restore", target, "--root", root, "--store", clean, "--trust", f"{keys['other']}.pub"
    )
    refused(wrong, "signed by an untrusted key")
    refused(
        warmer("pull", target, "--store", clean, "--trust", f"{keys['other']}.pub"), "untrusted"
    )
    assert state(root, clean) == before  # nothing fetched, nothing written

    trust = ("--trust", f"{keys['ci']}.pub")
    done = warmer("restore", target, "--root", root, "--store", clean, *trust, "--json")
    assert done.exit_code == 0, done.output
    assert [p.stat().st_size for p in root.rglob("k.cubin")] == [4096]
    shown = json.loads(warmer("show", "pushed", "--store", clean, "--json").stdout)
    assert (
        shown["provenance"]["statement"]["subject"][0]["digest"]["blake3"]
        == (read_manifest(signed).digest[7:])
    )

    # an unsigned push is refused under trust, and taken without it
    unsigned = save(tmp_path, "bare", b"b" * 64)
    bare = json.loads(
        warmer("push", unsigned, repo + ":bare", "--store", tmp_path / "p2", "--json").stdout
    )
    assert bare["attestation"] is None
    refused(warmer("pull", f"{repo}:bare", "--store", tmp_path / "c2", *trust), "unsigned")
    assert warmer("pull", f"{repo}:bare", "--store", tmp_path / "c2").exit_code == 0


@needs_registry
def test_a_signed_run_pushed_restores_under_trust_on_a_clean_store(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    prefix = f"{REGISTRY}/sign/{uuid.uuid4().hex[:10]}"
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "pushed-run",
                "backend": "cpu",
                "engine": {"kind": "command", "command": ["bash", "-c", COMMAND]},
                "timeout": "2m",
            }
        )
    )
    done = warmer_process(
        "run", str(job), "--runtime", "local", "--sign", str(keys["ci"]), "--push",
        "--registry", prefix, "--out", str(tmp_path / "dist"), "--json", tmp_path=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pushed = json.loads(done.stdout)["jobs"][0]["push"]
    assert pushed["attestation"].endswith(".att")
    root, clean = tmp_path / "root", tmp_path / "clean"
    restored = warmer(
        "restore", pushed["reference"], "--root", root, "--store", clean,
        "--trust", f"{keys['ci']}.pub", "--json",
    )  # fmt: skip
    assert restored.exit_code == 0, restored.output
    assert [p.read_bytes() for p in root.rglob("k.cubin")] == [b"kernel\n"]
    shown = json.loads(warmer("show", "pushed-run", "--store", clean, "--json").stdout)
    build = shown["provenance"]["statement"]["predicate"]["buildDefinition"]
    assert build["buildType"] == "urn:warmer:run:v1"
    assert build["externalParameters"]["job"]["name"] == "pushed-run"


@needs_registry
def test_a_hostile_signature_referrer_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    from warmer.oci import Reference, Registry
    from warmer.registry import push_attestation

    repo = f"{REGISTRY}/sign/{uuid.uuid4().hex[:10]}"
    bundle = save(tmp_path, "hostile", b"h" * 64)
    report = json.loads(
        warmer("push", bundle, repo + ":t", "--store", tmp_path / "p", "--json").stdout
    )
    registry = Registry(Reference.parse(repo))
    trusted = load_signer(keys["ci"], lambda: None)
    foreign = read_manifest(save(tmp_path, "elsewhere", b"e" * 64))
    hostile: list[tuple[bytes, str]] = [
        (b"\xff not json", "not JSON"),
        (b'{"payload": 3, "payloadType": "x", "signatures": []}', "payload"),
        (b'{"payload": "!!!", "payloadType": "x", "signatures": []}', "payload"),
        (envelope_bytes(sign(b"[]", trusted)), "statement"),
        (envelope_bytes(sign(payload(statement(foreign, _made())), trusted)), "another bundle"),
    ]
    for data, why in hostile:
        push_attestation(registry, report["digest"], _manifest_size(repo, report["digest"]), data)
        for trust in ((), ("--trust", f"{keys['ci']}.pub")):
            clean = tmp_path / f"c{uuid.uuid4().hex[:6]}"
            refused(warmer("pull", f"{repo}:t", "--store", clean, *trust), why)
            assert state(tmp_path / "none", clean) == ([], [])


def _made() -> Any:
    from warmer.provenance import Made

    return Made("store")


def _manifest_size(repo: str, digest: str) -> int:
    """The size of the manifest as the registry holds it (the bytes a subject descriptor
    counts), read raw: warmer's client parses what it reads."""
    import requests

    from warmer.oci import OCI_MANIFEST

    host, _, path = repo.partition("/")
    answer = requests.get(
        f"http://{host}/v2/{path}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}, timeout=30
    )
    answer.raise_for_status()
    return len(answer.content)


def test_the_loader_answers_a_trust_refusal_with_a_status_and_writes_nothing(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    signed = save(tmp_path, "served", b"v" * 64, "--sign", keys["ci"])
    root = tmp_path / "root"
    refused = api.load(signed, root=root, trust=[f"{keys['other']}.pub"])
    assert refused.status == "refused_corrupt" and "untrusted" in refused.reasons[0]
    assert not root.exists()
    loaded = api.load(signed, root=root, trust=[f"{keys['ci']}.pub"])
    assert loaded.status == "loaded" and loaded.written == 1
