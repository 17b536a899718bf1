"""How restore installs: missing directories staged whole, files in existing ones renamed
one by one, and every failure leaving the target exactly as it was."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers.bundles import make_manifest, manifest_member, member, opener, raw_tar
from helpers.restore import leftovers, tree

import warmer.restoring
from warmer.bundle import member_name, write_bundle
from warmer.errors import BundleError
from warmer.restoring import restore

FILES = {
    "/cache/A/x.cubin": b"new x " * 1000,
    "/cache/B/sub/z.json": b'{"z": 1}',
    "/cache/B/y.cubin": b"y" * 5000,
    "/cache/C/w.ttir": b"w",
    "/other/graph": b"graph bytes",
}


def partly_there(root: Path) -> None:
    """A target where A exists with an older x and an unrelated file, the graph is already
    identical, and B, C do not exist."""
    (root / "cache/A").mkdir(parents=True)
    (root / "cache/A/x.cubin").write_bytes(b"old x")
    (root / "cache/A/keep").write_bytes(b"not in the bundle")
    (root / "other").mkdir()
    (root / "other/graph").write_bytes(FILES["/other/graph"])


def bundle_of(tmp_path: Path) -> Path:
    return write_bundle(make_manifest(FILES), opener(FILES), tmp_path / "b.tar.zst")


@pytest.fixture(params=["in memory", "streamed", "one at a time"])
def members_as(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with members read whole (the common case), streamed (large ones), and
    with the reader waiting for the writers after every file (the memory bound)."""
    if request.param == "streamed":
        monkeypatch.setattr(warmer.restoring, "_IN_MEMORY", 16)
    if request.param == "one at a time":
        monkeypatch.setattr(warmer.restoring, "_IN_FLIGHT_BYTES", 0)
    return str(request.param)


def test_restore_into_a_partly_existing_tree(tmp_path: Path, members_as: str) -> None:
    root = tmp_path / "root"
    partly_there(root)
    report = restore(bundle_of(tmp_path), root=root)

    expected = {path.lstrip("/"): data for path, data in FILES.items()}
    assert tree(root) == {**expected, "cache/A/keep": b"not in the bundle"}
    assert (report.written, report.skipped_identical) == (4, 1)
    assert report.bytes_written == sum(len(d) for p, d in FILES.items() if p != "/other/graph")
    assert (root / "cache/B/y.cubin").stat().st_mode & 0o777 == 0o644
    assert leftovers(root) == []


def test_a_failed_restore_leaves_the_tree_as_it_was(tmp_path: Path, members_as: str) -> None:
    """The last member's bytes do not match: files were already staged in A (existing) and
    in twins of B and C (new); all of it goes, and nothing that was there changes."""
    root = tmp_path / "root"
    partly_there(root)
    before = tree(root)
    manifest = make_manifest(FILES)
    members = [manifest_member(manifest)]
    for entry in manifest.files:
        data = FILES[entry.path]
        if entry is manifest.files[-1]:
            data = b"X" * len(data)
        members.append(member(member_name(entry.path), data))
    broken = raw_tar(tmp_path / "broken.tar", members)

    with pytest.raises(BundleError, match="does not match the manifest"):
        restore(broken, root=root)
    assert tree(root) == before
    assert sorted(p.name for p in (root / "cache").iterdir()) == ["A"]


def test_a_missing_root_is_made_and_removed_again_on_failure(tmp_path: Path) -> None:
    root = tmp_path / "new/deeper/root"
    truncated = tmp_path / "truncated.tar.zst"
    data = bundle_of(tmp_path).read_bytes()
    truncated.write_bytes(data[: len(data) - 64])
    with pytest.raises(BundleError):
        restore(truncated, root=root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.zst", "truncated.tar.zst"]

    restore(bundle_of(tmp_path), root=root)
    assert tree(root) == {path.lstrip("/"): data for path, data in FILES.items()}


def test_a_file_in_the_way_of_a_directory_is_refused_before_writing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    partly_there(root)
    (root / "cache/B").write_bytes(b"a file where the bundle needs a directory")
    before = tree(root)
    with pytest.raises(BundleError, match=r"cache/B is a file here"):
        restore(bundle_of(tmp_path), root=root)
    assert tree(root) == before
    assert leftovers(root) == []


def test_a_directory_at_a_file_destination_is_refused(tmp_path: Path, members_as: str) -> None:
    root = tmp_path / "root"
    partly_there(root)
    (root / "cache/A/x.cubin").unlink()
    (root / "cache/A/x.cubin").mkdir()
    before = tree(root)
    with pytest.raises(BundleError, match="is a directory here"):
        restore(bundle_of(tmp_path), root=root)
    assert tree(root) == before
    assert (root / "cache/A/x.cubin").is_dir()
    assert sorted(p.name for p in (root / "cache").iterdir()) == ["A"]
    assert leftovers(root) == []


def test_a_link_to_a_directory_at_a_file_destination_is_replaced(
    tmp_path: Path, members_as: str
) -> None:
    """Only a real directory is refused: a symlink (here to a directory) is replaced by the
    file, as any existing file would be, and what it pointed to stays untouched."""
    root = tmp_path / "root"
    partly_there(root)
    pointed = tmp_path / "pointed"
    pointed.mkdir()
    (root / "cache/A/x.cubin").unlink()
    (root / "cache/A/x.cubin").symlink_to(pointed)
    restore(bundle_of(tmp_path), root=root)
    assert not (root / "cache/A/x.cubin").is_symlink()
    assert (root / "cache/A/x.cubin").read_bytes() == FILES["/cache/A/x.cubin"]
    assert pointed.is_dir() and list(pointed.iterdir()) == []
    assert leftovers(root) == []


def test_a_directory_made_meanwhile_by_another_restore_is_merged(
    tmp_path: Path, members_as: str
) -> None:
    """B is staged as a twin; before the commit another process creates B with a file of its
    own. The twin cannot be renamed over it, so its files are moved in one by one."""
    root = tmp_path / "root"
    partly_there(root)

    def meanwhile(kind: str, data: Mapping[str, Any]) -> None:
        if data["files"] == 2:  # B/sub/z.json has just been staged, in a twin of B
            (root / "cache/B/sub").mkdir(parents=True)
            (root / "cache/B/theirs").write_bytes(b"written by the other restore")

    restore(bundle_of(tmp_path), root=root, progress=meanwhile)
    assert tree(root)["cache/B/theirs"] == b"written by the other restore"
    assert tree(root)["cache/B/sub/z.json"] == FILES["/cache/B/sub/z.json"]
    assert tree(root)["cache/B/y.cubin"] == FILES["/cache/B/y.cubin"]
    assert leftovers(root) == []
