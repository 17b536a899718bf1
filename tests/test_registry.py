"""Bundles through a real OCI registry (Debian's docker-registry, started by .ci/registry-up).

Push, pull, `--auto`, the cold tier, layer reuse measured in bytes sent, a corrupted blob in
the registry's own storage, and the image form pulled by the real Docker engine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import IMAGE, compile_triton, saved_triton
from helpers.registry import REGISTRY, REGISTRY_DATA, needs_registry, synthetic

from warmer.cli import cli
from warmer.config import load_settings
from warmer.envkey import EnvKey
from warmer.errors import RegistryError, RegistryRefused, RegistryUnreachable, UsageError
from warmer.oci import Reference, credentials, sanitize_tag
from warmer.registry import LayerFiles, plan_layers
from warmer.store import Store
from warmer.store.manifest import FileEntry, Manifest


@pytest.fixture
def repo() -> str:
    """A repository of this test's own in the test registry."""
    return f"{REGISTRY}/test/{uuid.uuid4().hex[:10]}"


def warmer(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


# -- without a registry ------------------------------------------------------------------------


def test_references_parse_and_refuse() -> None:
    ref = Reference.parse("127.0.0.1:5055/team/caches:torch2.13.0-cpu")
    assert (ref.registry, ref.repository, ref.tag) == (
        "127.0.0.1:5055",
        "team/caches",
        "torch2.13.0-cpu",
    )
    assert Reference.parse("ghcr.io/acme/x").tag is None
    assert Reference.parse("docker.io/acme/x:1").registry == "registry-1.docker.io"
    for bad in ("caches", "acme/caches", "ghcr.io/Acme/x", "ghcr.io/acme/x:bad+tag"):
        with pytest.raises(UsageError):
            Reference.parse(bad)
    assert not Reference.looks_like("dist/x.tar.zst") and Reference.looks_like("localhost/a")
    assert sanitize_tag("torch2.6.0+cu124") == "torch2.6.0_cu124"


def test_credentials_from_env_docker_config_and_a_helper(tmp_path: Path) -> None:
    env = {"WARMER_REGISTRY_USERNAME": "robot", "WARMER_REGISTRY_PASSWORD": "s3cret"}
    assert credentials("r.example", env) == ("robot", "s3cret")
    config = tmp_path / "docker"
    config.mkdir()
    auth = base64.b64encode(b"alice:pw:with:colons").decode()
    (config / "config.json").write_text(
        json.dumps({"auths": {"r.example": {"auth": auth}}, "credHelpers": {"h.example": "fake"}})
    )
    assert credentials("r.example", {"DOCKER_CONFIG": str(config)}) == ("alice", "pw:with:colons")
    assert credentials("other.example", {"DOCKER_CONFIG": str(config)}) is None
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    # a real helper program: reads the server on stdin, answers JSON (the credential protocol)
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'printf \'{"ServerURL": "%s", "Username": "bob", "Secret": "tok"}\' "$server"\n'
    )
    helper.chmod(0o755)
    path_env = {"DOCKER_CONFIG": str(config), "PATH": f"{helper.parent}:{os.environ['PATH']}"}
    old_path = os.environ["PATH"]
    os.environ["PATH"] = path_env["PATH"]
    try:
        assert credentials("h.example", path_env) == ("bob", "tok")
    finally:
        os.environ["PATH"] = old_path


def test_config_file_errors_name_the_field(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "registry:\n  url: 127.0.0.1:5055/tier\nhosts:\n  - name: a\n    url: x\n    slots: 0\n"
    )
    with pytest.raises(UsageError, match=r"hosts\[0\]\.slots"):
        load_settings({"WARMER_CONFIG": str(config)})
    config.write_text("registry:\n  url: 127.0.0.1:5055/tier\n  tls: no\n")
    with pytest.raises(UsageError, match=r"registry\.tls: unknown key"):
        load_settings({"WARMER_CONFIG": str(config)})
    config.write_text("registry:\n  url: 127.0.0.1:5055/tier\nstore:\n  max_size: 2G\n")
    settings = load_settings({"WARMER_CONFIG": str(config), "WARMER_MAX_SIZE": "5G"})
    assert settings.registry == "127.0.0.1:5055/tier" and settings.max_size == "5G"


def test_plan_reuses_live_base_layers_and_whiteouts_what_went() -> None:
    def entry(path: str, digest: str, size: int) -> FileEntry:
        return FileEntry(path, "triton", "blake3:" + digest * 64, size, 0o644)

    old = [entry(f"/c/{i}", "a", 100) for i in range(10)]
    base = [
        LayerFiles("sha256:1", 1, "sha256:1", "t", [(e.path, e.digest, e.size) for e in old[:5]]),
        LayerFiles("sha256:2", 1, "sha256:2", "t", [(e.path, e.digest, e.size) for e in old[5:]]),
    ]
    # drop /c/0, change /c/6..9 (layer 2 mostly dead), add /c/new
    new = [*old[1:6], *(entry(f"/c/{i}", "b", 100) for i in range(6, 10)), entry("/c/new", "b", 5)]
    key = EnvKey.probe()
    manifest = Manifest("m", key.to_dict(), key.tag, key.digest, tuple(new))
    plan = plan_layers(manifest, base, "image")
    assert plan[0] is base[0] and len(plan) == 2
    files, whiteouts = plan[1]  # type: ignore[misc]
    assert sorted(e.path for e in files) == ["/c/5", "/c/6", "/c/7", "/c/8", "/c/9", "/c/new"]
    assert whiteouts == ["/c/0"]
    artifact = plan_layers(manifest, base, "artifact")
    assert artifact[1][1] == []  # type: ignore[index]


def _outward_address() -> str | None:
    """This machine's non-loopback address (no packet is sent), or None."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_plain_http_only_for_loopback_or_insecure() -> None:
    import http.server
    import threading

    from warmer.oci import Registry

    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")

    class Plain(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a registry that speaks plain HTTP only
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"tags": ["t1"]}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, 0), Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reference = Reference.parse(f"{address}:{server.server_port}/team/caches")
        with pytest.raises(RegistryRefused, match="--insecure") as refused:
            Registry(reference).tags()
        assert refused.value.exit_code == 2
        assert Registry(reference, insecure=True).tags() == ["t1"]
    finally:
        server.shutdown()


Answer = tuple[int, dict[str, str], bytes]


@pytest.fixture
def scripted() -> Iterator[tuple[str, dict[str, list[Answer]], list[str]]]:
    """A plain-HTTP server on loopback answering from a script: "METHOD /path" -> the answers
    to give in turn (the last one repeats). Yields its address, the script and the requests
    it saw ("METHOD /path", query left out)."""
    import http.server
    import threading

    script: dict[str, list[Answer]] = {"GET /v2/": [(200, {}, b"{}")]}
    seen: list[str] = []

    class Scripted(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            key = f"{self.command} {self.path.split('?')[0]}"
            seen.append(key)
            answers = script.get(key) or [(404, {}, b'{"errors": [{"code": "NAME_UNKNOWN"}]}')]
            status, headers, body = answers.pop(0) if len(answers) > 1 else answers[0]
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_port}", script, seen
    finally:
        server.shutdown()
        server.server_close()


def test_429_and_5xx_are_asked_again_then_give_up(
    scripted: tuple[str, dict[str, list[Answer]], list[str]],
) -> None:
    from warmer.oci import Registry

    address, script, seen = scripted
    tags = "GET /v2/team/x/tags/list"
    script[tags] = [
        (429, {"Retry-After": "0"}, b""),
        (503, {}, b""),  # no Retry-After: the backoff waits
        (200, {}, b'{"tags": ["t1"]}'),
    ]
    registry = Registry(Reference.parse(f"{address}/team/x"))
    assert registry.tags() == ["t1"]
    assert seen.count(tags) == 3

    # An upload answered 503 starts again with a new session.
    blob = b"layer bytes"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    script[f"HEAD /v2/team/x/blobs/{digest}"] = [(404, {}, b"")]
    script["POST /v2/team/x/blobs/uploads/"] = [(202, {"Location": "/v2/team/x/blobs/up/1"}, b"")]
    script["PUT /v2/team/x/blobs/up/1"] = [(503, {"Retry-After": "0"}, b""), (201, {}, b"")]
    assert registry.upload_blob(blob, digest, len(blob))
    assert seen.count("POST /v2/team/x/blobs/uploads/") == 2

    # Bounded: a registry that keeps failing is an error after a few attempts.
    script[tags] = [(502, {"Retry-After": "0"}, b"bad gateway")]
    before = seen.count(tags)
    with pytest.raises(RegistryError, match="HTTP 502") as failed:
        registry.tags()
    assert seen.count(tags) - before == 5 and failed.value.exit_code == 1


def test_registry_errors_say_what_to_do_and_exit_2_or_1(
    scripted: tuple[str, dict[str, list[Answer]], list[str]], tmp_path: Path
) -> None:
    import socket

    from warmer.oci import Registry

    address, script, _seen = scripted
    no_docker = tmp_path / "no-docker-config"
    no_docker.mkdir()
    env = {"DOCKER_CONFIG": str(no_docker), "WARMER_REGISTRY_USERNAME": "",
           "WARMER_REGISTRY_PASSWORD": ""}  # fmt: skip
    store = str(tmp_path / "store")

    # credentials: 401 and nothing to answer it with
    script["GET /v2/team/locked/manifests/t"] = [
        (401, {"WWW-Authenticate": 'Basic realm="r"'}, b"")
    ]
    locked = warmer("pull", f"{address}/team/locked:t", "--store", store, env=env)
    assert locked.exit_code == 2 and "docker login" in locked.output, locked.output

    # no such tag: nothing to restore (exit 5), and the tags that exist are named
    script["GET /v2/team/x/tags/list"] = [(200, {}, b'{"tags": ["a", "b"]}')]
    script["GET /v2/team/x/manifests/c"] = [
        (404, {}, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
    ]
    missing = warmer("pull", f"{address}/team/x:c", "--store", store, env=env)
    assert missing.exit_code == 5, missing.output
    assert f"c: no such tag in {address}/team/x; its tags: a, b" in missing.output

    # no such repository: --auto finds no tags, nothing to restore
    absent = warmer("pull", "--auto", f"{address}/team/absent", "--store", store, env=env)
    assert absent.exit_code == 5 and "has no tags (check its name" in absent.output

    # nobody listening: the network, exit 1
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(RegistryUnreachable, match="cannot reach the registry"):
        Registry(Reference.parse(f"127.0.0.1:{port}/team/x")).tags()
    down = warmer("pull", f"127.0.0.1:{port}/team/x:t", "--store", store, env=env)
    assert down.exit_code == 1 and "cannot reach the registry" in down.output, down.output


# -- against the real registry -----------------------------------------------------------------


@needs_registry
def test_push_then_restore_auto_on_a_clean_store_hits(
    triton_cache: Path, tmp_path: Path, repo: str
) -> None:
    bundle, manifest = saved_triton(triton_cache, tmp_path)
    pushed = warmer("push", bundle, repo, "--store", tmp_path / "store", "--json")
    assert pushed.exit_code == 0, pushed.output
    report = json.loads(pushed.stdout)
    assert report["reference"] == f"{repo}:{manifest.env_tag}" and report["layers_uploaded"] >= 1
    # a bundle for another environment in the same repository: --auto must pass it over
    foreign = synthetic(Store(tmp_path / "store"), "kernels", {"/x/y": 10}, torch="2.6.0+cu124")
    other = warmer("push", foreign, f"{repo}:other", "--store", tmp_path / "store", "--json")
    assert other.exit_code == 0, other.output
    foreign_tag = json.loads(other.stdout)["snapshot_tag"]

    clean = tmp_path / "clean-store"
    pulled = warmer("pull", repo, "--auto", "--store", clean, "--json")
    assert pulled.exit_code == 0, pulled.output
    document = json.loads(pulled.stdout)
    assert document["reference"].endswith(manifest.env_tag)
    passed = {p["tag"]: p["reasons"] for p in document["passed_over"]}
    # each push's own snapshot tag too: the foreign one mismatches, ours is the same push
    assert set(passed) == {"other", foreign_tag, report["snapshot_tag"]}
    assert any("torch" in reason for reason in passed["other"])

    root = tmp_path / "fresh"
    restored = warmer(
        "restore", repo, "--auto", "--root", root, "--store", tmp_path / "s3", "--json"
    )
    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.stdout)["written"] == len(manifest.files)
    events = compile_triton(root / str(triton_cache).lstrip("/"))
    assert events and all(event["cache_hit"] for event in events), events


@needs_registry
def test_a_push_that_moves_a_tag_leaves_the_earlier_snapshot_reachable(
    tmp_path: Path, repo: str
) -> None:
    """Pushing another snapshot of the same job and env moves the env tag; the verified one
    pushed before stays under its snapshot tag, and pulls back whole."""
    root = tmp_path / "store"
    with Store(root) as store:
        first = synthetic(store, "job", {"/c/a": 1000}, seed=1)
        _, manifest = store.resolve(first, touch=False)
        verified = store.commit(manifest.with_verify({"hit_rate": 1.0}))
    one = json.loads(warmer("push", verified.ref, repo, "--store", root, "--json").stdout)
    assert one["reference"] == f"{repo}:{sanitize_tag(manifest.env_tag)}"
    assert one["snapshot_tag"].endswith("-" + verified.short_id)
    with Store(root) as store:
        rerun = synthetic(store, "job", {"/c/a": 1000}, seed=2)  # same ref, new content
    two = json.loads(warmer("push", rerun, repo, "--store", root, "--json").stdout)
    assert two["reference"] == one["reference"] and two["snapshot_tag"] != one["snapshot_tag"]
    moved = warmer("pull", one["reference"], "--store", tmp_path / "a", "--json")
    assert json.loads(moved.stdout)["digest"] == two["digest"]
    kept = warmer("pull", f"{repo}:{one['snapshot_tag']}", "--store", tmp_path / "b", "--json")
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["digest"] == one["digest"]
    shown = warmer("show", "job", "--store", tmp_path / "b", "--json")
    assert json.loads(shown.stdout)["verify"] == {"hit_rate": 1.0}


@needs_registry
def test_a_damaged_store_object_is_never_pushed(tmp_path: Path, repo: str) -> None:
    root = tmp_path / "store"
    with Store(root) as store:
        ref = synthetic(store, "job", {"/c/a": 5000, "/c/b": 7000}, seed=uuid.uuid4().int)
        entry = store.resolve(ref, touch=False)[1].files[1]
        victim = store.objects.path(entry.digest)
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes()[:-1] + b"?")
    refused = warmer("push", ref, f"{repo}:t", "--store", root)
    assert refused.exit_code == 1 and f"store object {entry.digest} (/c/b)" in refused.output
    assert (
        warmer("pull", f"{repo}:t", "--store", tmp_path / "other").exit_code == 5
    )  # no tag: nothing to restore


@needs_registry
def test_second_push_sharing_most_files_sends_only_the_difference(
    tmp_path: Path, repo: str
) -> None:
    store = Store(tmp_path / "store")
    sizes = {f"/c/k{i:03d}/k.cubin": 40_000 + i for i in range(200)}
    first = synthetic(store, "job", sizes)
    one = json.loads(
        warmer("push", first, f"{repo}:one", "--store", tmp_path / "store", "--json").stdout
    )
    # same job, 180 files kept, 20 replaced: a tag of its own, cut against the first push
    changed = {
        **{p: s for p, s in list(sizes.items())[:180]},
        **{f"/c/n{i}/k.cubin": 40_000 for i in range(20)},
    }
    second = synthetic(store, "job", changed, seed=0)
    two = json.loads(
        warmer("push", second, f"{repo}:two", "--store", tmp_path / "store", "--json").stdout
    )
    assert two["base"] == f"{repo}:one" and two["layers_reused"] >= 1
    assert two["bytes_sent"] < 0.25 * one["bytes_sent"], (one, two)
    # and what was pushed reads back whole
    pulled = warmer("pull", f"{repo}:two", "--store", tmp_path / "other", "--json")
    assert pulled.exit_code == 0, pulled.output
    assert json.loads(pulled.stdout)["files"] == 200


@needs_registry
def test_a_corrupted_blob_in_the_registry_is_refused(tmp_path: Path, repo: str) -> None:
    if not REGISTRY_DATA:
        pytest.skip("WARMER_TEST_REGISTRY_DATA (the registry's storage) is not known")
    store = Store(tmp_path / "store")
    # content of its own: a blob shared with another test would be corrupted for it too
    ref = synthetic(store, "job", {"/c/a": 300_000, "/c/b": 200_000}, seed=uuid.uuid4().int)
    pushed = json.loads(
        warmer("push", ref, f"{repo}:t", "--store", tmp_path / "store", "--json").stdout
    )
    manifest = json.loads(
        subprocess.run(
            [
                "curl",
                "-fsS",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                f"http://{repo.replace('/', '/v2/', 1)}/manifests/t",
            ],
            check=True,
            capture_output=True,
        ).stdout
    )
    layer = manifest["layers"][0]["digest"].split(":")[1]
    blob = Path(REGISTRY_DATA) / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert pushed["layers"] == 1
    clean = tmp_path / "clean"
    pulled = warmer("pull", f"{repo}:t", "--store", clean)
    assert pulled.exit_code != 0
    assert "does not match its digest" in pulled.output or "does not decompress" in pulled.output, (
        pulled.output
    )
    assert warmer("ls", "-q", "--store", clean).stdout == ""


@needs_registry
def test_cold_tier_pulls_a_missing_ref_and_pins_survive_prune(tmp_path: Path) -> None:
    tier = f"{REGISTRY}/tier-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.yaml"
    config.write_text(f"registry:\n  url: {tier}\n")
    env = {"WARMER_CONFIG": str(config)}
    hot = Store(tmp_path / "hot")
    ref = synthetic(hot, "Llama-3_8B", {"/c/a": 1000, "/c/b": 2000})
    pushed = warmer("push", ref, "--store", tmp_path / "hot", "--json", env=env)
    assert pushed.exit_code == 0, pushed.output
    assert json.loads(pushed.stdout)["reference"].startswith(f"{tier}/llama-3-8b:")

    cold = tmp_path / "elsewhere"
    shown = warmer("show", ref, "--store", cold, "--json", env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["ref"] == ref
    by_name = warmer(
        "restore",
        "Llama-3_8B",
        "--root",
        tmp_path / "r",
        "--store",
        tmp_path / "third",
        "--json",
        env=env,
    )
    assert by_name.exit_code == 0, by_name.output
    assert (tmp_path / "r/c/b").stat().st_size == 2000

    assert warmer("pin", ref, "--store", cold, env=env).exit_code == 0
    pruned = warmer("prune", "--max-size", "0", "-y", "--store", cold, "--json", env=env)
    assert pruned.exit_code == 0, pruned.output
    assert warmer("ls", "-q", "--store", cold).stdout.split() == [ref]
    assert warmer("unpin", ref, "--store", cold, env=env).exit_code == 0
    assert warmer("prune", "--max-size", "0", "-y", "--store", cold, env=env).exit_code == 0
    assert warmer("ls", "-q", "--store", cold).stdout == ""


@pytest.mark.docker
@needs_registry
def test_image_form_builds_with_copy_from_and_hides_dropped_files(
    tmp_path: Path, repo: str
) -> None:
    from warmer.runtimes.docker import engine_answers

    if not engine_answers():
        pytest.skip("no Docker engine reachable (run .ci/engine-up)")
    store = Store(tmp_path / "store")
    first = synthetic(store, "img", {"/opt/cache/a.bin": 5000, "/opt/cache/gone.bin": 10})
    assert (
        warmer("push", first, f"{repo}:v", "--as-image", "--store", tmp_path / "store").exit_code
        == 0
    )
    second = synthetic(store, "img", {"/opt/cache/a.bin": 5000, "/opt/cache/new.bin": 7})
    again = warmer(
        "push", second, f"{repo}:v", "--as-image", "--store", tmp_path / "store", "--json"
    )
    assert json.loads(again.stdout)["layers_reused"] == 1, again.output
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE}\nCOPY --from={repo}:v / /\n")
    tag = f"warmer-test-copy:{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(tmp_path)], check=True, capture_output=True
    )
    try:
        listing = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                tag,
                "sh",
                "-c",
                "cd /opt/cache && ls && sha256sum a.bin",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    finally:
        subprocess.run(["docker", "rmi", "-f", tag, f"{repo}:v"], capture_output=True)
    expected = random.Random("0:/opt/cache/a.bin").randbytes(5000)
    import hashlib

    assert listing[:2] == ["a.bin", "new.bin"] and hashlib.sha256(expected).hexdigest() in listing


@needs_registry
def test_run_push_publishes_each_job_to_the_registry(tmp_path: Path) -> None:
    """`warmer run --push` (local runtime: no engine needed) puts the bundle in the tier."""
    from helpers.run import warmer as run_warmer
    from helpers.run import write_job

    tier = f"{REGISTRY}/run-{uuid.uuid4().hex[:8]}"
    job = write_job(tmp_path, None)
    done = run_warmer(
        "run", str(job), "--runtime", "local", "--out", str(tmp_path / "dist"),
        "--push", "--json", tmp_path=tmp_path, env={"WARMER_REGISTRY": tier},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)["jobs"]
    assert result["push"]["reference"] == f"{tier}/small:{result['ref'].split('@')[1]}"
    pulled = warmer("pull", f"{tier}/small", "--auto", "--store", tmp_path / "other", "--json")
    assert pulled.exit_code == 0, pulled.output
    assert json.loads(pulled.stdout)["files"] == result["files"]


#: bcrypt of "s3cret" (what `htpasswd -B` writes): the registry below checks Basic auth with it.
_HTPASSWD = "robot:$2b$12$ubXkas7oDkZRlEsSbyzYaubHXhyV9R2KgZ8GlMYCN0Sh6Z5GoWacC\n"
_PASSWORD = "s3cret"


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[str]:
    """A second real registry that demands credentials (htpasswd, Basic)."""
    import shutil
    import socket
    import time

    import requests

    program = shutil.which("docker-registry")
    if program is None:
        pytest.skip("docker-registry is not installed (run .ci/registry-up)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "htpasswd").write_text(_HTPASSWD)
    config = tmp_path / "auth-registry.yml"
    config.write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
        f"auth: {{htpasswd: {{realm: warmer-test, path: {tmp_path / 'htpasswd'}}}}}\n"
    )
    server = subprocess.Popen([program, "serve", str(config)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 401:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        else:
            pytest.fail("the auth registry did not start")
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_credentials_reach_the_registry_and_nothing_else(
    tmp_path: Path, auth_registry: str
) -> None:
    store = tmp_path / "store"
    ref = synthetic(Store(store), "job", {"/c/a": 1000})
    empty_docker = tmp_path / "no-docker-config"
    empty_docker.mkdir()
    anonymous = {"DOCKER_CONFIG": str(empty_docker), "WARMER_REGISTRY_USERNAME": "",
                 "WARMER_REGISTRY_PASSWORD": ""}  # fmt: skip
    refused = warmer("push", ref, f"{auth_registry}/team/x:t", "--store", store, env=anonymous)
    assert refused.exit_code == 2 and "docker login" in refused.output, refused.output

    with_env = {
        **anonymous,
        "WARMER_REGISTRY_USERNAME": "robot",
        "WARMER_REGISTRY_PASSWORD": _PASSWORD,
    }
    pushed = warmer("push", ref, f"{auth_registry}/team/x:t", "--store", store, env=with_env)
    assert pushed.exit_code == 0, pushed.output

    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    auth = base64.b64encode(f"robot:{_PASSWORD}".encode()).decode()
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {auth_registry: {"auth": auth}}})
    )
    from_docker = {**anonymous, "DOCKER_CONFIG": str(docker_config)}
    pulled = warmer(
        "pull", f"{auth_registry}/team/x:t", "--store", tmp_path / "s2", env=from_docker
    )
    assert pulled.exit_code == 0, pulled.output
    for output in (refused.output, pushed.output, pulled.output):
        assert _PASSWORD not in output and auth not in output
    for path in (tmp_path / "s2").rglob("*"):
        if path.is_file():
            assert _PASSWORD.encode() not in path.read_bytes(), path
