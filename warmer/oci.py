"""A client for OCI registries (the distribution API): references, credentials, transport.

Only what warmer needs: check and upload blobs, put and get manifests, list tags, stream a
blob. Credentials come from the environment or Docker's own config (`docker login`,
credential helpers) and travel only in request headers: never in argv, logs or errors.
TLS always, except for a loopback registry or an explicit `insecure`, which may use HTTP.
A 429 or 5xx answer is asked again after a backoff (idempotent requests, and blob uploads
restarted from the beginning); refusals map to errors that say what to change
(`warmer.errors`: RegistryRefused exits 2, RegistryUnreachable and RegistryError exit 1).

Every reply is untrusted input. Each JSON document (manifest, tag list, token, error body) is
read up to its byte limit, no further, and parsed into a strict typed model; tag pages are
capped and a `Link` back to a page already read is refused; every request and every read of
a body checks the overall deadline of the `Registry` (`registry.deadline`), so a registry
that trickles a byte at a time meets it too. Any of these is RegistryBadReply (exit 2),
naming the registry, the reference and the document.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from warmer.errors import (
    NotWarmerManifest,
    RegistryBadReply,
    RegistryError,
    RegistryRefused,
    RegistryUnreachable,
    UsageError,
    printable,
)
from warmer.store.digests import VerifiedStream
from warmer.units import format_duration, format_size

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
#: What the manifests warmer never writes are, for the message that refuses one.
_FOREIGN = {
    OCI_INDEX: "an OCI image index (a list of manifests, e.g. one per platform)",
    DOCKER_LIST: "a Docker manifest list (one manifest per platform)",
    DOCKER_MANIFEST: "a Docker image manifest",
    "application/vnd.docker.distribution.manifest.v1+json": "a Docker schema 1 manifest",
    "application/vnd.docker.distribution.manifest.v1+prettyjws": "a Docker schema 1 manifest",
}
DOCKER_HUB = "registry-1.docker.io"
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
_REPO_RE = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TIMEOUT_S = 60
_CHUNK = 1 << 20
#: The most bytes read of each JSON document a registry sends; more is refused unparsed.
#: Manifests: the distribution registry's own limit. Tag lists: per page.
MAX_MANIFEST_BYTES = 4 << 20
MAX_TAG_PAGE_BYTES = 4 << 20
MAX_TOKEN_BYTES = 1 << 20
MAX_ERROR_BYTES = 64 << 10
#: Tag list pages followed (`Link`), 1000 tags asked for on each.
MAX_TAG_PAGES = 100
_TAGS_PER_PAGE = 1000
#: A referrers index (a list of descriptors) larger than this is not one warmer reads.
_REFERRERS_LIMIT = 4 << 20
#: Answers worth asking again: rate limiting and trouble on the registry's side.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_RETRY_ATTEMPTS = 5
#: The first backoff; it doubles with each attempt unless the registry sends Retry-After.
_RETRY_FIRST_WAIT_S = 0.5
#: All the waiting one request may do; past it the last answer stands.
_RETRY_BUDGET_S = 60.0


@dataclass(frozen=True)
class Reference:
    """`REGISTRY/REPO[:TAG][@sha256:…]`, parsed."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        rest, _, digest = text.partition("@")
        first, slash, path = rest.partition("/")
        if not slash or not ("." in first or ":" in first or first == "localhost"):
            raise UsageError(
                f"{text!r} is not a registry reference: expected REGISTRY/REPO[:TAG], e.g. "
                "ghcr.io/acme/warm-caches:torch2.6.0-cuda12.4-cc9.0-triton3.2.0"
            )
        registry = DOCKER_HUB if first in ("docker.io", "index.docker.io") else first
        repository, colon, tag = path.rpartition(":") if ":" in path else (path, "", "")
        if not colon:
            repository, tag = path, ""
        if not _REPO_RE.match(repository):
            raise UsageError(f"{text!r}: repository {repository!r} is not a valid OCI name")
        if tag and not _TAG_RE.match(tag):
            raise UsageError(f"{text!r}: tag {tag!r} is not a valid OCI tag")
        if digest and not _DIGEST_RE.match(digest):
            raise UsageError(f"{text!r}: digest must be sha256:<64 hex>")
        return cls(registry, repository, tag or None, digest or None)

    @staticmethod
    def looks_like(text: str) -> bool:
        """Whether `text` is meant as a registry reference (not a file or a store ref)."""
        first, slash, _ = text.partition("/")
        return bool(slash) and ("." in first or ":" in first or first == "localhost")

    def with_tag(self, tag: str | None) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def sanitize_tag(text: str) -> str:
    """A valid OCI tag from an env tag or name (`+` and `=` are not allowed in tags)."""
    tag = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:128]
    return tag if _TAG_RE.match(tag) else f"_{tag}"[:128]


def sanitize_repository(text: str) -> str:
    """A valid repository path component from a job name (lowercase, separators folded)."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return name or "unnamed"


# -- credentials -----------------------------------------------------------------------------


def credentials(registry: str, environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """(username, secret) for `registry`: $WARMER_REGISTRY_USERNAME/PASSWORD, else Docker's
    config ($DOCKER_CONFIG/config.json) as docker-py reads it (credHelpers, credsStore,
    auths), else None."""
    from docker import auth
    from docker.errors import DockerException

    from warmer.config import settings

    configured = settings(environ)
    if configured.registry_username and configured.registry_password:
        return configured.registry_username, configured.registry_password.get_secret_value()
    path = Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        config = auth.load_config(config_dict=json.loads(path.read_text()))
        # docker-py files Docker Hub under docker.io; its credential helpers run here.
        found = config.resolve_authconfig(auth.INDEX_NAME if registry == DOCKER_HUB else registry)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, DockerException) as exc:
        raise UsageError(f"{path}: cannot read credentials for {registry}: {exc}") from exc
    if not found:
        return None
    if found.get("IdentityToken"):
        return "<token>", str(found["IdentityToken"])  # the helpers' spelling of a token login
    user = found.get("Username") or found.get("username")
    password = found.get("Password") or found.get("password")
    return (str(user), str(password)) if user and password else None


# -- what a registry sends ---------------------------------------------------------------------

#: A blob digest as warmer checks it (sha256, the only algorithm registries must support).
Sha256 = Annotated[str, StringConstraints(pattern=_DIGEST_RE.pattern)]
#: Strict types (a size is an integer, not text); fields the OCI spec may add are ignored.
_SPEC = ConfigDict(strict=True, extra="ignore", frozen=True)
Model = TypeVar("Model", bound=BaseModel)


class Descriptor(BaseModel):
    """A blob that a manifest points at (the OCI image spec's descriptor)."""

    model_config = _SPEC
    mediaType: str
    digest: Sha256
    size: int = Field(ge=0)


class ImageManifest(BaseModel):
    """An OCI image manifest: the only kind of manifest warmer writes."""

    model_config = _SPEC
    schemaVersion: Literal[2]
    mediaType: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = Field(default_factory=dict)
    artifactType: str | None = None
    #: what this manifest refers to (OCI 1.1): a signature names the bundle it signs
    subject: Descriptor | None = None


class _MediaType(BaseModel):
    """Only what kind of document a manifest says it is, read before the rest."""

    model_config = ConfigDict(strict=True, extra="ignore")
    mediaType: str | None = None


class _Referrer(BaseModel):
    """One descriptor of a referrers index: what warmer reads of it."""

    model_config = _SPEC
    digest: Sha256
    artifactType: str | None = None


class _Referrers(BaseModel):
    """The OCI 1.1 referrers API's answer: an index of the manifests that refer to one."""

    model_config = _SPEC
    manifests: list[_Referrer] = Field(default_factory=list)


class TagList(BaseModel):
    """One page of `GET /v2/REPO/tags/list`."""

    model_config = _SPEC
    tags: list[Annotated[str, StringConstraints(pattern=_TAG_RE.pattern)]] | None = None


class _Token(BaseModel):
    """The token service's answer: a Bearer token under either of its two names."""

    model_config = _SPEC
    #: sent back in a header: visible ASCII only, so it can never end the header early
    token: Annotated[str, StringConstraints(pattern=r"^[!-~]+$")] | None = None
    access_token: Annotated[str, StringConstraints(pattern=r"^[!-~]+$")] | None = None


class _ErrorItem(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    code: str = ""
    message: str = ""


class _ErrorBody(BaseModel):
    """The distribution API's error body, `{"errors": [{"code", "message"}]}`."""

    model_config = ConfigDict(strict=True, extra="ignore")
    errors: list[_ErrorItem]


def parse_reply(model: type[Model], body: bytes, what: str) -> Model:
    """`body` as `model`, strictly; anything else is RegistryBadReply naming `what` (the
    registry, the reference and the document) and the first field at fault."""
    try:
        return model.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise RegistryBadReply(f"{what}: {_problem(exc)}") from None


def _problem(exc: ValidationError) -> str:
    """The first problem of a validation, as `layers[2].size: … (got '12')`."""
    error = exc.errors(include_url=False)[0]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "json_invalid":
        return f"not JSON ({message})"
    if not where and error["type"] in ("model_type", "model_attributes_type"):
        return f"must be a JSON object, not {_json_type(error['input'])}"
    shown = error["input"]
    if isinstance(shown, (str, int, float)) and not isinstance(shown, bool):
        message += f" (got {printable(repr(shown)[:80])})"
    elif isinstance(shown, (list, dict)) or shown is None:
        message += f" (got {_json_type(shown)})"
    return f"{where.lstrip('.') or 'document'}: {message}"


def _json_type(value: object) -> str:
    names = {list: "an array", dict: "an object", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


# -- the client ------------------------------------------------------------------------------


class Registry:
    """One registry, one repository; thread-safe for concurrent blob transfers.

    Everything done through one instance shares one deadline, counted from its creation:
    `deadline` seconds, default the `registry.deadline` setting.
    """

    def __init__(
        self, reference: Reference, *, insecure: bool = False, deadline: float | None = None
    ) -> None:
        import requests

        from warmer.config import settings

        self.reference = reference
        self.repository = reference.repository
        self._insecure = insecure
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "warmer"
        self._credentials = credentials(reference.registry)
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._base: str | None = None
        self._deadline_s = deadline if deadline is not None else settings().registry_deadline
        self._deadline_at = time.monotonic() + self._deadline_s
        #: bytes sent in request bodies (blobs and manifests), for push reports and benchmarks
        self.bytes_sent = 0
        self._sent_lock = threading.Lock()

    def where(self, tag_or_digest: str | None = None) -> str:
        """`registry HOST: REPO[:TAG|@DIGEST]`, how messages name what a reply was about."""
        name = self.repository
        if tag_or_digest:
            name += ("@" if tag_or_digest.startswith("sha256:") else ":") + tag_or_digest
        return f"registry {self.reference.registry}: {printable(name)}"

    def remaining(self, what: str) -> float:
        """Seconds left before the deadline; past it, RegistryBadReply naming `what`."""
        left = self._deadline_at - time.monotonic()
        if left <= 0:
            raise RegistryBadReply(
                f"{what}: not done within the deadline of {format_duration(self._deadline_s)} "
                "(raise registry.deadline or $WARMER_REGISTRY_DEADLINE for a slow registry)"
            )
        return left

    # transport ------------------------------------------------------------------------------

    def _base_url(self) -> str:
        """https://host, or http://host for loopback/insecure registries that speak no TLS."""
        if self._base is not None:
            return self._base
        import requests

        host = self.reference.registry
        plain_ok = self._insecure or host.rsplit(":", 1)[0] in _LOOPBACK
        verify = _docker_ca(host)
        timeout = min(_TIMEOUT_S, self.remaining(f"registry {host}"))
        try:
            self._session.get(
                f"https://{host}/v2/", timeout=timeout, verify=verify, stream=True
            ).close()
            self._base = f"https://{host}"
            if verify is not True:
                self._session.verify = verify
        except requests.exceptions.SSLError as exc:
            if not plain_ok:
                raise RegistryRefused(
                    f"{host}: TLS failed ({_reason(exc)}); give Docker's CA for it in "
                    f"/etc/docker/certs.d/{host}/ca.crt, or pass --insecure (or "
                    "WARMER_REGISTRY_INSECURE=1) only if this registry speaks plain HTTP on purpose"
                ) from None
            self._base = f"http://{host}"
        except requests.exceptions.ConnectionError as exc:
            if not plain_ok:
                raise _unreachable(host, exc) from None
            self._base = f"http://{host}"
        return self._base

    def _request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """One idempotent request, asked again after 429 and 5xx; an answer outside `ok`
        raises the error that says what to change. The body is left unread (`body`,
        `open_blob`), the response to be closed by the caller."""
        response = self._with_retries(lambda: self._send(method, path, headers, **kwargs))
        if response.status_code not in ok:
            raise self._refusal(response, method)
        return response

    def _send(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Any:
        """One request with authentication; a 401 fetches a token (or uses Basic) and resends.
        Streamed: no body is read here, so none is read past its limit."""
        import requests

        url = path if path.startswith("http") else self._base_url() + path
        body = kwargs.get("data")
        if body is not None and not isinstance(body, bytes):
            kwargs["data"] = _Paced(body, self, f"{self.where()}: upload", sending=True)
        for attempt in range(2):
            kwargs["timeout"] = min(_TIMEOUT_S, self.remaining(f"{self.where()}: {method}"))
            sent_headers = dict(headers or {})
            if self._token:
                sent_headers["Authorization"] = self._token
            if body is not None and hasattr(body, "seek"):
                body.seek(0)  # a resend sends the whole body again
            try:
                response = self._session.request(
                    method, url, headers=sent_headers, stream=True, **kwargs
                )
            except requests.exceptions.SSLError as exc:
                raise RegistryRefused(
                    f"{self.reference.registry}: TLS failed ({_reason(exc)})"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                raise _unreachable(self.reference.registry, exc) from None
            except requests.exceptions.RequestException as exc:
                raise RegistryError(
                    f"{self.reference.registry}: {method} failed: {_reason(exc)}"
                ) from None
            if response.status_code != 401 or attempt:
                break
            response.close()
            self._authenticate(response.headers.get("WWW-Authenticate", ""))
        return response

    def _with_retries(self, send: Callable[[], Any]) -> Any:
        return _with_retries(send, lambda: self.remaining(f"{self.where()}: retries"))

    def body(self, response: Any, limit: int, what: str) -> bytes:
        """The body of `response`, at most `limit` bytes (a longer one is refused, unparsed,
        once `limit + 1` bytes are in), read against the deadline; the response is closed."""
        try:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > limit:
                raise RegistryBadReply(
                    f"{what}: {int(length):,} bytes, more than the limit of {format_size(limit)}"
                )
            data = _Paced(response.raw, self, what, decode=True).read(limit + 1)
        finally:
            response.close()
        if len(data) > limit:
            raise RegistryBadReply(f"{what}: more than the limit of {format_size(limit)}")
        return data

    def _authenticate(self, challenge: str) -> None:
        """Answer a Bearer or Basic challenge with this registry's credentials."""
        scheme, _, params_text = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        with self._token_lock:
            if scheme.lower() == "basic":
                if not self._credentials:
                    raise RegistryRefused(
                        f"{self.reference.registry}: needs credentials ({_LOGIN_HINT})"
                    )
                user, password = self._credentials
                self._token = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                return
            if scheme.lower() != "bearer" or "realm" not in params:
                raise RegistryError(
                    f"{self.reference.registry}: unsupported authentication "
                    f"{printable(repr(scheme[:40]))}"
                )
            query = {"service": params.get("service", "")}
            query["scope"] = f"repository:{self.repository}:pull,push"
            auth = self._credentials
            what = f"{self.where()}: token"
            response = self._with_retries(
                lambda: self._session.get(
                    params["realm"],
                    params=query,
                    auth=auth,
                    timeout=min(_TIMEOUT_S, self.remaining(what)),
                    stream=True,
                )
            )
            if response.status_code in (401, 403):
                response.close()
                raise RegistryRefused(
                    f"{self.reference.registry}: token request refused ({response.status_code}); "
                    + ("check the credentials" if auth else _LOGIN_HINT)
                )
            if response.status_code != 200:
                raise self._refusal(response, "token GET")
            payload = parse_reply(_Token, self.body(response, MAX_TOKEN_BYTES, what), what)
            token = payload.token or payload.access_token
            if not token:
                raise RegistryBadReply(f"{what}: the token service sent no token")
            self._token = f"Bearer {token}"

    # blobs ----------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        response = self._request("HEAD", f"/v2/{self.repository}/blobs/{digest}", ok=(200, 404))
        response.close()
        return bool(response.status_code == 200)

    def upload_blob(self, source: IO[bytes] | bytes, digest: str, size: int) -> bool:
        """Upload unless the registry has it; returns whether bytes were sent.

        An upload answered with 429 or 5xx starts again with a new upload session: the state
        of the failed one is unknown.
        """
        if self.has_blob(digest):
            return False

        def upload() -> Any:
            started = self._send("POST", f"/v2/{self.repository}/blobs/uploads/")
            started.close()
            if started.status_code != 202:
                return started
            location = started.headers.get("Location", "")
            if not location:
                raise RegistryBadReply(f"{self.where()}: upload: the answer has no Location")
            location = urllib.parse.urljoin(self._base_url() + "/", location)
            separator = "&" if "?" in location else "?"
            return self._send(
                "PUT",
                f"{location}{separator}digest={digest}",
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                data=source,
            )

        response = self._with_retries(upload)
        if response.status_code != 201:
            raise self._refusal(response, response.request.method)
        response.close()
        with self._sent_lock:
            self.bytes_sent += size
        return True

    @contextlib.contextmanager
    def open_blob(self, digest: str, size: int) -> Iterator[VerifiedStream]:
        """A stream of the blob that raises RegistryError at its end if size or sha256 differ,
        and RegistryBadReply on the read that finds the deadline passed."""
        response = self._request("GET", f"/v2/{self.repository}/blobs/{digest}")
        what = f"{self.where()}: blob {digest}"
        try:
            yield VerifiedStream(
                _Paced(response.raw, self, what, decode=False),
                digest,
                size,
                what,
                RegistryError,
                hint="corrupt in the registry or in transit",
            )
        finally:
            response.close()

    def get_blob(self, digest: str, size: int, limit: int, what: str) -> bytes:
        """A small blob (a config), verified; its size is checked against `limit` before a
        byte is asked for."""
        if size > limit:
            raise RegistryBadReply(
                f"{what}: {size:,} bytes, more than the limit of {format_size(limit)}"
            )
        with self.open_blob(digest, size) as stream:
            return stream.read()  # to the end, where size and sha256 are checked

    # manifests and tags ---------------------------------------------------------------------

    def put_manifest(self, tag_or_digest: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
        self._request(
            "PUT",
            f"/v2/{self.repository}/manifests/{tag_or_digest}",
            ok=(201,),
            data=body,
            headers={"Content-Type": media_type},
        ).close()
        with self._sent_lock:
            self.bytes_sent += len(body)
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def get_manifest(self, tag_or_digest: str) -> tuple[str, ImageManifest] | None:
        """(digest, manifest) or None when there is no such tag; the digest is checked.

        A manifest of a kind warmer never writes is NotWarmerManifest, one of the wrong shape
        RegistryBadReply."""
        response = self._request(
            "GET",
            f"/v2/{self.repository}/manifests/{tag_or_digest}",
            ok=(200, 404),
            headers={"Accept": _ACCEPT},
        )
        if response.status_code == 404:
            response.close()
            return None
        what = f"{self.where(tag_or_digest)}: manifest"
        body = self.body(response, MAX_MANIFEST_BYTES, what)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        claimed = response.headers.get("Docker-Content-Digest")
        expected = tag_or_digest if _DIGEST_RE.match(tag_or_digest) else claimed
        if expected and expected != digest:
            raise RegistryError(
                f"{what}: does not match its digest {printable(expected[:80])} (it is {digest})"
            )
        kind = parse_reply(_MediaType, body, what).mediaType
        kind = kind or response.headers.get("Content-Type", "").partition(";")[0].strip()
        if kind != OCI_MANIFEST:
            described = _FOREIGN.get(kind, f"of media type {printable(repr(kind[:100]))}")
            raise NotWarmerManifest(
                f"{what}: {described}; warmer reads only the OCI image manifests it pushes "
                f"({OCI_MANIFEST})"
            )
        return digest, parse_reply(ImageManifest, body, what)

    def referrers(self, digest: str, artifact_type: str) -> list[str] | None:
        """The digests of manifests of `artifact_type` whose `subject` is `digest` (the OCI 1.1
        referrers API); None when the registry has no such API (it answers 404)."""
        response = self._request(
            "GET",
            f"/v2/{self.repository}/referrers/{digest}",
            ok=(200, 404),
            params={"artifactType": artifact_type},
            headers={"Accept": OCI_INDEX},
        )
        if response.status_code == 404:
            response.close()
            return None
        what = f"{self.reference}: the referrers of {digest}"
        index = parse_reply(_Referrers, self.body(response, _REFERRERS_LIMIT, what), what)
        return [item.digest for item in index.manifests if item.artifactType == artifact_type]

    def tags(self) -> list[str]:
        """Every tag of the repository: at most MAX_TAG_PAGES pages, following `Link` to the
        same registry only, and never to a page already read."""
        found: list[str] = []
        url = f"{self._base_url()}/v2/{self.repository}/tags/list?n={_TAGS_PER_PAGE}"
        seen: set[str] = set()
        while url:
            what = f"{self.where()}: tag list"
            if len(seen) == MAX_TAG_PAGES:
                raise RegistryBadReply(f"{what}: more than {MAX_TAG_PAGES} pages")
            seen.add(url)
            response = self._request("GET", url, ok=(200, 404))
            if response.status_code == 404:
                response.close()
                return []
            if len(seen) > 1:
                what += f" page {len(seen)}"
            page = parse_reply(TagList, self.body(response, MAX_TAG_PAGE_BYTES, what), what)
            found.extend(page.tags or [])
            match = re.match(r"\s*<([^>]*)>", response.headers.get("Link", ""))
            url = self._same_origin(match.group(1), f"{what}: Link") if match else ""
            if url in seen:
                raise RegistryBadReply(
                    f"{what}: Link points back at a page already read ({printable(url[:200])})"
                )
        return sorted(found)

    def _same_origin(self, link: str, what: str) -> str:
        """`link` (a `Link` header) made absolute; one that leads to another host would take
        this registry's credentials there, and is refused."""
        base = self._base_url()
        url = urllib.parse.urljoin(base + "/", link)
        if not link or urllib.parse.urlsplit(url)[:2] != urllib.parse.urlsplit(base)[:2]:
            raise RegistryBadReply(
                f"{what}: {printable(repr(link[:200]))} is not a URL on {self.reference.registry}"
            )
        return url

    def _refusal(self, response: Any, method: str) -> RegistryError:
        """The error for an answer outside the expected ones, with a reason from the
        registry's error body ({"errors": [{"code", "message"}]}, read up to
        MAX_ERROR_BYTES): credentials and unknown names are the user's to fix
        (RegistryRefused), anything else is the registry's (RegistryError)."""
        try:
            text = self.body(response, MAX_ERROR_BYTES, f"{self.where()}: error body")
        except RegistryError:
            text = b""
        try:
            errors = parse_reply(_ErrorBody, text, "error body").errors
            codes = {error.code for error in errors}
            detail = "; ".join(f"{error.code}: {error.message}" for error in errors)
        except RegistryBadReply:
            codes, detail = set(), text[:200].decode(errors="replace")
        where = f"{self.reference.registry}/{self.reference.repository}"
        reason = printable(detail[:500])
        message = f"{where}: {method} refused: HTTP {response.status_code} {reason}".rstrip()
        if response.status_code in (401, 403):
            return RegistryRefused(f"{message} ({_LOGIN_HINT})")
        if response.status_code == 404 and codes & {"NAME_UNKNOWN", "MANIFEST_UNKNOWN"}:
            return RegistryRefused(f"{message} (check the repository name and tag)")
        return RegistryError(message)


class _Paced:
    """A body read (or sent) against a registry's deadline. Reading a response asks the
    socket only for what it has (urllib3's `read1`) and checks the clock between, so a
    registry that trickles a few bytes every few seconds meets the deadline, not only the
    per-read timeout; `read(n)` still returns n bytes unless the body ends. A body being
    sent (`sending`) checks it for each block that the transport reads from it."""

    def __init__(
        self,
        stream: Any,
        registry: Registry,
        what: str,
        *,
        decode: bool = False,
        sending: bool = False,
    ) -> None:
        self._stream, self._registry, self._what = stream, registry, what
        self._decode, self._sending = decode, sending

    def read(self, size: int = -1, /) -> bytes:
        if self._sending:
            self._registry.remaining(self._what)
            return bytes(self._stream.read(size))
        chunks: list[bytes] = []
        wanted = size if size >= 0 else None
        got = 0
        while wanted is None or got < wanted:
            self._registry.remaining(self._what)
            data = self._stream.read1(
                _CHUNK if wanted is None else wanted - got, decode_content=self._decode
            )
            if not data:
                break
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._stream.seek(offset, whence))

    def tell(self) -> int:
        return int(self._stream.tell())


def _docker_ca(host: str) -> str | bool:
    """Docker's per-registry CA (`/etc/docker/certs.d/HOST/ca.crt`) when there is one."""
    ca = Path("/etc/docker/certs.d") / host / "ca.crt"
    return str(ca) if ca.is_file() else True


def _reason(exc: Exception) -> str:
    """The innermost message of a transport error, without URLs' query strings."""
    text = str(exc.args[0] if exc.args else exc)
    return printable(re.sub(r"\?[^ '\")]*", "", text)[:300])


def _with_retries(send: Callable[[], Any], remaining: Callable[[], float]) -> Any:
    """`send()`, sent again while the answer is 429 or 5xx: after Retry-After when the
    registry gives one, else after 0.5, 1, 2, 4 s; at most `_RETRY_ATTEMPTS` tries and
    `_RETRY_BUDGET_S` of waiting (and never past the deadline, `remaining()` seconds away),
    after which the last answer stands."""
    waited = 0.0
    response = send()
    for attempt in range(1, _RETRY_ATTEMPTS):
        if response.status_code not in _RETRY_STATUSES:
            break
        wait = _retry_after(response.headers.get("Retry-After"))
        if wait is None:
            wait = _RETRY_FIRST_WAIT_S * 2 ** (attempt - 1)
        if waited + wait > _RETRY_BUDGET_S or wait >= remaining():
            break
        response.close()
        time.sleep(wait)
        waited += wait
        response = send()
    return response


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _unreachable(host: str, exc: Exception) -> RegistryUnreachable:
    return RegistryUnreachable(
        f"{host}: cannot reach the registry ({_reason(exc)}); check the address, the "
        "network and any proxy, then try again"
    )


_LOGIN_HINT = "run `docker login`, or set WARMER_REGISTRY_USERNAME and WARMER_REGISTRY_PASSWORD"
