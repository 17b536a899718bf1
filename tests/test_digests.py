"""The one verifying stream (`warmer.store.digests.VerifiedStream`), blake3 or sha256."""

from __future__ import annotations

import hashlib
import io

import pytest

from warmer.errors import BundleError, RegistryError
from warmer.store.cas import digest_bytes
from warmer.store.digests import VerifiedStream

DATA = b"compiled kernel " * 10_000


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("digest", [digest_bytes(DATA), sha256(DATA)])
def test_the_right_bytes_read_back_whole_or_in_chunks(digest: str) -> None:
    whole = VerifiedStream(io.BytesIO(DATA), digest, len(DATA), "x", BundleError)
    assert whole.read() == DATA
    chunked = VerifiedStream(io.BytesIO(DATA), digest, len(DATA), "x", BundleError)
    assert b"".join(iter(lambda: chunked.read(4096), b"")) == DATA
    chunked.finish()


@pytest.mark.parametrize("digest", [digest_bytes(DATA), sha256(DATA)])
def test_other_bytes_are_refused_naming_what_and_both_digests(digest: str) -> None:
    other = DATA[:-1] + b"!"
    stream = VerifiedStream(io.BytesIO(other), digest, len(DATA), "reg/x: blob", RegistryError)
    with pytest.raises(RegistryError) as refused:
        stream.read()
    algorithm, _, expected = digest.partition(":")
    actual = (digest_bytes(other) if algorithm == "blake3" else sha256(other)).partition(":")[2]
    message = str(refused.value)
    assert message.startswith("reg/x: blob: content does not match its digest"), message
    assert f"{algorithm} {actual[:12]}…, expected {expected[:12]}…" in message


def test_short_long_and_unreadable_streams_raise_the_callers_error() -> None:
    digest = sha256(DATA)
    short = VerifiedStream(io.BytesIO(DATA[:10]), digest, len(DATA), "m", BundleError)
    with pytest.raises(BundleError, match=rf"^m: truncated \(10 of {len(DATA)} bytes\)"):
        short.finish()
    long = VerifiedStream(io.BytesIO(DATA + b"x"), digest, len(DATA), "m", BundleError)
    with pytest.raises(BundleError, match="more than the"):
        long.finish()

    class Broken(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            raise OSError("connection reset")

    broken = VerifiedStream(Broken(), digest, len(DATA), "m", RegistryError)
    with pytest.raises(RegistryError, match="connection reset"):
        broken.read(10)
