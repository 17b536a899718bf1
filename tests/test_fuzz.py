"""Property-based fuzzing (hypothesis) of what warmer reads from others: the manifest parser,
the tar reader (real bundles with bytes flipped, cut and inserted) and the job spec loader.

None of them may raise anything but the documented errors (BundleError, SpecError,
UsageError), and at the command line the exit code stays 0 or 2: never a traceback. Examples
are few and derandomized, with no example database, so CI runs the same cases every time.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers.bundles import FILES, make_manifest, opener
from helpers.fuzz import fuzz, json_values, text
from helpers.restore import leftovers, tree
from hypothesis import given
from hypothesis import strategies as st

from warmer.bundle import verify_bundle, write_bundle
from warmer.cli import cli
from warmer.envkey import EnvKey
from warmer.errors import BundleError, SpecError, UsageError
from warmer.restoring import restore
from warmer.spec import load_jobs
from warmer.store.cas import digest_bytes
from warmer.store.manifest import Manifest

JOBS = Path(__file__).parent.parent / "jobs"


#: JSON or YAML flow nested 1 to 100,000 deep: past any recursion limit.
nested = st.integers(1, 100_000).map(lambda depth: '{"a":' * depth + "[]" + "}" * depth)


# -- the manifest parser ------------------------------------------------------------------------

GOOD = json.loads(make_manifest().to_bytes())
PATHS = st.sampled_from(
    ["/a", "/a/b", "/a/b/c", "/a-b", "/a/./b", "/a/../b", "//a", "/", "a", "/a\ud800", "/\udc80/b"]
)


def entries() -> st.SearchStrategy[dict[str, Any]]:
    """File entries near the valid ones: each field valid, odd or missing."""
    field = {
        "path": PATHS | text,
        "kind": st.sampled_from(["triton", "inductor", "other", "ccache"]) | text,
        "digest": st.sampled_from([GOOD["files"][0]["digest"], "blake3:00", ""]) | json_values,
        "size": st.integers(-2, 1 << 40) | json_values,
        "mode": st.integers(-1, 0o17777) | json_values,
    }
    return st.fixed_dictionaries({}, optional=field)


@st.composite
def manifest_documents(draw: st.DrawFn) -> bytes:
    """Warmer's own manifest with a field or two replaced, dropped or added to, and its
    content_id made to match the files again, as a hostile writer would."""
    document = json.loads(json.dumps(GOOD))
    keys = st.sampled_from(sorted(GOOD))
    for edit in draw(st.lists(st.sampled_from(["set", "drop", "env", "job", "files"]), max_size=2)):
        if edit == "set":
            document[draw(keys)] = draw(json_values)
        elif edit == "drop":
            document.pop(draw(keys), None)
        elif edit == "env" and isinstance(document.get("env"), dict):
            document["env"][draw(text)] = draw(json_values)
        elif edit == "job":
            document["job"] = draw(st.dictionaries(text, json_values, max_size=3))
        elif edit == "files":
            document["files"] = draw(st.lists(entries(), max_size=5))
    if draw(st.booleans()):
        canonical = json.dumps(
            document.get("files"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        document["content_id"] = digest_bytes(canonical.encode(errors="surrogatepass"))[7:19]
    return json.dumps(document).encode()


def parses_or_refuses(data: bytes) -> None:
    """Manifest.from_bytes gives a manifest that round-trips, or a BundleError."""
    try:
        manifest = Manifest.from_bytes(data)
    except BundleError:
        return
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest


@fuzz(300)
@given(manifest_documents())
def test_manifest_parser_on_near_valid_documents(data: bytes) -> None:
    parses_or_refuses(data)


@fuzz(200)
@given(
    st.binary(max_size=400)
    | json_values.map(lambda v: json.dumps(v).encode())
    | nested.map(str.encode)
)
def test_manifest_parser_on_anything(data: bytes) -> None:
    parses_or_refuses(data)


# -- the tar reader, through verify, restore and the command line -----------------------------


@pytest.fixture(scope="module", autouse=True)
def _probe_once() -> Iterator[None]:
    """Restore compares the bundle's env key with this machine's, and probing reads every
    installed package's metadata: probe once, not once per example."""
    key = EnvKey.probe()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EnvKey, "probe", classmethod(lambda cls: key))
        yield


@pytest.fixture(scope="module", params=["zst", "gz", "tar"])
def good_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    fmt = request.param
    path = tmp_path_factory.mktemp("fuzz") / f"good.{fmt}"
    return write_bundle(make_manifest(), opener(FILES), path, fmt).read_bytes()


@st.composite
def mutations(draw: st.DrawFn, size: int) -> list[tuple[str, int, bytes]]:
    """A few edits of a `size`-byte file: flip a byte, cut the end, insert or drop bytes."""
    position = st.integers(0, size - 1)
    edit = st.one_of(
        st.tuples(st.just("flip"), position, st.binary(min_size=1, max_size=1)),
        st.tuples(st.just("cut"), position, st.just(b"")),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("drop"), position, st.binary(min_size=1, max_size=64)),
    )
    return draw(st.lists(edit, min_size=1, max_size=3))


def mutated(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    for kind, position, payload in edits:
        position %= max(len(data), 1)
        if kind == "flip" and data:
            flipped = data[position] ^ (payload[0] or 1)
            data = data[:position] + bytes([flipped]) + data[position + 1 :]
        elif kind == "cut":
            data = data[:position]
        elif kind == "insert":
            data = data[:position] + payload + data[position:]
        elif kind == "drop":
            data = data[:position] + data[position + len(payload) :]
    return data


@fuzz(150)
@given(data=st.data())
def test_tar_reader_on_mutated_bundles(good_bundle: bytes, data: st.DataObject) -> None:
    """verify and restore agree, refuse only with BundleError, and a refused restore leaves
    nothing behind; the same bytes through the CLI exit 0 or 2."""
    bundle_bytes = mutated(good_bundle, data.draw(mutations(len(good_bundle))))
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / "fuzzed.bundle"
        bundle.write_bytes(bundle_bytes)
        root = Path(scratch) / "root"
        problems = verify_bundle(bundle)
        try:
            restore(bundle, root=root, force=True)
        except BundleError:
            assert problems, "restore refused what verify passed"
            assert not root.exists() or (tree(root) == {} and leftovers(root) == [])
        else:
            assert not problems, problems
            assert tree(root) == {path.lstrip("/"): content for path, content in FILES.items()}
        for command in (["verify", bundle], ["restore", bundle, "--force", "--root", root]):
            done = CliRunner().invoke(cli, [str(arg) for arg in command])
            assert done.exit_code in (0, 2), (command, done.output, done.exception)


# -- the job spec loader ----------------------------------------------------------------------

JOB_FIELDS = ["version", "name", "image", "backend", "gpus", "engine", "warmup", "caches"]
JOB_FIELDS += ["env", "secrets", "volumes", "timeout", "matrix", "jobs", "defaults", "user"]
#: Pieces of YAML syntax to splice into documents: anchors, aliases, merges, tags, flow.
YAML_BITS = ["&a ", "*a", "<<: *a\n", "!!str ", "!!binary ", "!!python/name:os.system ", "{", "[",
             "]", "}", ": ", "\n- ", "'", '"', "\\u", "${x}", "\t", "? ", "|\n  ", "%YAML 1.1\n",
             "---\n", "...\n", "\udc80"]  # fmt: skip


@st.composite
def spec_texts(draw: st.DrawFn) -> str:
    """A job-like YAML document (a real example or one made of job fields) with pieces of
    YAML syntax spliced in."""
    fields = st.dictionaries(st.sampled_from(JOB_FIELDS), json_values, max_size=6)
    document = draw(
        st.just((JOBS / "tiny-cpu.yaml").read_text())
        | fields.map(json.dumps)  # JSON is YAML, and keeps surrogates as escapes
        | nested
    )
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(document)))
        bit = draw(st.sampled_from(YAML_BITS) | text)
        document = document[:position] + bit + document[position:]
    return document


@fuzz(150)
@given(spec_texts())
def test_spec_loader_on_yamlish_documents(spec_text: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        spec = Path(scratch) / "job.yaml"
        spec.write_bytes(spec_text.encode(errors="surrogatepass"))
        with contextlib.suppress(SpecError, UsageError):
            load_jobs(spec)
        done = CliRunner().invoke(cli, ["validate", str(spec)])
        assert done.exit_code in (0, 2), (done.output, done.exception)
