"""Signing: key files, DSSE envelopes, and their verification against trusted keys.

Keys are ordinary PEM files made by `warmer key generate` (or openssl): an ed25519 or ECDSA
P-256 private key (PKCS#8, encrypted when a passphrase was given; the file is 0600) and its
public key beside it (`PREFIX.pub`, SubjectPublicKeyInfo). A key's id is securesystemslib's
default keyid (sha256 of the public key's canonical form), the same whatever file holds it.

A signature is a DSSE envelope (securesystemslib) whose payload is an in-toto Statement
(`warmer.provenance`). Envelopes arrive from anyone (a file beside a bundle, a registry
referrer), so they are parsed here with limits before anything else sees them: at most
`MAX_ENVELOPE_BYTES` in all and `MAX_ENVELOPES` lines, typed fields of bounded length,
strict base64; anything else is a TrustError (exit 2). Nothing secret is written anywhere:
the passphrase comes from $WARMER_SIGNING_PASSPHRASE or a prompt, never from an argument.
securesystemslib and cryptography are imported inside the functions that use them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warmer.errors import TrustError, UsageError

if TYPE_CHECKING:
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner, SSlibKey

KeyType = Literal["ed25519", "ecdsa"]
#: DSSE payload type of an in-toto Statement.
PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: A file of envelopes (or a registry blob) is refused past this size, before it is parsed.
MAX_ENVELOPE_BYTES = 4 << 20
MAX_ENVELOPES = 16
MAX_SIGNATURES = 16
#: A key file is small; a bigger one is not a key.
MAX_KEY_BYTES = 64 << 10
#: The suffix of the envelope file beside a bundle.
SIDECAR_SUFFIX = ".intoto.jsonl"
PASSPHRASE_ENV = "WARMER_SIGNING_PASSPHRASE"
_ASCII = r"^[\x21-\x7e]*$"
_BASE64 = r"^[A-Za-z0-9+/=_-]*$"


class _SignatureModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    keyid: str = Field("", max_length=256, pattern=_ASCII)
    sig: str = Field(min_length=1, max_length=8192, pattern=_BASE64)


class _EnvelopeModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    payload: str = Field(max_length=MAX_ENVELOPE_BYTES, pattern=_BASE64)
    payloadType: str = Field(min_length=1, max_length=256, pattern=_ASCII)
    signatures: list[_SignatureModel] = Field(max_length=MAX_SIGNATURES)


# -- keys --------------------------------------------------------------------------------------


def public_path(prefix: Path) -> Path:
    """Where the public key of the private key file `prefix` lives."""
    return prefix.with_name(prefix.name + ".pub")


def generate(kind: KeyType, prefix: Path, passphrase: str | None) -> tuple[Path, str]:
    """Write a new key pair: `prefix` (private, 0600, encrypted when `passphrase` is given) and
    `prefix.pub`; returns the public key's path and the key id. Existing files are refused."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )
    from securesystemslib.signer import SSlibKey

    public = public_path(prefix)
    for path in (prefix, public):
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path}: already exists (a key is never overwritten)")
    key = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    encryption = BestAvailableEncryption(passphrase.encode()) if passphrase else NoEncryption()
    _write_new(prefix, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption), 0o600)
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    _write_new(public, pem, 0o644)
    return public, SSlibKey.from_crypto(key.public_key()).keyid


def _write_new(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _read_key(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_KEY_BYTES:
        raise UsageError(f"{what} {path}: more than {MAX_KEY_BYTES:,} bytes: not a key file")
    return data


def _supported(key: Any) -> bool:
    """ed25519, or ECDSA on P-256 (public or private)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return True
    return isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and (
        isinstance(key.curve, ec.SECP256R1)
    )


def load_signer(path: Path, passphrase: Callable[[], str | None]) -> CryptoSigner:
    """The signer of the private key file `path`; `passphrase()` is asked only when the key
    is encrypted (None: there is none to give)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    data = _read_key(path, "signing key")
    try:
        try:
            key = load_pem_private_key(data, None)
        except TypeError:  # encrypted: ask for the passphrase
            secret = passphrase()
            if not secret:
                raise UsageError(
                    f"signing key {path} is encrypted: set {PASSPHRASE_ENV} or run on a terminal"
                ) from None
            key = load_pem_private_key(data, secret.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(
            f"signing key {path}: not a PEM private key, or a wrong passphrase"
        ) from None
    if not _supported(key):
        raise UsageError(f"signing key {path}: only ed25519 and ECDSA P-256 keys are supported")
    return CryptoSigner(key)


def load_public_key(path: Path) -> SSlibKey:
    """The trusted public key in the PEM file `path`."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey

    data = _read_key(path, "trusted key")
    try:
        key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(
            f"trusted key {path}: not a PEM public key (give the .pub file of the pair)"
        ) from None
    if not _supported(key):
        raise UsageError(f"trusted key {path}: only ed25519 and ECDSA P-256 keys are supported")
    return SSlibKey.from_crypto(key)


# -- envelopes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    """An envelope that verified, and the ids of the trusted keys whose signatures did."""

    envelope: Envelope
    keyids: tuple[str, ...]


def sign(payload: bytes, signer: CryptoSigner, into: Envelope | None = None) -> Envelope:
    """A DSSE envelope of `payload` signed by `signer`; `into` (same payload) gains the
    signature beside those it has."""
    from securesystemslib.dsse import Envelope

    envelope = into if into is not None else Envelope(payload, PAYLOAD_TYPE, {})
    if envelope.payload != payload:
        raise ValueError("an envelope gains signatures only over its own payload")
    envelope.sign(signer)
    return envelope


def envelope_bytes(envelope: Envelope) -> bytes:
    """One line of a `.intoto.jsonl` file (with its newline)."""
    return json.dumps(envelope.to_dict(), sort_keys=True, separators=(",", ":")).encode() + b"\n"


def read_envelopes(data: bytes, where: str) -> list[Envelope]:
    """Every envelope of a `.intoto.jsonl` document (one per line), checked field by field."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import Signature

    if len(data) > MAX_ENVELOPE_BYTES:
        raise TrustError(
            f"{where}: {len(data):,} bytes of signatures, more than the limit of "
            f"{MAX_ENVELOPE_BYTES:,}: refused"
        )
    lines = [line for line in data.split(b"\n") if line.strip()]
    if not lines:
        raise TrustError(f"{where}: holds no signature envelope")
    if len(lines) > MAX_ENVELOPES:
        raise TrustError(f"{where}: {len(lines)} envelopes, more than {MAX_ENVELOPES}: refused")
    envelopes = []
    for number, line in enumerate(lines, start=1):
        at = f"{where}: line {number}" if len(lines) > 1 else where
        model = checked(_EnvelopeModel, load_json(line, at, TrustError), at)
        signatures = {}
        for position, item in enumerate(model.signatures):
            sig = _base64(item.sig, f"{at}: signatures[{position}].sig")
            if item.keyid in signatures:
                raise TrustError(f"{at}: signatures[{position}]: a second signature by one key")
            signatures[item.keyid] = Signature(item.keyid, sig.hex())
        payload = _base64(model.payload, f"{at}: payload")
        envelopes.append(Envelope(payload, model.payloadType, signatures))
    return envelopes


def load_json(data: bytes, where: str, error: type[Exception]) -> Any:
    """`json.loads` of untrusted bytes (already bounded by the caller): what does not parse,
    nests too deep or is not UTF-8 is an `error` naming `where`."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise error(f"{where}: not JSON ({str(exc)[:200]})") from None


def _base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # DSSE also allows the URL-safe alphabet
            return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise TrustError(f"{where}: not base64") from None


def verify(envelopes: Sequence[Envelope], keys: Sequence[SSlibKey], where: str) -> Signed:
    """The first in-toto envelope that a trusted key signed; else a TrustError naming the keys
    that did sign (unsigned, or signed by an untrusted key)."""
    from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError

    signers: list[str] = []
    for envelope in envelopes:
        if envelope.payload_type != PAYLOAD_TYPE:
            continue
        signers += list(envelope.signatures)
        try:
            accepted = envelope.verify(list(keys), 1)
        except (VerificationError, UnverifiedSignatureError, ValueError):
            continue
        return Signed(envelope, tuple(accepted))
    trusted = ", ".join(key.keyid[:16] for key in keys)
    if not signers:
        raise TrustError(f"{where}: unsigned (no signature on an in-toto statement)")
    found = ", ".join(keyid[:16] or "(no key id)" for keyid in signers)
    raise TrustError(
        f"{where}: signed by an untrusted key: signature(s) by {found}, trusted: {trusted}"
    )


def sidecar(bundle: Path) -> Path:
    """The envelope file beside a bundle file: `BUNDLE.intoto.jsonl`."""
    return bundle.with_name(bundle.name + SIDECAR_SUFFIX)


def read_sidecar(bundle: Path) -> bytes | None:
    """The bytes of a bundle's envelope file (at most the limit and one byte), None if none."""
    path = sidecar(bundle)
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_ENVELOPE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TrustError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def checked(model: type[BaseModel], data: Any, where: str) -> Any:
    """`model.model_validate(data)`; a mismatch is a TrustError naming the first field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "(top)"
        raise TrustError(f"{where}: {field}: {error['msg']}") from None
