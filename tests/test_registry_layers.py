"""A pull reads layers through the strict tar reader of bundles, without a registry.

The layers warmer pushes (zstd in the artifact form, gzip with whiteouts in the image form)
read back whole; a hostile one (a name outside the target, a link, a device, a directory, a
bad header checksum) is refused with exit 2 naming the layer, and nothing reaches the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.registry import synthetic

from warmer.bundle import compressed_writer
from warmer.errors import BundleError, RegistryError
from warmer.oci import Reference
from warmer.registry import (
    _COMPRESSION,
    LAYER_TYPES,
    Form,
    LayerFiles,
    Published,
    _fetch,
    _write_layer,
    layer_members,
)
from warmer.store import Store
from warmer.store.digests import VerifiedStream

REFERENCE = Reference.parse("127.0.0.1:5055/team/x:t")


def blob(data: bytes) -> VerifiedStream:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return VerifiedStream(io.BytesIO(data), digest, len(data), f"{REFERENCE}: blob", RegistryError)


def layer_of(data: bytes, form: Form, files: list[tuple[str, str, int]]) -> LayerFiles:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return LayerFiles(digest, len(data), digest, LAYER_TYPES[form], files)


def compressed(members: list[tuple[tarfile.TarInfo, bytes]], form: Form) -> bytes:
    out = io.BytesIO()
    with (
        compressed_writer(out, _COMPRESSION[form]) as stream,
        tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def member(name: str, data: bytes = b"", **attributes: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attributes.items():
        setattr(info, key, value)
    return info, data


@pytest.mark.parametrize("form", ["artifact", "image"])
def test_the_layers_push_writes_read_back(tmp_path: Path, form: Form) -> None:
    store = Store(tmp_path / "store")
    ref = synthetic(store, "job", {"/c/a": 3000, "/c/d/b": 70_000, "/c/e": 0})
    _info, manifest = store.resolve(ref)
    spool = io.BytesIO()
    layer = _write_layer(list(manifest.files), ["/c/gone"], store, spool, form)
    found = {m.name: m.read() for m in layer_members(blob(spool.getvalue()), layer, REFERENCE)}
    expected = {e.path.lstrip("/"): store.open_object(e.digest).read() for e in manifest.files}
    assert found == {**expected, "c/.wh.gone": b""}


HOSTILE = {
    "traversal": [member("c/../../etc/x", b"x")],
    "absolute": [member("/etc/x", b"x")],
    "pax-traversal": [member("c/a", b"x", pax_headers={"path": "../../x"})],
    "symlink": [member("c/a", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
    "hardlink": [member("c/a", type=tarfile.LNKTYPE, linkname="etc/passwd")],
    "device": [member("c/a", type=tarfile.CHRTYPE, devmajor=1, devminor=3)],
    "directory": [member("c", type=tarfile.DIRTYPE)],
    "fifo": [member("c/a", type=tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("form", ["artifact", "image"])
@pytest.mark.parametrize("case", [*HOSTILE, "bad-checksum"])
def test_a_hostile_layer_is_refused_naming_it_and_nothing_is_stored(
    tmp_path: Path, form: Form, case: str
) -> None:
    source = Store(tmp_path / "source")
    ref = synthetic(source, "job", {"/c/a": 100, "/c/b": 100})
    _info, manifest = source.resolve(ref)
    first = manifest.files[0]
    # a listed file that verifies (staged in the store), then the hostile member
    good = member("c/a", source.open_object(first.digest).read())
    if case == "bad-checksum":
        plain = io.BytesIO()
        with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(good[0], io.BytesIO(good[1]))
        tampered = bytearray(plain.getvalue())
        tampered[0] ^= 0x01  # a name byte: the header checksum no longer adds up
        data = io.BytesIO()
        with compressed_writer(data, _COMPRESSION[form]) as stream:
            stream.write(bytes(tampered))
        layer_bytes = data.getvalue()
    else:
        layer_bytes = compressed([good, *HOSTILE[case]], form)
    layer = layer_of(layer_bytes, form, [(e.path, e.digest, e.size) for e in manifest.files])

    class Stub:
        reference = REFERENCE

        @contextlib.contextmanager
        def open_blob(self, digest: str, size: int) -> Iterator[VerifiedStream]:
            assert digest == layer.digest
            yield blob(layer_bytes)

    store = Store(tmp_path / "clean")
    published = Published(REFERENCE, "sha256:" + "0" * 64, form, manifest, [layer])
    with pytest.raises(BundleError) as refused:
        _fetch(Stub(), published, store, lambda _step, _detail: None)  # type: ignore[arg-type]
    assert refused.value.exit_code == 2
    assert f"{REFERENCE}: layer {layer.digest}: " in str(refused.value), refused.value
    assert store.list() == []
    store.close()
    assert not [path for path in (tmp_path / "clean").rglob("objects/*/*")]
