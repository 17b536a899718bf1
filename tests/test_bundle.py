"""Bundles: deterministic export, and refusal of every hostile or broken bundle."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from helpers.bundles import FILES, make_manifest, manifest_member, member, opener, raw_tar

from warmer.bundle import (
    MANIFEST_NAME,
    bundle_name,
    open_bundle,
    read_manifest,
    verify_bundle,
    write_bundle,
)
from warmer.errors import BundleError
from warmer.restoring import restore


@pytest.mark.parametrize("fmt", ["zst", "gz"])
def test_export_is_deterministic_and_reads_back(tmp_path: Path, fmt: str) -> None:
    manifest = make_manifest()
    first = write_bundle(manifest, opener(FILES), tmp_path / "a", fmt)  # type: ignore[arg-type]
    (tmp_path / "b").mkdir()
    second = write_bundle(manifest, opener(FILES), tmp_path / "b", fmt)  # type: ignore[arg-type]
    assert first.read_bytes() == second.read_bytes()
    assert second.name == bundle_name(manifest, fmt)  # type: ignore[arg-type]
    assert manifest.name in second.name and manifest.env_tag in second.name
    assert read_manifest(second) == manifest
    assert verify_bundle(second) == []
    with open_bundle(second) as bundle:
        got = {entry.path: reader.read_all() for entry, reader in bundle.files()}
    assert got == FILES


def test_gz_bundle_unpacks_with_plain_tar_at_absolute_paths(tmp_path: Path) -> None:
    """What Docker's `ADD bundle.tar.gz /` does: plain tar extraction at the paths."""
    bundle = write_bundle(make_manifest(), opener(FILES), tmp_path, "gz")
    target = tmp_path / "rootfs"
    target.mkdir()
    with tarfile.open(bundle, "r:gz") as tar:
        names = tar.getnames()
        tar.extractall(target, filter="data")
    assert names[0] == MANIFEST_NAME
    for path, data in FILES.items():
        assert (target / path.lstrip("/")).read_bytes() == data


def hostile_cases(tmp_path: Path) -> dict[str, Path]:
    tmp_path.mkdir()
    manifest = make_manifest()
    good = [manifest_member(manifest)] + [
        member(path.lstrip("/"), data) for path, data in sorted(FILES.items())
    ]
    first_name = good[1][0].name
    cases = {
        "traversal": [*good[:1], member("../../escape", b"x"), *good[1:]],
        "absolute": [*good[:1], member("/etc/evil", b"x"), *good[1:]],
        "symlink": [*good[:1], member(first_name, type=tarfile.SYMTYPE, linkname="/etc/passwd")],
        "hardlink": [*good[:1], member(first_name, type=tarfile.LNKTYPE, linkname="etc/passwd")],
        "device": [*good[:1], member(first_name, type=tarfile.CHRTYPE, devmajor=1, devminor=3)],
        "fifo": [*good[:1], member(first_name, type=tarfile.FIFOTYPE)],
        "wrong-hash": [*good[:1], member(first_name, b"X" * good[1][0].size), *good[2:]],
        "missing-member": good[:-1],
        "extra-member": [*good, member("root/extra", b"surprise")],
        "no-manifest": good[1:],
    }
    paths = {name: raw_tar(tmp_path / f"{name}.tar", members) for name, members in cases.items()}
    # a harmless ustar name, and a pax header that says the real name is outside
    sneaky, data = member(first_name, good[1][1] or b"")
    sneaky.pax_headers = {"path": "../../escape"}
    paths["pax-traversal"] = raw_tar(tmp_path / "pax.tar", [*good[:1], (sneaky, data), *good[2:]])
    paths["gnu-format"] = raw_tar(tmp_path / "gnu.tar", good, fmt=tarfile.GNU_FORMAT)
    paths["global-header"] = raw_tar(tmp_path / "g.tar", good, global_headers={"comment": "x"})
    tampered = bytearray(raw_tar(tmp_path / "sum.tar", good).read_bytes())
    second_header = 512 * (1 + -(-good[0][0].size // 512))
    tampered[second_header] ^= 0x01  # a name byte: the header checksum no longer adds up
    paths["bad-checksum"] = tmp_path / "bad-checksum.tar"
    paths["bad-checksum"].write_bytes(bytes(tampered))
    whole = write_bundle(manifest, opener(FILES), tmp_path, "zst")
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.tar.zst"
    truncated.write_bytes(data[: len(data) // 2])
    paths["truncated"] = truncated
    gz = write_bundle(manifest, opener(FILES), tmp_path / "whole.tar.gz", "gz").read_bytes()
    paths["truncated-gz"] = tmp_path / "truncated.tar.gz"
    paths["truncated-gz"].write_bytes(gz[: len(gz) - 100])
    garbage = tmp_path / "garbage.tar.zst"
    garbage.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(4096))
    paths["garbage"] = garbage
    return paths


def test_hostile_and_broken_bundles_are_refused_without_writing(tmp_path: Path) -> None:
    cases = hostile_cases(tmp_path / "cases")
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, path in cases.items():
        target = outside / "target"
        target.mkdir()
        with pytest.raises(BundleError) as refused:
            restore(path, root=target)
        assert str(path) in str(refused.value), name
        assert verify_bundle(path), name
        # nothing landed: not in the target, not beside it
        assert list(target.rglob("*")) == [], name
        assert sorted(p.name for p in outside.iterdir()) == ["target"], name
        target.rmdir()


@pytest.mark.parametrize("content", [b"", b"just some text\n", b"PK\x03\x04" + bytes(600)])
def test_a_file_that_is_no_bundle_says_so(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not-a-bundle.tar"
    path.write_bytes(content)
    with pytest.raises(BundleError, match=r"not-a-bundle\.tar: not a warmer bundle \("):
        read_manifest(path)
