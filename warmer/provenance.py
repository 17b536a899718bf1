"""Provenance: the in-toto Statement of a snapshot, where it is kept, and the trust policy.

The statement (in-toto v1, built and validated with PyPI `in-toto-attestation`) says who made
a snapshot and from what, as a SLSA v1 provenance predicate:

- subject: one resource, named like the bundle (`NAME__ENV-TAG__CONTENT-ID`) with the
  snapshot id as its digest (`{"blake3": HEX}`): the digest of the canonical manifest, which
  lists every file's blake3. It is the one digest that is the same for a `.tar.zst` and a
  `.tar.gz` of the snapshot, its registry push and its store copy, so one signature follows
  the content everywhere; a file changed after signing fails its blake3 against the signed
  manifest while it is read, before any byte is installed.
- predicate: `buildDefinition.externalParameters.job` is the job spec (secrets by name
  only), `internalParameters` the env key (its parts and digest), the runtime and the host,
  `resolvedDependencies` the image reference and its digest; `runDetails` names the builder
  (warmer and its version), when it ran, and the verify result (hit rate, cold vs warm) as a
  byproduct.

A store keeps one envelope per snapshot (`Store.put_attestation`): unsigned until a key signs
it, gaining a signature per key. `Trust` is the requirement that restore, pull, import and
`warmer.restore()` enforce before anything is written: a signature by a trusted key over a
statement whose subject is this snapshot, else a TrustError (exit 2) naming which of
unsigned / untrusted key / another bundle / altered after signing it is.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import warmer
from warmer.bundle import bundle_name
from warmer.errors import BundleError, TrustError, UsageError
from warmer.signing import (
    Signed,
    checked,
    envelope_bytes,
    load_json,
    load_public_key,
    read_envelopes,
    read_sidecar,
    sidecar,
    sign,
    verify,
)
from warmer.store.manifest import Manifest

if TYPE_CHECKING:
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner, SSlibKey

    from warmer.config import Settings
    from warmer.store import SnapshotInfo, Store

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILDER_ID = "urn:warmer"
Kind = Literal["run", "save", "store"]
#: A statement is small (a job spec and an env key); this bounds a hostile one.
MAX_STATEMENT_BYTES = 1 << 20


class _Subject(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    name: str = Field("", max_length=1024)
    digest: dict[str, str] = Field(min_length=1, max_length=8)


class _Statement(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: list[_Subject] = Field(min_length=1, max_length=64)
    predicateType: str = Field(min_length=1, max_length=1024)
    predicate: dict[str, Any]


@dataclass(frozen=True)
class Made:
    """What made a snapshot, beyond its manifest (`kind` run, save, or store: signed later)."""

    kind: Kind
    runtime: str | None = None
    host: str | None = None
    image: str | None = None
    image_id: str | None = None
    repo_digests: tuple[str, ...] = ()
    started: float | None = None
    finished: float | None = None


def subject_name(manifest: Manifest) -> str:
    """The subject's name: the bundle's file name without its suffix."""
    return bundle_name(manifest, "tar").removesuffix(".tar")


def snapshot_hex(manifest: Manifest) -> str:
    return manifest.digest.split(":", 1)[1]


def statement(manifest: Manifest, made: Made) -> dict[str, Any]:
    """The in-toto Statement of `manifest` (validated by in-toto-attestation)."""
    dependencies: list[dict[str, Any]] = []
    if made.image:
        image: dict[str, Any] = {"name": made.image}
        if made.image_id and made.image_id.startswith("sha256:"):
            image["digest"] = {"sha256": made.image_id.split(":", 1)[1]}
        if made.repo_digests:
            image["annotations"] = {"repoDigests": list(made.repo_digests)}
        dependencies.append(image)
    metadata = {
        key: _timestamp(value)
        for key, value in (("startedOn", made.started), ("finishedOn", made.finished))
        if value is not None
    }
    predicate: dict[str, Any] = {
        "buildDefinition": {
            "buildType": f"urn:warmer:{made.kind}:v1",
            "externalParameters": {"name": manifest.name, "job": manifest.job},
            "internalParameters": {
                "env": manifest.env,
                "envTag": manifest.env_tag,
                "envDigest": manifest.env_digest,
                "runtime": made.runtime,
                "host": made.host,
            },
            "resolvedDependencies": dependencies,
        },
        "runDetails": {
            "builder": {"id": BUILDER_ID, "version": {"warmer": warmer.__version__}},
            "metadata": metadata,
            "byproducts": (
                [{"name": "verify", "annotations": manifest.verify}] if manifest.verify else []
            ),
        },
    }
    document = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name(manifest), "digest": {"blake3": snapshot_hex(manifest)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }
    _in_toto_check(document, "the statement")
    return document


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def payload(document: dict[str, Any]) -> bytes:
    """The canonical bytes that are signed (integers stay integers, unlike protobuf JSON)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _in_toto_check(document: dict[str, Any], where: str) -> None:
    """in-toto-attestation's own validation of a Statement."""
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    try:
        proto = json_format.ParseDict(document, statement_pb2.Statement())
        Statement.copy_from_pb(proto).validate()
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise TrustError(f"{where}: not a valid in-toto statement ({str(exc)[:200]})") from None


def parse_statement(data: bytes, where: str) -> dict[str, Any]:
    """An envelope's payload as an in-toto Statement, checked (untrusted: bounded first)."""
    if len(data) > MAX_STATEMENT_BYTES:
        raise TrustError(
            f"{where}: a statement of {len(data):,} bytes, more than {MAX_STATEMENT_BYTES:,}"
        )
    document = load_json(data, f"{where}: statement", TrustError)
    checked(_Statement, document, f"{where}: statement")
    _in_toto_check(document, where)
    result: dict[str, Any] = document
    return result


def check_subject(data: bytes, manifest: Manifest, where: str) -> dict[str, Any]:
    """The statement in `data`, if its subject is `manifest`; else a TrustError saying whether
    the bundle changed after signing (same name) or the statement is another bundle's."""
    document = parse_statement(data, where)
    wanted = snapshot_hex(manifest)
    subjects = document["subject"]
    if any(item["digest"].get("blake3") == wanted for item in subjects):
        return document
    name = subject_name(manifest)
    signed = ", ".join(
        f"{item.get('name') or '?'} blake3:{str(item['digest'].get('blake3'))[:16]}…"
        for item in subjects[:4]
    )
    if any(item.get("name") == name for item in subjects):
        raise TrustError(
            f"{where}: altered after signing: its manifest is blake3:{wanted[:16]}…, the "
            f"signed statement names {signed}"
        )
    raise TrustError(
        f"{where}: the signed statement is about another bundle ({signed}), not this one "
        f"({name} blake3:{wanted[:16]}…)"
    )


# -- the trust policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """Signatures required: by one of `keys`, over a statement about the snapshot at hand."""

    keys: tuple[SSlibKey, ...]

    @classmethod
    def of(
        cls, paths: Sequence[str | Path] | None, settings: Settings | None = None
    ) -> Trust | None:
        """`--trust KEY…` when given; else `trust.keys` when `trust.require` is set; else None
        (nothing required)."""
        if not paths:
            if settings is None:
                from warmer.config import settings as current

                settings = current()
            if not settings.trust_require:
                return None
            if not settings.trust_keys:
                raise UsageError(
                    "trust.require is set but no key is trusted: set trust.keys "
                    "(WARMER_TRUST_KEYS) or pass --trust KEY"
                )
            paths = settings.trust_keys
        return cls(tuple(load_public_key(Path(path)) for path in paths))

    def check(self, data: bytes | None, manifest: Manifest, where: str, looked: str) -> Signed:
        """The envelope in `data` that a trusted key signed over this snapshot's statement."""
        if data is None:
            raise TrustError(f"{where}: unsigned: no signature ({looked})")
        signed = verify(read_envelopes(data, f"{where}: signature"), self.keys, where)
        check_subject(signed.envelope.payload, manifest, where)
        return signed

    def bundle(self, path: Path, manifest: Manifest, data: bytes | None = None) -> Signed:
        """Check the envelope file beside the bundle file `path` (`data`: already read)."""
        data = data if data is not None else read_sidecar(path)
        return self.check(data, manifest, str(path), f"no {sidecar(path).name}")

    def stored(self, store: Store, manifest: Manifest) -> Signed:
        """Check the envelope the store keeps for `manifest`."""
        where = f"{store.root}:{manifest.ref}"
        return self.check(
            store.attestation(manifest.digest), manifest, where, "none kept in the store"
        )


# -- envelopes kept with snapshots and bundles ---------------------------------------------------


def attached(data: bytes, manifest: Manifest, where: str) -> Envelope:
    """The envelope in `data` (from a sidecar or a registry) that is about `manifest`: it must
    parse and name it, whether or not a signature is required (it is kept in the store)."""
    envelopes = read_envelopes(data, f"{where}: signature")
    problem: TrustError | None = None
    for envelope in envelopes:
        try:
            check_subject(envelope.payload, manifest, where)
            return envelope
        except TrustError as exc:
            problem = problem or exc
    assert problem is not None  # read_envelopes returns at least one
    raise problem


def kept(store: Store, manifest: Manifest) -> Envelope | None:
    """The envelope the store keeps for `manifest` (None when it keeps none)."""
    data = store.attestation(manifest.digest)
    if data is None:
        return None
    return attached(data, manifest, f"{store.root}:{manifest.ref}")


def keep(store: Store, manifest: Manifest, envelope: Envelope) -> None:
    """Keep `envelope` with the snapshot; signatures over the same statement are merged."""
    old = kept(store, manifest)
    if old is not None and old.payload == envelope.payload:
        envelope.signatures = {**old.signatures, **envelope.signatures}
    store.put_attestation(manifest.digest, envelope_bytes(envelope))


def record(
    store: Store, manifest: Manifest, made: Made, signer: CryptoSigner | None = None
) -> Envelope:
    """Make and keep the statement of a snapshot just made (`warmer run`, `warmer save`),
    signed when a signer is given."""
    from securesystemslib.dsse import Envelope

    from warmer.signing import PAYLOAD_TYPE

    data = payload(statement(manifest, made))
    envelope = sign(data, signer) if signer else Envelope(data, PAYLOAD_TYPE, {})
    keep(store, manifest, envelope)
    return envelope


def sign_kept(store: Store, manifest: Manifest, signer: CryptoSigner) -> Envelope:
    """The kept statement signed by `signer` as well (a statement of what the store knows,
    kind `store`, when none is kept), and kept."""
    envelope = kept(store, manifest)
    if envelope is None:
        return record(store, manifest, Made("store"), signer)
    sign(envelope.payload, signer, into=envelope)
    keep(store, manifest, envelope)
    return envelope


def write_sidecar(bundle: Path, envelope: Envelope | None) -> Path | None:
    """Write the signed `envelope` beside `bundle` (`BUNDLE.intoto.jsonl`); an unsigned one
    or none writes nothing (and removes a stale file of an earlier bundle of that name)."""
    from warmer.files import atomic_file

    path = sidecar(bundle)
    if envelope is None or not envelope.signatures:
        path.unlink(missing_ok=True)
        return None
    with atomic_file(path, durable=True) as out:
        out.write(envelope_bytes(envelope))
    return path


def import_signed(store: Store, path: Path, trust: Trust | None) -> SnapshotInfo:
    """Import the bundle file `path` and keep the envelope beside it with the snapshot. Under
    `trust` the envelope must verify first, and a file that fails its blake3 against the
    signed manifest is reported as altered after signing; nothing is committed then."""
    from warmer.bundle import import_bundle, read_manifest

    manifest = read_manifest(path)
    data = read_sidecar(path)
    if trust is not None:
        envelope: Envelope | None = trust.bundle(path, manifest, data).envelope
    else:
        envelope = attached(data, manifest, str(path)) if data is not None else None
    try:
        info = import_bundle(store, path, expect=manifest.digest)
    except BundleError as exc:
        if trust is None:
            raise
        raise TrustError(f"{path}: altered after signing: {exc}") from None
    if envelope is not None:
        keep(store, manifest, envelope)
    return info


def describe(envelope: Envelope, where: str) -> dict[str, Any]:
    """What `warmer show` prints: the statement and who signed it (key ids, unverified)."""
    document = parse_statement(envelope.payload, where)
    return {"signatures": sorted(envelope.signatures), "statement": document}


def host_name() -> str:
    return socket.gethostname()


def passphrase_source(
    settings: Settings, prompt: Callable[[], str | None]
) -> Callable[[], str | None]:
    """$WARMER_SIGNING_PASSPHRASE when set, else `prompt()` (a terminal), asked at most once."""

    def source() -> str | None:
        if settings.signing_passphrase is not None:
            return settings.signing_passphrase.get_secret_value()
        return prompt()

    return source
