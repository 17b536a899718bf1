"""Bundles in an OCI registry: push a snapshot, pull one back, pick the tag that fits here.

Two forms of the same content. The artifact form (default) is an OCI artifact whose config
blob holds the bundle's manifest; its layers are zstd tars. The image form (`as_image`) is a
runnable-image manifest: gzip tar layers holding the files at their absolute paths, the env
key as labels, so that `COPY --from=REGISTRY/REPO:TAG / /` or a Kubernetes image volume
delivers the caches. Both carry the env key's parts as manifest annotations, which is how
`--auto` chooses a tag without downloading any layer.

Layers are cut against a base: the manifest already at the tag (or the named `base`, or the
repository's closest push of the same job). A base layer whose files are still mostly live is
reused as it is, so a second push that shares most files with the first uploads only the new
files; a file the new snapshot dropped is hidden with a whiteout in the image form and simply
not listed in the artifact form. Every pulled byte is checked twice: each blob against its
sha256, each file against its blake3 in the manifest; layers are read by the strict tar
reader of bundles (`bundle.TarReader`), so a layer holding a link, a device or an unsafe
name is refused. The config blob is read like a manifest in a bundle: its size checked before
it is fetched, its files counted before it is parsed (`store.manifest.bound_files`), then
parsed into strict models; anything wrong is RegistryBadReply (exit 2) naming the document.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Annotated, Any, BinaryIO, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from warmer.bundle import (
    MEMBER_MTIME,
    Format,
    TarMember,
    TarReader,
    compressed_writer,
    decompressing,
    member_name,
    stored_object,
    tar_member,
)
from warmer.envkey import EnvKey, compare
from warmer.errors import (
    BundleError,
    NothingToRestore,
    NotWarmerManifest,
    RegistryBadReply,
    RegistryError,
    RegistryRefused,
    TrustError,
    UsageError,
    printable,
)
from warmer.oci import (
    OCI_MANIFEST,
    Reference,
    Registry,
    Sha256,
    parse_reply,
    sanitize_repository,
    sanitize_tag,
)
from warmer.progress import Progress, silent
from warmer.provenance import PREDICATE_TYPE, Trust, attached, keep, kept
from warmer.signing import MAX_ENVELOPE_BYTES, envelope_bytes
from warmer.store import SnapshotInfo, Store
from warmer.store.digests import VerifiedStream, mismatch
from warmer.store.manifest import (
    MAX_MANIFEST_BYTES,
    VALUES_PER_FILE,
    FileEntry,
    Manifest,
    bound_files,
)
from warmer.units import format_size

if TYPE_CHECKING:
    from securesystemslib.dsse import Envelope

Form = Literal["artifact", "image"]
ARTIFACT_TYPE = "application/vnd.warmer.bundle.v1"
ARTIFACT_CONFIG = "application/vnd.warmer.bundle.config.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES: dict[Form, str] = {
    "artifact": "application/vnd.oci.image.layer.v1.tar+zstd",
    "image": "application/vnd.oci.image.layer.v1.tar+gzip",
}
_COMPRESSION: dict[Form, Format] = {"artifact": "zst", "image": "gz"}
_FORMATS: dict[str, Format] = {LAYER_TYPES[form]: fmt for form, fmt in _COMPRESSION.items()}
#: New files are cut into layers of about this many (uncompressed) bytes.
LAYER_BYTES = 64 << 20
#: Docker refuses images with more than 127 layers; stay well under it.
MAX_LAYERS = 100
#: A base layer is reused while at least this share of its bytes is still live.
REUSE_MIN_LIVE = 0.5
_ANNOTATION = "org.warmer"
#: A config holds the bundle's manifest and the file list of each layer.
CONFIG_LIMIT = 2 * MAX_MANIFEST_BYTES
#: Values per file in a config: its manifest entry, and a `[path, digest, size]` record in
#: up to two layers (a reused base layer and the new one that replaces the file).
_CONFIG_VALUES_PER_FILE = VALUES_PER_FILE + 2 * 4
_BASE_CANDIDATES = 10
_WORKERS = 4
#: Tags a "no such tag" error lists.
_TAGS_SHOWN = 10
#: A signature travels as an OCI artifact whose one layer is a DSSE envelope, referring to
#: the pushed manifest (OCI 1.1 `subject`) and tagged `sha256-<hex>.att` for registries
#: without the referrers API (cosign's tag schema).
DSSE_TYPE = "application/vnd.dsse.envelope.v1+json"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
_EMPTY_CONFIG = b"{}"
#: Signature referrers looked at per pull.
_REFERRERS_READ = 4


@dataclass
class LayerFiles:
    """One layer: its descriptor, its uncompressed digest, the files and whiteouts in it."""

    digest: str
    size: int
    diff_id: str
    media_type: str
    files: list[tuple[str, str, int]]
    whiteouts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Blake3 = Annotated[str, StringConstraints(pattern=r"^blake3:[0-9a-f]{64}$")]
_RECORD = ConfigDict(strict=True, extra="forbid", frozen=True)


class _LayerRecord(BaseModel):
    """A layer as the config records it (`LayerFiles.to_dict`), read strictly."""

    model_config = _RECORD
    digest: Sha256
    size: int = Field(ge=0)
    diff_id: Sha256
    media_type: str
    files: list[tuple[str, Blake3, Annotated[int, Field(ge=0)]]]
    whiteouts: list[str] = Field(default_factory=list)


class _WarmerRecord(BaseModel):
    """The `warmer` part of a config: the bundle's manifest and each layer's files."""

    model_config = _RECORD
    format: Literal[1]
    manifest: dict[str, Any]  # checked by Manifest.from_document, as a bundle's is
    layers: list[_LayerRecord]


class _Config(BaseModel):
    """A config blob (the image form's has an image config's fields around it)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    warmer: _WarmerRecord


@dataclass
class Published:
    """What a registry tag holds, as warmer reads it."""

    reference: Reference
    digest: str
    form: Form
    manifest: Manifest
    layers: list[LayerFiles]


@dataclass
class PushReport:
    reference: str
    digest: str
    form: Form
    files: int
    bytes: int
    layers: int
    layers_reused: int
    layers_uploaded: int
    bytes_sent: int
    base: str | None
    #: the tag of this snapshot alone (`snapshot_tag`), which a later push never moves
    snapshot_tag: str
    #: the signature referrer pushed with it (`REPO:sha256-<hex>.att`), None when unsigned
    attestation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PullReport:
    reference: str
    digest: str
    form: Form
    ref: str
    files: int
    bytes: int
    layers_fetched: int
    bytes_received: int
    passed_over: list[dict[str, Any]] = field(default_factory=list)
    #: key ids that signed its statement (verified only when a signature was required)
    signed_by: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- annotations and configs -------------------------------------------------------------------


def env_annotations(manifest: Manifest) -> dict[str, str]:
    """The env key's parts, job name and content id, readable without pulling a layer."""
    key = EnvKey.from_dict(manifest.env)
    parts = {
        "job": manifest.name,
        "content-id": manifest.content_id,
        "env-tag": manifest.env_tag,
        "env": json.dumps(key.to_dict(), sort_keys=True, separators=(",", ":")),
        "torch": key.torch,
        "backend": key.backend,
        "cuda": key.cuda,
        "hip": key.hip,
        "cc": key.cc,
        "gfx-arch": key.gfx_arch,
        "triton": key.triton,
        "vllm": key.vllm,
    }
    found = {f"{_ANNOTATION}.{name}": value for name, value in parts.items() if value}
    found["org.opencontainers.image.created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    found["org.opencontainers.image.title"] = f"warmer bundle {manifest.ref}"
    return found


def _warmer_config(manifest: Manifest, layers: list[LayerFiles]) -> dict[str, Any]:
    return {
        "format": 1,
        "manifest": manifest.to_dict(),
        "layers": [layer.to_dict() for layer in layers],
    }


def _config_blob(form: Form, manifest: Manifest, layers: list[LayerFiles]) -> bytes:
    warmer_part = _warmer_config(manifest, layers)
    if form == "artifact":
        document: dict[str, Any] = {"warmer": warmer_part}
    else:
        labels = {k: v for k, v in env_annotations(manifest).items() if k.startswith(_ANNOTATION)}
        document = {
            "architecture": _goarch(),
            "os": "linux",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(MEMBER_MTIME)),
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": "warmer push --as-image"} for _ in layers],
            "warmer": warmer_part,
        }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _goarch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


# -- reading what is published -----------------------------------------------------------------


def read_published(registry: Registry, tag_or_digest: str) -> Published | None:
    """The warmer content at a tag, or None when the tag does not exist."""
    found = registry.get_manifest(tag_or_digest)
    if found is None:
        return None
    digest, document = found
    reference = registry.reference.with_tag(tag_or_digest)
    where = registry.where(tag_or_digest)
    config = document.config
    if config.mediaType == ARTIFACT_CONFIG:
        form: Form = "artifact"
    elif config.mediaType == IMAGE_CONFIG and f"{_ANNOTATION}.job" in document.annotations:
        form = "image"
    else:
        raise NotWarmerManifest(
            f"{where}: manifest: not a warmer bundle (its config is "
            f"{printable(repr(config.mediaType[:100]))}, not {ARTIFACT_CONFIG} or a warmer image)"
        )
    what = f"{where}: config {config.digest}"
    blob = registry.get_blob(config.digest, config.size, CONFIG_LIMIT, what)
    try:
        bound_files(blob, _CONFIG_VALUES_PER_FILE)
        part = parse_reply(_Config, blob, what).warmer
        manifest = Manifest.from_document(part.manifest)
    except BundleError as exc:
        raise RegistryBadReply(f"{what}: warmer.manifest: {printable(exc)}") from None
    layers = [LayerFiles(**record.model_dump()) for record in part.layers]
    listed = [(layer.digest, layer.size) for layer in document.layers]
    if listed != [(layer.digest, layer.size) for layer in layers]:
        raise RegistryBadReply(f"{what}: its layers are not the manifest's layers")
    return Published(reference, digest, form, manifest, layers)


def select_tag(registry: Registry, here: EnvKey | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The tag whose env key matches this machine, and every other tag with why it was passed.

    Among matching tags the one with the fewest warnings wins, then the newest push.
    """
    here = here or EnvKey.probe()
    tags = _bundle_tags(registry)
    if not tags:
        raise NothingToRestore(str(_no_such_tag(registry, None, [])))

    def judge(tag: str) -> tuple[str, list[str], list[str], str]:
        try:
            found = registry.get_manifest(tag)
        except NotWarmerManifest:
            return tag, ["not a warmer bundle"], [], ""
        notes = found[1].annotations if found else {}
        env_text = notes.get(f"{_ANNOTATION}.env")
        if not env_text:
            return tag, ["not a warmer bundle"], [], ""
        try:
            env = json.loads(env_text)
        except ValueError:
            env = None
        if not isinstance(env, dict):
            return tag, ["its env annotation is unreadable"], [], ""
        differences = compare(EnvKey.from_dict(env), here)
        mismatches = [printable(d) for d in differences if d.severity == "mismatch"]
        warnings = [printable(d) for d in differences if d.severity == "warning"]
        return tag, mismatches, warnings, notes.get("org.opencontainers.image.created", "")

    with ThreadPoolExecutor(_WORKERS) as pool:
        judged = list(pool.map(judge, tags))
    fitting = [item for item in judged if not item[1]]
    if not fitting:
        reasons = "\n  ".join(f"{tag}: {'; '.join(why)}" for tag, why, _w, _c in judged)
        raise NothingToRestore(
            f"{registry.reference}: no tag matches this machine ({here.tag}):\n  {reasons}"
        )
    fitting.sort(key=lambda item: item[3], reverse=True)  # newest push first …
    fitting.sort(key=lambda item: len(item[2]))  # … among those with the fewest warnings
    chosen = fitting[0][0]
    passed = [
        {"tag": tag, "reasons": why or [f"a better match was chosen ({len(warnings)} warnings)"]}
        for tag, why, warnings, _created in judged
        if tag != chosen
    ]
    return chosen, passed


# -- push --------------------------------------------------------------------------------------


def push(
    store: Store,
    ref: str,
    target: Reference,
    *,
    form: Form = "artifact",
    insecure: bool = False,
    base: str | None = None,
    progress: Progress | None = None,
) -> PushReport:
    """Push the snapshot `ref` of `store` to `target` (default tag: its env tag), and under
    its `snapshot_tag`."""
    _info, manifest = store.resolve(ref)
    registry = Registry(target, insecure=insecure)
    tag = target.tag or sanitize_tag(manifest.env_tag)
    reference = target.with_tag(tag)
    base_published = _find_base(registry, tag, base, manifest, form)
    plan = plan_layers(manifest, base_published.layers if base_published else [], form)
    say = progress or silent
    layers: list[LayerFiles] = []
    uploaded = reused = 0

    def build_and_upload(files: list[FileEntry], whiteouts: list[str]) -> tuple[LayerFiles, bool]:
        with tempfile.TemporaryFile() as spool:
            layer = _write_layer(files, whiteouts, store, spool, form)
            sent = registry.upload_blob(cast(BinaryIO, spool), layer.digest, layer.size)
        return layer, sent

    #: the sizes of the files in each layer of the plan, for the `files` reports
    contents = [
        [f.size for f in item[0]] if isinstance(item, tuple) else [f[2] for f in item.files]
        for item in plan
    ]
    totals = {"files_total": sum(map(len, contents)), "bytes_total": sum(map(sum, contents))}
    done_files = done_bytes = 0
    with ThreadPoolExecutor(min(_WORKERS, max(1, len(plan)))) as pool:
        jobs = []
        for item in plan:
            if isinstance(item, LayerFiles):
                jobs.append(pool.submit(_reuse, registry, item))
            else:
                jobs.append(pool.submit(build_and_upload, *item))
        for number, (item, job) in enumerate(zip(plan, jobs, strict=True), start=1):
            layer, sent = job.result()
            layers.append(layer)
            is_reused = isinstance(item, LayerFiles)
            reused += is_reused
            uploaded += sent
            state = "reused" if is_reused else ("uploaded" if sent else "already there")
            size = format_size(layer.size)
            say("layer", {"detail": f"{number}/{len(plan)} {state} {layer.digest[7:19]} ({size})"})
            done_files += len(contents[number - 1])
            done_bytes += sum(contents[number - 1])
            say("files", {"files": done_files, "bytes": done_bytes, **totals})
    config = _config_blob(form, manifest, layers)
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    registry.upload_blob(config, config_digest, len(config))
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": ARTIFACT_CONFIG if form == "artifact" else IMAGE_CONFIG,
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
        "annotations": env_annotations(manifest),
    }
    if form == "artifact":
        document["artifactType"] = ARTIFACT_TYPE
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    own_tag = snapshot_tag(manifest)
    registry.put_manifest(own_tag, body)  # first, so what the moved tag held before stays tagged
    digest = registry.put_manifest(tag, body)
    envelope = kept(store, manifest)
    attestation = None
    if envelope is not None and envelope.signatures:
        attestation = push_attestation(registry, digest, len(body), envelope_bytes(envelope))
        say("tag", {"detail": f"signature -> {attestation}"})
    return PushReport(
        reference=str(reference),
        digest=digest,
        form=form,
        files=len(manifest.files),
        bytes=manifest.total_size,
        layers=len(layers),
        layers_reused=reused,
        layers_uploaded=uploaded,
        bytes_sent=registry.bytes_sent,
        base=str(base_published.reference) if base_published else None,
        snapshot_tag=own_tag,
        attestation=attestation,
    )


def snapshot_tag(manifest: Manifest) -> str:
    """`<env tag>-<12 hex of the snapshot id>`: every push puts this tag beside the one it
    was given, so a push that moves a tag (the env tag by default) to another snapshot
    leaves the earlier one reachable, as a ref's history keeps it in the store."""
    return f"{sanitize_tag(manifest.env_tag)[:115]}-{manifest.digest.partition(':')[2][:12]}"


def _no_such_tag(
    registry: Registry, tag: str | None, tags: list[str], option: str = ""
) -> RegistryRefused:
    """Exit 2, naming the tags that do exist (a repository without tags may not exist)."""
    repository = registry.reference.with_tag(None)
    where = f"{option}{tag}: no such tag in {repository}" if tag else str(repository)
    if not tags:
        return RegistryRefused(
            f"{where}: the repository has no tags (check its name, or push to it first)"
        )
    shown = ", ".join(tags[:_TAGS_SHOWN]) + (
        f" … and {len(tags) - _TAGS_SHOWN} more" if len(tags) > _TAGS_SHOWN else ""
    )
    return RegistryRefused(f"{where}; its tags: {shown}")


def _reuse(registry: Registry, layer: LayerFiles) -> tuple[LayerFiles, bool]:
    """A base layer kept as it is (its blob must still be in the repository)."""
    if registry.has_blob(layer.digest):
        return layer, False
    raise RegistryError(
        f"{registry.reference}: base layer {layer.digest} is gone from the registry; "
        "push again with --base none"
    )


def _find_base(
    registry: Registry, tag: str, base: str | None, manifest: Manifest, form: Form
) -> Published | None:
    """The published content to cut layers against (see the module docstring)."""
    if base == "none":
        return None
    candidates = [base] if base else [tag]
    if not base:
        others = [t for t in _bundle_tags(registry) if t != tag]
        candidates += others[-_BASE_CANDIDATES:]
    best: Published | None = None
    best_shared = 0
    wanted = {(entry.path, entry.digest) for entry in manifest.files}
    for candidate in candidates:
        try:
            published = read_published(registry, candidate)
        except RegistryError:
            if base:
                raise
            continue
        if published is None:
            if base:
                raise _no_such_tag(registry, base, _bundle_tags(registry), "--base ")
            continue
        if published.form != form or (not base and published.manifest.name != manifest.name):
            continue
        shared = sum(
            size
            for layer in published.layers
            for path, digest, size in layer.files
            if (path, digest) in wanted
        )
        if shared > best_shared:
            best, best_shared = published, shared
    return best


def plan_layers(
    manifest: Manifest, base: list[LayerFiles], form: Form
) -> list[LayerFiles | tuple[list[FileEntry], list[str]]]:
    """Which base layers to keep, and the new layers (files, whiteouts) to build on top."""
    wanted = {entry.path: entry for entry in manifest.files}
    top = _visible(base)
    kept: list[LayerFiles] = []
    for position, layer in enumerate(base):
        total = sum(size for _p, _d, size in layer.files) or 1
        live = sum(
            size
            for path, digest, size in layer.files
            if top.get(path, (-1, ""))[0] == position
            and path in wanted
            and wanted[path].digest == digest
        )
        if live / total >= REUSE_MIN_LIVE:
            kept.append(layer)
    view = {path: digest for path, (_position, digest) in _visible(kept).items()}
    fresh = [entry for entry in manifest.files if view.get(entry.path) != entry.digest]
    whiteouts = sorted(path for path in view if path not in wanted) if form == "image" else []
    chunks = _chunks(fresh)
    if whiteouts:
        if chunks:
            chunks[-1] = (chunks[-1][0], whiteouts)
        else:
            chunks.append(([], whiteouts))
    if len(kept) + len(chunks) > MAX_LAYERS:
        return [*_chunks(list(manifest.files))]
    return [*kept, *chunks]


def _visible(layers: list[LayerFiles]) -> dict[str, tuple[int, str]]:
    """What a stack of layers shows at each path: (the layer on top, the file's digest)."""
    shown: dict[str, tuple[int, str]] = {}
    for position, layer in enumerate(layers):
        for path, digest, _size in layer.files:
            shown[path] = (position, digest)
        for path in layer.whiteouts:
            shown.pop(path, None)
    return shown


def _chunks(entries: list[FileEntry]) -> list[tuple[list[FileEntry], list[str]]]:
    """Path-ordered runs of about LAYER_BYTES, at most MAX_LAYERS of them."""
    total = sum(entry.size for entry in entries)
    limit = max(LAYER_BYTES, total // MAX_LAYERS + 1)
    chunks: list[tuple[list[FileEntry], list[str]]] = []
    current: list[FileEntry] = []
    size = 0
    for entry in entries:
        current.append(entry)
        size += entry.size
        if size >= limit:
            chunks.append((current, []))
            current, size = [], 0
    if current:
        chunks.append((current, []))
    return chunks


class _Hashing:
    """A write-through stream that counts and sha256-hashes what passes."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _write_layer(
    files: list[FileEntry], whiteouts: list[str], store: Store, spool: IO[bytes], form: Form
) -> LayerFiles:
    """A deterministic layer tar (compressed) in `spool`, with its digest and diff_id."""
    compressed = _Hashing(spool)
    with compressed_writer(cast(IO[bytes], compressed), _COMPRESSION[form]) as stream:
        plain = _Hashing(stream)
        with tarfile.open(
            fileobj=cast(IO[bytes], plain), mode="w|", format=tarfile.PAX_FORMAT
        ) as tar:
            members: list[tuple[str, FileEntry | None]] = [
                (member_name(entry.path), entry) for entry in files
            ]
            members += [(_whiteout_name(path), None) for path in whiteouts]
            for name, entry in sorted(members, key=lambda item: item[0]):
                if entry is None:
                    tar.addfile(tar_member(name, 0, 0o644), None)
                    continue
                with stored_object(store.open_object, entry) as obj:
                    tar.addfile(tar_member(name, entry.size, entry.mode), obj)
    spool.flush()
    return LayerFiles(
        digest="sha256:" + compressed.hash.hexdigest(),
        size=compressed.size,
        diff_id="sha256:" + plain.hash.hexdigest(),
        media_type=LAYER_TYPES[form],
        files=[(entry.path, entry.digest, entry.size) for entry in files],
        whiteouts=whiteouts,
    )


def _whiteout_name(path: str) -> str:
    head, _, tail = path.rpartition("/")
    return member_name(f"{head}/.wh.{tail}")


# -- pull --------------------------------------------------------------------------------------


def pull(
    store: Store,
    source: Reference,
    *,
    auto: bool = False,
    insecure: bool = False,
    progress: Progress | None = None,
    trust: Trust | None = None,
) -> PullReport:
    """Copy a published bundle into `store`, checking every blob's sha256 and file's blake3.

    Its signature referrer comes along and is kept with the snapshot; with `trust`, it must
    verify before a layer is fetched (TrustError otherwise, and the store is left as it was).
    """
    registry = Registry(source, insecure=insecure)
    say = progress or silent
    passed: list[dict[str, Any]] = []
    if auto:
        if source.tag or source.digest:
            raise UsageError(f"{source}: --auto picks the tag itself; name only REGISTRY/REPO")
        tag, passed = select_tag(registry)
        say("tag", {"detail": f"picked {tag} (matches this machine)"})
        for item in passed:
            say("tag", {"detail": f"passed over {item['tag']}: {'; '.join(item['reasons'])}"})
        wanted = tag
    else:
        wanted = source.digest or source.tag or ""
        if not wanted:
            raise UsageError(f"{source}: name a tag (REPO:TAG) or pass --auto to pick one")
    published = read_published(registry, wanted)
    if published is None:
        raise NothingToRestore(str(_no_such_tag(registry, wanted, _bundle_tags(registry))))
    found = fetch_attestation(registry, published)
    where = str(published.reference)
    envelope: Envelope | None
    if trust is not None:
        looked = f"no signature refers to {published.digest}"
        envelope = trust.check(found, published.manifest, where, looked).envelope
    else:
        envelope = attached(found, published.manifest, where) if found is not None else None
    fetched, received = _fetch(registry, published, store, say)
    info: SnapshotInfo = store.commit(published.manifest)
    if envelope is not None:
        keep(store, published.manifest, envelope)
    return PullReport(
        reference=str(source.with_tag(wanted)),
        digest=published.digest,
        form=published.form,
        ref=info.ref,
        files=len(published.manifest.files),
        bytes=published.manifest.total_size,
        layers_fetched=fetched,
        bytes_received=received,
        passed_over=passed,
        signed_by=sorted(envelope.signatures) if envelope is not None else [],
    )


def _fetch(
    registry: Registry, published: Published, store: Store, say: Progress
) -> tuple[int, int]:
    """Download the layers that hold files missing from the store; returns (layers, bytes)."""
    missing = {entry.digest for entry in published.manifest.files if not store.has(entry.digest)}
    if not missing:
        return 0, 0
    holder = {digest: position for position, digest in _layer_digests(published.layers)}
    plan: dict[int, set[str]] = {}
    for digest in missing:
        if digest not in holder:
            raise RegistryError(
                f"{published.reference}: no layer holds {digest} that the manifest lists"
            )
        plan.setdefault(holder[digest], set()).add(digest)
    wanted = {position: frozenset(digests) for position, digests in plan.items()}

    def one(position: int) -> int:
        layer = published.layers[position]
        need = plan[position]
        listed = {path: digest for path, digest, _s in layer.files}
        with registry.open_blob(layer.digest, layer.size) as blob:
            try:
                for member in layer_members(blob, layer, published.reference):
                    path = "/" + member.name
                    digest = listed.get(path)
                    if digest is None or digest not in need:
                        continue
                    got, _size = store.put_stream(cast(BinaryIO, member), None)
                    if got != digest:
                        where = f"{published.reference}: layer {layer.digest}: {path}"
                        raise RegistryError(mismatch(where, got, digest, "the manifest"))
                    need.discard(digest)
            except (RegistryError, BundleError):
                blob.finish()  # a blob that fails its sha256 is the better explanation
                raise
            blob.finish()
        if need:
            raise RegistryError(
                f"{published.reference}: layer {layer.digest} lacks {len(need)} file(s) its "
                "record lists"
            )
        say("layer", {"detail": f"fetched {layer.digest[7:19]} ({format_size(layer.size)})"})
        return layer.size

    #: the manifest's files and bytes that each missing object provides (one object may be
    #: several identical files), for the `files` reports
    counts: dict[str, list[int]] = {}
    for entry in published.manifest.files:
        if entry.digest in missing:
            files_bytes = counts.setdefault(entry.digest, [0, 0])
            files_bytes[0] += 1
            files_bytes[1] += entry.size
    totals = {
        "files_total": sum(c[0] for c in counts.values()),
        "bytes_total": sum(c[1] for c in counts.values()),
    }
    done_files = done_bytes = 0
    received = []
    with ThreadPoolExecutor(min(_WORKERS, len(plan))) as pool:
        for position, size in zip(sorted(plan), pool.map(one, sorted(plan)), strict=True):
            received.append(size)
            done_files += sum(counts[d][0] for d in wanted[position])
            done_bytes += sum(counts[d][1] for d in wanted[position])
            say("files", {"files": done_files, "bytes": done_bytes, **totals})
    return len(received), sum(received)


def _layer_digests(layers: list[LayerFiles]) -> Iterator[tuple[int, str]]:
    """(layer position, file digest) from the bottom layer up: the last one seen is on top."""
    for position, layer in enumerate(layers):
        for _path, digest, _size in layer.files:
            yield position, digest


def layer_members(
    blob: VerifiedStream, layer: LayerFiles, reference: Reference | str
) -> Iterator[TarMember]:
    """Each member of a layer warmer pushed, read by the strict reader of bundles: anything
    else (a link, a device, an unsafe name, a bad header) is a BundleError naming the layer."""
    if layer.media_type not in _FORMATS:
        raise RegistryBadReply(
            f"{reference}: layer {layer.digest}: media type "
            f"{printable(repr(layer.media_type[:100]))} is not one warmer writes"
        )
    stream = decompressing(cast(IO[bytes], blob), _FORMATS[layer.media_type])
    yield from TarReader(stream, f"{reference}: layer {layer.digest}", kind="layer").members()


def pull_ref(
    store: Store,
    ref: str,
    registry: str,
    *,
    insecure: bool = False,
    progress: Progress | None = None,
    trust: Trust | None = None,
) -> PullReport:
    """The cold tier: fetch the store ref `name@env-tag` (or a bare name, --auto) from the
    configured REGISTRY/PREFIX (see `tier_reference`)."""
    name, at, env_tag = ref.partition("@")
    source = tier_reference(registry, name, env_tag if at else None)
    return pull(store, source, auto=not at, insecure=insecure, progress=progress, trust=trust)


def tier_reference(registry: str, name: str, env_tag: str | None) -> Reference:
    """Where the cold tier keeps a job's bundles: REGISTRY/PREFIX/<name>:<env tag>."""
    base = Reference.parse(registry)
    repository = f"{base.repository}/{sanitize_repository(name)}"
    return Reference(base.registry, repository, sanitize_tag(env_tag) if env_tag else None)


# -- signatures --------------------------------------------------------------------------------


def _bundle_tags(registry: Registry) -> list[str]:
    """The repository's tags less its signatures' (`sha256-<hex>.att`)."""
    return [tag for tag in registry.tags() if not tag.endswith(".att")]


def attestation_tag(digest: str) -> str:
    """The tag-schema fallback of a manifest's signature: `sha256-<hex>.att`."""
    return digest.replace(":", "-") + ".att"


def push_attestation(registry: Registry, digest: str, size: int, envelope: bytes) -> str:
    """Push `envelope` as an artifact whose `subject` is the manifest `digest` (`size` bytes),
    under the tag `sha256-<hex>.att`; returns its reference."""
    config_digest = "sha256:" + hashlib.sha256(_EMPTY_CONFIG).hexdigest()
    registry.upload_blob(_EMPTY_CONFIG, config_digest, len(_EMPTY_CONFIG))
    layer_digest = "sha256:" + hashlib.sha256(envelope).hexdigest()
    registry.upload_blob(envelope, layer_digest, len(envelope))
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": DSSE_TYPE,
        "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": config_digest, "size": 2},
        "layers": [
            {
                "mediaType": DSSE_TYPE,
                "digest": layer_digest,
                "size": len(envelope),
                "annotations": {"predicateType": PREDICATE_TYPE},
            }
        ],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": size},
    }
    tag = attestation_tag(digest)
    registry.put_manifest(tag, json.dumps(document, sort_keys=True, separators=(",", ":")).encode())
    return str(registry.reference.with_tag(tag))


def fetch_attestation(registry: Registry, published: Published) -> bytes | None:
    """The envelope of the signature that refers to `published` (the referrers API, else the
    `sha256-<hex>.att` tag), None when there is none. What the registry returns is checked
    (shape, subject, size) before a byte of the envelope is read."""
    candidates = registry.referrers(published.digest, DSSE_TYPE) or []
    candidates = [*candidates[:_REFERRERS_READ], attestation_tag(published.digest)]
    for candidate in dict.fromkeys(candidates):
        found = registry.get_manifest(candidate)
        if found is None:
            continue
        where = f"{published.reference}: signature {candidate}"
        referrer = found[1]  # an OCI manifest, parsed strictly by get_manifest
        if referrer.subject is None:
            raise TrustError(f"{where}: refers to nothing (no subject)")
        if referrer.subject.digest != published.digest:
            raise TrustError(f"{where}: refers to {referrer.subject.digest}, not this manifest")
        layer = next((item for item in referrer.layers if item.mediaType == DSSE_TYPE), None)
        if layer is None:
            raise TrustError(f"{where}: holds no DSSE envelope layer")
        if layer.size > MAX_ENVELOPE_BYTES:
            raise TrustError(
                f"{where}: an envelope of {layer.size:,} bytes, more than {MAX_ENVELOPE_BYTES:,}"
            )
        return registry.get_blob(layer.digest, layer.size, MAX_ENVELOPE_BYTES, f"{where}: envelope")
    return None
