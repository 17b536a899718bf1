"""Hostile and malformed bundles, tried as an attacker would: each is refused with exit 2 and
a message that names the bundle and the member or field, by every command that reads it
(restore, verify, import), with nothing written and the target left as it was."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner, Result
from helpers.bundles import FILES, make_manifest, member, opener, raw_tar
from helpers.restore import leftovers, tree

from warmer.bundle import MANIFEST_NAME, compressed_writer, tar_member, write_bundle
from warmer.cli import cli
from warmer.envkey import EnvKey
from warmer.errors import BundleError
from warmer.restoring import restore
from warmer.store.cas import digest_bytes
from warmer.store.manifest import MAX_FILES, MAX_MANIFEST_BYTES, FileEntry, Manifest


def warmer(*args: object) -> Result:
    """The CLI in this process; an exception other than the documented ones fails the test."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def entry(path: str, data: bytes) -> dict[str, object]:
    return {
        "path": path,
        "kind": "triton",
        "digest": digest_bytes(data),
        "size": len(data),
        "mode": 0o644,
    }


def manifest_bytes(files: dict[str, bytes], **changes: object) -> bytes:
    """A manifest document as a hostile writer would make it: warmer's own fields with
    `changes` applied and no validation (json.dumps keeps lone surrogates as \\u escapes)."""
    document = json.loads(make_manifest({"/x": b"x"}).to_bytes())
    document["files"] = [entry(path, data) for path, data in sorted(files.items())]
    document["content_id"] = "0" * 12
    for key, value in changes.items():
        if key == "env":
            document["env"] = {**document["env"], **value}  # type: ignore[dict-item]
        else:
            document[key] = value
    return json.dumps(document).encode()


def hostile_bundle(path: Path, manifest: bytes, files: dict[str, bytes]) -> Path:
    members = [member(MANIFEST_NAME, manifest)]
    for name, data in sorted(files.items()):  # a name tar cannot write gets a stand-in
        members.append(member(name.lstrip("/").encode(errors="replace").decode(), data))
    return raw_tar(path, members)


def deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


CASES: dict[str, tuple[dict[str, bytes], dict[str, object], str]] = {
    # name: (files, manifest changes, what the message names)
    "a file that is also a directory": (
        {"/c/a": b"file", "/c/a/b": b"under it"},
        {},
        "files: /c/a is a file, and /c/a/b needs it to be a directory",
    ),
    "one more level": (
        {"/c/a": b"file", "/c/a-b": b"x", "/c/a/b/c": b"under it"},
        {},
        "files: /c/a is a file, and /c/a/b/c needs it to be a directory",
    ),
    "a lone surrogate in a path": ({"/c/x\ud800": b"x"}, {}, r"files[0]: path: '/c/x\ud800'"),
    "a lone surrogate in env": ({"/c/x": b"x"}, {"env": {"torch": "2\udfff"}}, "env.torch"),
    "a lone surrogate in a job key": ({"/c/x": b"x"}, {"job": {"n\ud800": 1}}, "job key"),
    "a lone surrogate in env_digest": ({"/c/x": b"x"}, {"env_digest": "\ud800"}, "env_digest"),
    "a job nested deeper than allowed": (
        {"/c/x": b"x"},
        {"job": json.loads(deep(40))},
        "job: nested deeper than 32 levels",
    ),
    "a name with a newline": ({"/c/x": b"x"}, {"name": "unit\n"}, "name: 'unit\\n'"),
}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    """A restore target with a file of its own; the test ends by checking it is unchanged."""
    root = tmp_path / "target"
    (root / "c").mkdir(parents=True)
    (root / "c/mine").write_bytes(b"the user's")
    before = tree(root)
    yield root
    assert tree(root) == before
    assert leftovers(root) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_manifests_are_refused_by_every_command(
    case: str, tmp_path: Path, target: Path
) -> None:
    files, changes, named = CASES[case]
    bundle = hostile_bundle(tmp_path / "hostile.tar", manifest_bytes(files, **changes), files)
    store = tmp_path / "store"
    for command in (
        ["restore", bundle, "--root", target],
        ["verify", bundle],
        ["import", bundle, "--store", store],
    ):
        done = warmer(*command)
        assert done.exit_code == 2, (command, done.output)
        assert str(bundle) in done.output, (command, done.output)
        assert named in done.output, (command, done.output)
    assert warmer("ls", "-q", "--store", store).stdout == ""


def test_json_nested_past_pythons_stack_is_refused(tmp_path: Path, target: Path) -> None:
    data = manifest_bytes({"/c/x": b"x"}).replace(
        b'"job": null', b'"job": ' + deep(100_000).encode()
    )
    bundle = hostile_bundle(tmp_path / "deep.tar", data, {"/c/x": b"x"})
    for command in (["restore", bundle, "--root", target], ["verify", bundle]):
        done = warmer(*command)
        assert done.exit_code == 2 and "nested too deep" in done.output, done.output


@pytest.mark.parametrize("where", ["c/a", "c/a/b"])
def test_a_file_at_the_target_where_the_bundle_needs_a_directory(
    tmp_path: Path, where: str
) -> None:
    root = tmp_path / "root"
    (root / "c").mkdir(parents=True)
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    (root / where).write_bytes(b"in the way")
    before = tree(root)
    files = {"/c/a/b/c/k.cubin": b"k"}
    bundle = write_bundle(make_manifest(files), opener(files), tmp_path / "b.tar.zst")
    done = warmer("restore", bundle, "--root", root)
    assert done.exit_code == 2 and f"{root / where} is a file here" in done.output, done.output
    assert tree(root) == before and leftovers(root) == []
    # and --root itself under a file
    done = warmer("restore", bundle, "--root", root / where / "deeper")
    assert done.exit_code == 2 and f"{root / where} is not a directory" in done.output


# -- modes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("umask", "expected"),
    [
        (0o000, {"lib.so": 0o755, "k.py": 0o644, "suid": 0o755, "private": 0o600, "odd": 0o654}),
        (0o022, {"lib.so": 0o755, "k.py": 0o644, "suid": 0o755, "private": 0o600, "odd": 0o654}),
        (0o077, {"lib.so": 0o700, "k.py": 0o600, "suid": 0o700, "private": 0o600, "odd": 0o600}),
    ],
    ids=["umask 000", "umask 022", "umask 077"],
)
@pytest.mark.parametrize("large", [False, True], ids=["in memory", "streamed"])
def test_restored_files_are_never_group_or_world_writable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    umask: int,
    expected: dict[str, int],
    large: bool,
) -> None:
    """mode = bundle mode & 0o755 (no setuid, setgid, sticky, group or other write), then
    the umask: a cache file another user can replace is code that runs as this one."""
    if large:
        monkeypatch.setattr("warmer.restoring._IN_MEMORY", 0)
    modes = {"lib.so": 0o777, "k.py": 0o664, "suid": 0o6777, "private": 0o600, "odd": 0o1676}
    files = {f"/c/d/{name}": name.encode() for name in modes}
    env = EnvKey.probe()
    entries = tuple(
        FileEntry(path, "triton", digest_bytes(data), len(data), modes[path.rpartition("/")[2]])
        for path, data in files.items()
    )
    (tmp_path / "root/c").mkdir(parents=True)  # c exists: files go to temps in c/d's twin
    manifest = Manifest("unit", env.to_dict(), env.tag, env.digest, entries)
    bundle = write_bundle(manifest, opener(files), tmp_path / "b.tar.zst")
    old = os.umask(umask)
    try:
        restore(bundle, root=tmp_path / "root")
    finally:
        os.umask(old)
    got = {name: (tmp_path / "root/c/d" / name).stat().st_mode & 0o7777 for name in modes}
    assert got == expected
    assert (tmp_path / "root/c/d").stat().st_mode & 0o7777 == 0o755 & ~umask


# -- the end of the compressed stream -----------------------------------------------------------


def damaged_ends(tmp_path: Path) -> dict[str, Path]:
    """Bundles whose every member is intact and whose compressed stream is not."""
    cases: dict[str, Path] = {}
    for fmt in ("gz", "zst"):
        data = write_bundle(make_manifest(), opener(FILES), tmp_path / f"good.{fmt}", fmt)  # type: ignore[arg-type]
        raw = data.read_bytes()
        for name, damaged in {
            "last byte flipped": raw[:-1] + bytes([raw[-1] ^ 0x01]),
            "last byte cut": raw[:-1],
            "trailer cut": raw[:-4],
            "garbage after": raw + b"garbage",
            "a second stream after": raw + raw,
        }.items():
            path = tmp_path / f"{fmt} {name}.tar.{fmt}"
            path.write_bytes(damaged)
            cases[f"{fmt}: {name}"] = path
    return cases


def test_verify_reads_to_the_end_of_the_compressed_stream(tmp_path: Path, target: Path) -> None:
    for name, bundle in damaged_ends(tmp_path).items():
        done = warmer("verify", bundle)
        assert done.exit_code == 2, (name, done.output)
        assert str(bundle) in done.output, (name, done.output)
        with pytest.raises(BundleError):  # restore reads the same way, before any rename
            restore(bundle, root=target)


def test_zstd_frame_followed_by_data_is_refused(tmp_path: Path) -> None:
    """A frame that the decompressor ends cleanly, with a tar of another bundle after it."""
    good = write_bundle(make_manifest(), opener(FILES), tmp_path / "good.tar.zst")
    other = zstandard.ZstdCompressor().compress(b"\0" * 10240)
    hidden = tmp_path / "hidden.tar.zst"
    hidden.write_bytes(good.read_bytes() + other)
    done = warmer("verify", hidden)
    assert done.exit_code == 2 and "after the end of the zstd frame" in done.output, done.output


# -- how large a manifest may be -----------------------------------------------------------------


def compact_manifest(entries: int) -> bytes:
    """A manifest listing `entries` empty objects: the most entries per byte."""
    return b'{"files":[' + b"{}," * (entries - 1) + b"{}]}"


def test_manifest_limits_name_the_limit_and_the_size(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=f"more than the limit of {MAX_FILES:,}"):
        Manifest.from_bytes(compact_manifest(MAX_FILES * 10))
    with pytest.raises(BundleError, match=rf"^files: {MAX_FILES + 1:,} entries, more than"):
        Manifest.from_document(
            {**json.loads(make_manifest().to_bytes()), "files": [{}] * (MAX_FILES + 1)}
        )
    too_large = b" " * (MAX_MANIFEST_BYTES + 1)
    with pytest.raises(BundleError, match=f"{MAX_MANIFEST_BYTES + 1:,} bytes, more than the limit"):
        Manifest.from_bytes(too_large)
    bundle = tmp_path / "large.tar"
    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tar_member(MANIFEST_NAME, len(too_large), 0o644), io.BytesIO(too_large))
    done = warmer("verify", bundle)
    assert done.exit_code == 2, done.output
    assert f"{bundle}: warmer.json is {MAX_MANIFEST_BYTES + 1:,} bytes" in done.output


def peak_rss(bundle: Path) -> int:
    """Peak resident memory (bytes) of `warmer verify BUNDLE` in a process of its own (VmHWM:
    getrusage's maxrss would include what this process held when it forked)."""
    script = (
        "import sys\nfrom warmer.cli import main\ntry:\n    main()\nfinally:\n"
        "    print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "verify", str(bundle)], capture_output=True, text=True
    )
    return int(done.stdout.strip().splitlines()[-1]) * 1024


def zst_bundle(path: Path, manifest: bytes) -> Path:
    with (
        open(path, "wb") as raw,
        compressed_writer(raw, "zst") as stream,
        tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(tar_member(MANIFEST_NAME, len(manifest), 0o644), io.BytesIO(manifest))
    return path


def test_a_manifest_with_very_many_entries_costs_no_more_than_its_bytes(tmp_path: Path) -> None:
    """Refused before it is parsed: memory stays within the byte limit whatever the number
    of entries it lists (parsing 10,000,000 entries took gigabytes)."""
    small = peak_rss(write_bundle(make_manifest(), opener(FILES), tmp_path / "small.tar.zst"))
    hostile = compact_manifest(10_000_000)
    many = peak_rss(zst_bundle(tmp_path / "many.tar.zst", hostile))
    assert many - small < len(hostile) + (32 << 20), (small, many)


# -- --root: every write stays under it ------------------------------------------------------


def links_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A bundle of /c/A/x.cubin and /c/B/y.cubin, a target root, and a directory outside it."""
    files = {"/c/A/x.cubin": b"x" * 100, "/c/B/y.cubin": b"y" * 100}
    bundle = write_bundle(make_manifest(files), opener(files), tmp_path / "b.tar.zst")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "theirs").write_bytes(b"not ours")
    root = tmp_path / "root"
    (root / "c").mkdir(parents=True)
    return bundle, root, outside


@pytest.mark.parametrize("link", ["c", "c/A"])
def test_root_refuses_a_directory_link_that_leads_outside(tmp_path: Path, link: str) -> None:
    bundle, root, outside = links_setup(tmp_path)
    if link == "c/A":
        (outside / "x.cubin").write_bytes(b"old")
    else:
        (root / "c").rmdir()
    (root / link).symlink_to(outside, target_is_directory=True)
    before, outside_before = tree(root), tree(outside)
    done = warmer("restore", bundle, "--root", root)
    assert done.exit_code == 2, done.output
    assert f"outside --root {root}" in done.output and str(root / link) in done.output
    assert tree(outside) == outside_before and tree(root) == before
    assert leftovers(root) == [] and leftovers(outside) == []


def test_a_dangling_link_where_a_directory_goes_is_refused(tmp_path: Path) -> None:
    bundle, root, outside = links_setup(tmp_path)
    (root / "c/A").symlink_to(outside / "gone", target_is_directory=True)
    done = warmer("restore", bundle, "--root", root)
    assert done.exit_code == 2 and "dangling symbolic link" in done.output, done.output
    assert not (outside / "gone").exists() and leftovers(root) == []


def test_root_follows_a_link_that_stays_inside(tmp_path: Path) -> None:
    bundle, root, _outside = links_setup(tmp_path)
    (root / "elsewhere").mkdir()
    (root / "c/A").symlink_to("../elsewhere", target_is_directory=True)
    assert warmer("restore", bundle, "--root", root).exit_code == 0
    assert (root / "elsewhere/x.cubin").read_bytes() == b"x" * 100


@pytest.mark.parametrize("same", [False, True], ids=["other bytes", "same bytes"])
def test_a_link_at_a_files_destination_is_replaced_never_written_through(
    tmp_path: Path, same: bool
) -> None:
    bundle, root, outside = links_setup(tmp_path)
    (root / "c/A").mkdir()
    (outside / "x.cubin").write_bytes(b"x" * 100 if same else b"outside")
    (root / "c/A/x.cubin").symlink_to(outside / "x.cubin")
    outside_before = tree(outside)
    assert warmer("restore", bundle, "--root", root).exit_code == 0
    assert not (root / "c/A/x.cubin").is_symlink()
    assert (root / "c/A/x.cubin").read_bytes() == b"x" * 100
    assert tree(outside) == outside_before


def test_without_root_the_users_own_links_are_followed(tmp_path: Path) -> None:
    """The bundle's paths are absolute (here under tmp_path); restored at /, a directory link
    on the way is the user's own and is followed."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "cache").symlink_to(real, target_is_directory=True)
    files = {f"{tmp_path}/cache/A/x.cubin": b"x"}
    bundle = write_bundle(make_manifest(files), opener(files), tmp_path / "b.tar.zst")
    assert warmer("restore", bundle).exit_code == 0
    assert (real / "A/x.cubin").read_bytes() == b"x"


# -- the spec ------------------------------------------------------------------------------------


def job_file(tmp_path: Path, extra: str = "") -> Path:
    """A valid job without `image`, and `extra` lines of YAML."""
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "version: 1\nname: t\nengine: {kind: torch-compile, model: 'pkg.mod:factory'}\n"
        f"warmup: {{inputs: [{{shape: [1, 4]}}]}}\n{extra}\n"
    )
    return spec


def test_a_job_without_an_image_on_a_container_runtime_says_what_to_add(tmp_path: Path) -> None:
    spec = job_file(tmp_path)
    done = warmer("run", spec, "--runtime", "docker", "--store", tmp_path / "store")
    assert done.exit_code == 2, done.output
    assert f"{spec}: job t: `image` is required for a container runtime" in done.output
    assert "add `image: REPOSITORY:TAG`" in done.output and "--runtime local" in done.output


#: Nine lines that expand to 10**9 strings: refused before anything copies them.
BILLION_LAUGHS = "\n".join(
    [
        'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)),
    ]
)


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ('env: {A: "\\udc80"}', "env.A: '\\udc80' is not valid Unicode"),
        ('env: {"A\\ud800": x}', "env: key 'A\\ud800' is not valid Unicode"),
        ("env: " + "{a: " * 40 + "x" + "}" * 40, "nested deeper than 32"),
        ("env: " + "[" * 5000 + "]" * 5000, "invalid YAML: nested too deep"),
        (BILLION_LAUGHS, "more than 1,000,000 values once YAML aliases expand"),
        ("x: &x [1, *x]", "a YAML alias refers to a node that contains it"),
    ],
)
def test_spec_text_no_step_could_carry_is_a_problem_with_its_field(
    tmp_path: Path, yaml_text: str, problem: str
) -> None:
    """A lone surrogate could not reach the container's environment or the manifest, and
    nesting past Python's stack would be a RecursionError: both are spec problems."""
    done = warmer("validate", job_file(tmp_path, yaml_text))
    assert done.exit_code == 2 and problem in done.output, done.output
