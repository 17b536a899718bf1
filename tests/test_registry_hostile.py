"""A registry that lies: every reply is untrusted input (docs/registry.md, "Limits and
deadlines").

A real HTTP server on 127.0.0.1 (helpers.registry.MemoryRegistry) holds a real push of a small
snapshot, then answers in its place with documents of the wrong shape, oversize ones, a tag
list whose `Link` loops, a blob that trickles, a config describing 700,000 files, an image
index, and tags and messages carrying terminal escapes. Every command that reads a registry
(`pull`, `restore`, `restore --auto`, `show` through the cold tier, `push`) is driven through
the real CLI: exit 2, a message naming the registry, the reference and the document, no
traceback, no raw control character on the terminal. A bounded hypothesis run feeds random
and near-valid documents to the same commands.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers.fuzz import fuzz, json_values
from helpers.registry import MemoryRegistry, synthetic
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from warmer.cli import cli
from warmer.oci import MAX_MANIFEST_BYTES, MAX_TAG_PAGES, OCI_INDEX, OCI_MANIFEST, sanitize_tag
from warmer.registry import CONFIG_LIMIT
from warmer.store import Store

REPO = "team/tiny"
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass
class Served:
    """The registry, and what was pushed to it: `REPO:tag`, from `store` (ref `ref`)."""

    registry: MemoryRegistry
    tag: str
    env_tag: str
    ref: str
    store: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    env: dict[str, str]

    @property
    def address(self) -> str:
        return self.registry.address

    def where(self, tag: str | None = "") -> str:
        """How messages name the reference: `registry HOST: REPO[:TAG]`."""
        tag = self.tag if tag == "" else tag
        return f"registry {self.address}: {REPO}" + (f":{tag}" if tag else "")

    def serve_manifest(
        self, document: object, tag: str = "", media_type: str = OCI_MANIFEST
    ) -> None:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        path = f"/v2/{REPO}/manifests/{tag or self.tag}"
        self.registry.lie("GET", path, body, Content_Type=media_type)

    def serve_config(self, document: object) -> str:
        """A config blob in the registry, and the manifest at the tag pointing at it."""
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.registry.blobs[digest] = body
        manifest = copy.deepcopy(self.manifest)
        manifest["config"].update(digest=digest, size=len(body))
        self.serve_manifest(manifest)
        return digest

    def run(self, command: str, tmp: Path, **env: str) -> Result:
        """One command that reads the registry, into a store of its own under `tmp`."""
        tmp.mkdir(parents=True, exist_ok=True)
        at = f"{self.address}/{REPO}"
        args: list[str | Path] = {
            "pull": ["pull", f"{at}:{self.tag}", "--store", tmp / "pull"],
            "restore": ["restore", f"{at}:{self.tag}", "--root", tmp / "r", "--store", tmp / "s1"],
            "restore --auto": ["restore", at, "--auto", "--root", tmp / "a", "--store", tmp / "s2"],
            "show": ["show", f"tiny@{self.env_tag}", "--store", tmp / "show"],  # the cold tier
            "push": ["push", self.ref, f"{at}:{self.tag}", "--store", self.store],
        }[command]
        result = CliRunner().invoke(
            cli, [str(a) for a in args], env={**self.env, **env}, catch_exceptions=False
        )
        assert "Traceback" not in result.output, result.output
        assert not CONTROL.search(result.output), repr(result.output)
        return result


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("hostile")
    (base / "docker").mkdir()
    env = {
        "DOCKER_CONFIG": str(base / "docker"),
        "WARMER_REGISTRY_USERNAME": "",
        "WARMER_REGISTRY_PASSWORD": "",
        "WARMER_CONFIG": "",
        "XDG_CONFIG_HOME": str(base / "config"),
        "WARMER_REGISTRY_DEADLINE": "",
    }
    with MemoryRegistry() as registry:
        with Store(base / "store") as store:
            ref = synthetic(store, "tiny", {"/c/a": 100, "/c/b": 200})
        env_tag = ref.partition("@")[2]
        env["WARMER_REGISTRY"] = f"{registry.address}/team"
        pushed = CliRunner().invoke(
            cli,
            ["push", ref, f"{registry.address}/{REPO}", "--store", str(base / "store")],
            env=env,
            catch_exceptions=False,
        )
        assert pushed.exit_code == 0, pushed.output
        tag = sanitize_tag(env_tag)
        manifest = json.loads(registry.manifests[REPO, tag][1])
        config = json.loads(registry.blobs[manifest["config"]["digest"]])
        yield Served(registry, tag, env_tag, ref, base / "store", manifest, config, env)


@pytest.fixture
def served(published: Served) -> Iterator[Served]:
    """The published registry, told the truth again after each test."""
    registry = published.registry
    manifests, blobs = dict(registry.manifests), dict(registry.blobs)
    yield published
    registry.lies.clear()
    registry.seen.clear()
    registry.manifests, registry.blobs = manifests, blobs


def test_the_truth_is_accepted_by_every_command(served: Served, tmp_path: Path) -> None:
    for command in ("pull", "restore", "restore --auto", "show", "push"):
        result = served.run(command, tmp_path / command.replace(" ", ""))
        assert result.exit_code == 0, (command, result.output)
    assert (tmp_path / "restore/r/c/b").stat().st_size == 200


# -- documents of the wrong shape -------------------------------------------------------------

READERS = ("pull", "restore", "restore --auto", "show")


Path_ = tuple[str | int, ...]


def with_change(document: dict[str, Any], path: Path_, value: object) -> dict[str, Any]:
    """`document` with the value at `path` (keys and indexes) replaced (`...` deletes it)."""
    changed = copy.deepcopy(document)
    *parents, last = path
    holder: Any = changed
    for part in parents:
        holder = holder[part]
    if value is ...:
        del holder[last]
    else:
        holder[last] = value
    return changed


MANIFESTS: dict[str, tuple[Any, str]] = {
    # case: (the document, or (path, value) to change in the real one; what the message says)
    "an array": ([], "manifest: must be a JSON object, not an array"),
    "a string": ("manifest", "manifest: must be a JSON object, not a string"),
    "not JSON": (b'{"schemaVersion": 2,', "manifest: not JSON"),
    "no config digest": ((("config", "digest"), ...), "manifest: config.digest: Field required"),
    "a size as text": ((("layers", 0, "size"), "1234"), "manifest: layers[0].size: Input should"),
    "a layer that is a string": ((("layers", 0), "sha256:00"), "manifest: layers[0]: Input"),
    "layers not a list": (
        (("layers",), {"a": 1}),
        "manifest: layers: Input should be a valid array",
    ),
    "a digest of another form": ((("config", "digest"), "sha256:XYZ"), "manifest: config.digest:"),
    "a negative size": ((("config", "size"), -1), "manifest: config.size: Input should be greater"),
    "an annotation not text": (
        (("annotations", "org.warmer.env"), {"torch": 1}),
        "manifest: annotations.org.warmer.env: Input should be a valid string",
    ),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_a_manifest_of_the_wrong_shape_is_refused(
    served: Served, tmp_path: Path, case: str
) -> None:
    document, named = MANIFESTS[case]
    if isinstance(document, tuple):
        document = with_change(served.manifest, *document)
    # no Content-Type to go by when the document says nothing of its kind
    served.serve_manifest(document, media_type="application/json")
    for command in READERS:
        result = served.run(command, tmp_path / command.replace(" ", ""))
        assert result.exit_code == 2, (command, result.output)
        assert f"{served.where()}: {named}" in result.output, (command, result.output)
    # push reads the manifest at its tag only as a base to cut layers against: it does without
    assert served.run("push", tmp_path).exit_code == 0


CONFIGS: dict[str, tuple[Any, str]] = {
    "an array": ([], "must be a JSON object, not an array"),
    "no warmer part": ({"architecture": "amd64"}, "warmer: Field required"),
    "a layer size as text": (
        (("warmer", "layers", 0, "size"), "12"),
        "warmer.layers[0].size: Input should be a valid integer",
    ),
    "a file record that is an object": (
        (("warmer", "layers", 0, "files", 0), {"path": "/c/a"}),
        "warmer.layers[0].files[0]: Input should be a valid",
    ),
    "a file digest of another form": (
        (("warmer", "layers", 0, "files", 0, 1), "sha256:00"),
        "warmer.layers[0].files[0][1]: String should match pattern",
    ),
    "an invalid manifest inside": (
        (("warmer", "manifest", "files", 0, "size"), "100"),
        "warmer.manifest: files[0]: size: must be an integer",
    ),
    "layers that are not the manifest's": (
        (("warmer", "layers"), []),
        "its layers are not the manifest's layers",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_a_config_of_the_wrong_shape_is_refused(served: Served, tmp_path: Path, case: str) -> None:
    document, named = CONFIGS[case]
    if isinstance(document, tuple):
        document = with_change(served.config, *document)
    digest = served.serve_config(document)
    for command in READERS:
        result = served.run(command, tmp_path / command.replace(" ", ""))
        assert result.exit_code == 2, (command, result.output)
        assert f"{served.where()}: config {digest}: {named}" in result.output, result.output


TAG_LISTS: dict[str, tuple[bytes, str]] = {
    "an array": (b"[]", "tag list: must be a JSON object, not an array"),
    "tags as text": (b'{"tags": "a b"}', "tag list: tags: Input should be a valid array"),
    "a tag that is a number": (b'{"tags": [1]}', "tag list: tags[0]: Input should be a valid str"),
    "escapes in a tag": (
        b'{"tags": ["ok", "\\u001b[2J\\u001b]0;owned\\u0007"]}',
        r"tag list: tags[1]: String should match pattern",
    ),
}


@pytest.mark.parametrize("case", sorted(TAG_LISTS))
def test_a_tag_list_of_the_wrong_shape_is_refused(
    served: Served, tmp_path: Path, case: str
) -> None:
    body, named = TAG_LISTS[case]
    served.registry.lie("GET", f"/v2/{REPO}/tags/list", body)
    for command in ("restore --auto", "push"):
        result = served.run(command, tmp_path / command.replace(" ", ""))
        assert result.exit_code == 2, (command, result.output)
        assert f"{served.where(None)}: {named}" in result.output, result.output
    if case == "escapes in a tag":
        assert r"(got '\x1b[2J\x1b]0;owned\x07')" in result.output


@pytest.mark.parametrize(
    ("reply", "named"),
    [
        (b"[]", "token: must be a JSON object, not an array"),
        (b'{"token": 5}', "token: token: Input should be a valid string"),
        (b'{"token": "a\\r\\nX-Evil: 1"}', "token: token: String should match pattern"),
        (b'{"expires_in": 60}', "token: the token service sent no token"),
    ],
)
def test_a_token_reply_of_the_wrong_shape_is_refused(
    served: Served, tmp_path: Path, reply: bytes, named: str
) -> None:
    challenge = f'Bearer realm="http://{served.address}/token",service="r"'
    served.registry.lie(
        "GET", f"/v2/{REPO}/manifests/{served.tag}", b"", 401, WWW_Authenticate=challenge
    )
    served.registry.lie("GET", "/token", reply)
    result = served.run("pull", tmp_path)
    assert result.exit_code == 2, result.output
    assert f"{served.where(None)}: {named}" in result.output, result.output


# -- limits ------------------------------------------------------------------------------------


def test_oversize_documents_are_refused_before_parsing(served: Served, tmp_path: Path) -> None:
    registry = served.registry
    manifest_path = f"/v2/{REPO}/manifests/{served.tag}"
    big = with_change(served.manifest, ("annotations", "pad"), " " * MAX_MANIFEST_BYTES)
    served.serve_manifest(big)
    result = served.run("pull", tmp_path / "1")
    assert result.exit_code == 2
    assert (
        f"{served.where()}: manifest: {len(json.dumps(big)):,} bytes, more than the limit of 4.0M"
        in result.output
    )

    # no Content-Length: read to the limit, and one byte more, then refused
    body = json.dumps(big).encode()
    registry.lie("GET", manifest_path, lambda: iter([body[:1000], body[1000:]]), Connection="close")
    result = served.run("pull", tmp_path / "2")
    assert result.exit_code == 2
    assert f"{served.where()}: manifest: more than the limit of 4.0M" in result.output

    # a config larger than any warmer writes is refused by its size, before it is fetched
    huge = with_change(served.manifest, ("config", "size"), CONFIG_LIMIT + 1)
    served.serve_manifest(huge)
    registry.seen.clear()
    result = served.run("pull", tmp_path / "3")
    assert result.exit_code == 2
    assert f"{CONFIG_LIMIT + 1:,} bytes, more than the limit of 128.0M" in result.output
    assert not [seen for seen in registry.seen if "/blobs/" in seen]

    page = json.dumps({"tags": [f"t{i:07d}" for i in range(500_000)]}).encode()
    registry.lie("GET", f"/v2/{REPO}/tags/list", page)
    result = served.run("restore --auto", tmp_path / "4")
    assert result.exit_code == 2
    assert f"{served.where(None)}: tag list: {len(page):,} bytes, more than" in result.output


def test_a_config_describing_700k_files_is_refused_by_counting(
    served: Served, tmp_path: Path
) -> None:
    """Counted before anything is built: the refusal costs about the bytes, not ~10x them."""
    digest = "blake3:" + "ab" * 32
    entry = b'{"digest":"%s","kind":"triton","mode":420,"path":"/c/%%07d","size":1}' % (
        digest.encode()
    )
    files = b",".join(entry % i for i in range(700_000))
    manifest = json.dumps(served.config["warmer"]["manifest"]).encode()
    manifest = manifest.replace(b'"files": [', b'"files": [' + files + b",", 1)
    config = json.dumps(served.config).encode()
    config = config.replace(json.dumps(served.config["warmer"]["manifest"]).encode(), manifest)
    served.serve_config(config)
    del files, manifest
    tracemalloc.start()
    try:
        result = served.run("pull", tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 2, result.output
    assert "more than the limit of 250,000" in result.output
    # the blob itself, and its chunks while they arrive; parsing would take ~6x more
    assert peak < 3 * len(config), (peak, len(config))


def test_a_tag_list_that_loops_or_never_ends_is_cut_short(served: Served, tmp_path: Path) -> None:
    registry = served.registry
    tags = f"/v2/{REPO}/tags/list"
    link = f'<{tags}?n=1000>; rel="next"'
    registry.lie("GET", tags, json.dumps({"tags": [served.tag]}).encode(), Link=link)
    result = served.run("restore --auto", tmp_path / "loop")
    assert result.exit_code == 2, result.output
    assert f"{served.where(None)}: tag list: Link points back at a page already read" in (
        result.output
    )
    assert registry.seen.count(f"GET {tags}") == 1

    def endless(path: str) -> tuple[int, dict[str, str], bytes]:
        page = int(re.search(r"last=(\d+)", path + "last=0")[1])  # type: ignore[index]
        body = json.dumps({"tags": [f"t{page}"]}).encode()
        return 200, {"Link": f'<{tags}?n=1000&last={page + 1}>; rel="next"'}, body

    registry.lies[f"GET {tags}"] = endless
    registry.seen.clear()
    result = served.run("push", tmp_path / "endless")
    assert result.exit_code == 2, result.output
    assert f"tag list: more than {MAX_TAG_PAGES} pages" in result.output
    assert registry.seen.count(f"GET {tags}") == MAX_TAG_PAGES

    # a Link to another host would take the credentials there
    registry.lie(
        "GET", tags, b'{"tags": []}', Link='<http://198.51.100.7/v2/x/tags/list>; rel="next"'
    )
    result = served.run("restore --auto", tmp_path / "away")
    assert result.exit_code == 2
    assert "tag list: Link: 'http://198.51.100.7/v2/x/tags/list' is not a URL on" in result.output


def test_a_trickling_blob_meets_the_deadline(served: Served, tmp_path: Path) -> None:
    registry = served.registry
    layer = served.manifest["layers"][0]
    blob = registry.blobs[layer["digest"]]

    sent = []

    def trickle() -> Iterator[bytes]:  # all of it in about 20 s: far past the deadline
        for position in range(len(blob)):
            time.sleep(20 / len(blob))
            sent.append(position)
            yield blob[position : position + 1]

    registry.lie(
        "GET",
        f"/v2/{REPO}/blobs/{layer['digest']}",
        trickle,
        Content_Type="application/octet-stream",
        Content_Length=str(len(blob)),
    )
    result = served.run("pull", tmp_path, WARMER_REGISTRY_DEADLINE="1s")
    assert result.exit_code == 2, result.output
    assert (
        f"{served.where(None)}: blob {layer['digest']}: not done within the deadline of 1.0s"
        in result.output
    )
    assert "WARMER_REGISTRY_DEADLINE" in result.output
    assert len(sent) < len(blob) // 2  # it gave up, rather than waiting for the end


def test_a_deadline_without_a_unit_is_refused(served: Served, tmp_path: Path) -> None:
    result = served.run("pull", tmp_path, WARMER_REGISTRY_DEADLINE="soon")
    assert result.exit_code == 2 and "WARMER_REGISTRY_DEADLINE: " in result.output


# -- what warmer never writes, and text for the terminal ----------------------------------------


@pytest.mark.parametrize(
    ("media_type", "named"),
    [
        (OCI_INDEX, "an OCI image index (a list of manifests, e.g. one per platform)"),
        (
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "a Docker manifest list (one manifest per platform)",
        ),
        ("application/vnd.docker.distribution.manifest.v2+json", "a Docker image manifest"),
        ("text/\x1b[31mplain", r"of media type 'text/\x1b[31mplain'"),
    ],
)
def test_a_manifest_warmer_never_writes_is_refused(
    served: Served, tmp_path: Path, media_type: str, named: str
) -> None:
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": []}
    served.serve_manifest(index, media_type=media_type)
    for command in ("pull", "restore", "show"):
        result = served.run(command, tmp_path / command)
        assert result.exit_code == 2, result.output
        assert f"{served.where()}: manifest: {named}; warmer reads only the OCI image " in (
            result.output
        )
        assert OCI_MANIFEST in result.output

    # --auto passes over a tag that holds one, and takes the bundle beside it
    served.registry.lies.clear()
    served.registry.put_manifest(REPO, "multi", json.dumps(index).encode())
    result = served.run("restore --auto", tmp_path / "auto")
    assert result.exit_code == 0, result.output
    assert "passed over multi: not a warmer bundle" in result.output


def test_an_image_that_is_not_a_warmer_bundle_is_refused(served: Served, tmp_path: Path) -> None:
    image_config = "application/vnd.oci.image.config.v1+json"
    image = with_change(served.manifest, ("config", "mediaType"), image_config)
    image = with_change(image, ("annotations", "org.warmer.job"), ...)  # a plain image
    served.serve_manifest(image)
    result = served.run("pull", tmp_path)
    assert result.exit_code == 2
    assert f"{served.where()}: manifest: not a warmer bundle (its config is " in result.output


def test_foreign_text_reaches_the_terminal_escaped(served: Served, tmp_path: Path) -> None:
    # an error body
    served.registry.lie(
        "GET",
        f"/v2/{REPO}/manifests/{served.tag}",
        b'{"errors": [{"code": "DENIED", "message": "\\u001b]0;owned\\u0007\\u001b[2J"}]}',
        403,
    )
    result = served.run("pull", tmp_path / "1")
    assert result.exit_code == 2, result.output
    assert r"DENIED: \x1b]0;owned\x07\x1b[2J" in result.output

    # the env key of a tag: --auto says why it passed the tag over
    env = json.loads(served.manifest["annotations"]["org.warmer.env"])
    env["torch"] = "9.9\x1b[31m\u202e"
    tampered = with_change(served.manifest, ("annotations", "org.warmer.env"), json.dumps(env))
    for _, tag in list(served.registry.manifests):  # the env tag and the snapshot's own tag
        served.serve_manifest(tampered, tag)
    result = served.run("restore --auto", tmp_path / "2")
    assert result.exit_code in (2, 5), result.output  # nothing here for this machine
    assert r"9.9\x1b[31m\u202e" in result.output


# -- fuzz --------------------------------------------------------------------------------------

#: Each example runs whole commands against the server, under one fixture for all.
SLOW = (HealthCheck.function_scoped_fixture, HealthCheck.too_slow)


def paths(document: object, prefix: Path_ = ()) -> list[Path_]:
    """Every place in a JSON document (of a list, its first two items)."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for position, value in enumerate(document[:2]):
            found += paths(value, (*prefix, position))
    return found


def hostile(good: dict[str, Any]) -> st.SearchStrategy[object]:
    """Anything at all, or the real document with one place changed or removed."""
    near = st.tuples(st.sampled_from(paths(good)), json_values | st.just(...)).map(
        lambda change: with_change(good, *change)
    )
    return json_values | near


def documented(result: Result, command: str) -> None:
    """0 (the change kept it valid), 2, 4 (the change names another environment), 5 (nothing
    for this machine); 1 only for bytes that do not verify against a digest or size, or a
    blob the registry does not have."""
    if result.exit_code == 1:
        assert re.search(r"does not match|truncated|bytes expected|HTTP 404", result.output), (
            command,
            result.output,
        )
    else:
        assert result.exit_code in (0, 2, 4, 5), (command, result.output)


@fuzz(15, SLOW)
@given(data=st.data())
def test_fuzzed_manifests(served: Served, data: st.DataObject) -> None:
    served.serve_manifest(data.draw(hostile(served.manifest)))
    with tempfile.TemporaryDirectory() as tmp:
        for command in (*READERS, "push"):
            documented(served.run(command, Path(tmp) / command.replace(" ", "")), command)


@fuzz(15, SLOW)
@given(data=st.data())
def test_fuzzed_configs(served: Served, data: st.DataObject) -> None:
    served.serve_config(data.draw(hostile(served.config)))
    with tempfile.TemporaryDirectory() as tmp:
        for command in ("pull", "restore --auto"):
            documented(served.run(command, Path(tmp) / command.replace(" ", "")), command)


@fuzz(25, SLOW)
@given(document=hostile({"name": REPO, "tags": ["a", "b"]}))
def test_fuzzed_tag_lists(served: Served, document: object) -> None:
    served.registry.lie("GET", f"/v2/{REPO}/tags/list", json.dumps(document).encode())
    with tempfile.TemporaryDirectory() as tmp:
        for command in ("restore --auto", "push"):
            documented(served.run(command, Path(tmp) / command.replace(" ", "")), command)


@fuzz(15, SLOW)
@given(document=hostile({"token": "abc", "expires_in": 60}))
def test_fuzzed_token_replies(served: Served, document: object) -> None:
    challenge = f'Bearer realm="http://{served.address}/token",service="r"'
    served.registry.lie(
        "GET", f"/v2/{REPO}/manifests/{served.tag}", b"", 401, WWW_Authenticate=challenge
    )
    served.registry.lie("GET", "/token", json.dumps(document).encode())
    with tempfile.TemporaryDirectory() as tmp:
        documented(served.run("pull", Path(tmp)), "pull")
