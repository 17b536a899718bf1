"""A client for OCI registries (the distribution API): references, credentials, transport.

Only what warmer needs: check and upload blobs, put and get manifests, list tags, stream a
blob. Credentials come from the environment or Docker's own config (`docker login`,
credential helpers) and travel only in request headers: never in argv, logs or errors.
TLS always, except for a loopback registry or an explicit `insecure`, which may use HTTP.
A 429 or 5xx answer is asked again after a backoff (idempotent requests, and blob uploads
restarted from the beginning); refusals map to errors that say what to change
(`warmer.errors`: RegistryRefused exits 2, RegistryUnreachable and RegistryError exit 1).
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from warmer.errors import RegistryError, RegistryRefused, RegistryUnreachable, UsageError
from warmer.store.digests import VerifiedStream

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST))
DOCKER_HUB = "registry-1.docker.io"
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
_REPO_RE = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TIMEOUT_S = 60
_CHUNK = 1 << 20
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


# -- the client ------------------------------------------------------------------------------


class Registry:
    """One registry, one repository; thread-safe for concurrent blob transfers."""

    def __init__(self, reference: Reference, *, insecure: bool = False) -> None:
        import requests

        self.reference = reference
        self.repository = reference.repository
        self._insecure = insecure
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "warmer"
        self._credentials = credentials(reference.registry)
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._base: str | None = None
        #: bytes sent in request bodies (blobs and manifests), for push reports and benchmarks
        self.bytes_sent = 0
        self._sent_lock = threading.Lock()

    # transport ------------------------------------------------------------------------------

    def _base_url(self) -> str:
        """https://host, or http://host for loopback/insecure registries that speak no TLS."""
        if self._base is not None:
            return self._base
        import requests

        host = self.reference.registry
        plain_ok = self._insecure or host.rsplit(":", 1)[0] in _LOOPBACK
        verify = _docker_ca(host)
        try:
            self._session.get(f"https://{host}/v2/", timeout=_TIMEOUT_S, verify=verify)
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
        raises the error that says what to change."""
        response = _with_retries(lambda: self._send(method, path, headers, **kwargs))
        if response.status_code not in ok:
            raise _refusal(response, method, self.reference)
        return response

    def _send(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Any:
        """One request with authentication; a 401 fetches a token (or uses Basic) and resends."""
        import requests

        url = path if path.startswith("http") else self._base_url() + path
        kwargs.setdefault("timeout", _TIMEOUT_S)
        body = kwargs.get("data")
        for attempt in range(2):
            sent_headers = dict(headers or {})
            if self._token:
                sent_headers["Authorization"] = self._token
            if body is not None and hasattr(body, "seek"):
                body.seek(0)  # a resend sends the whole body again
            try:
                response = self._session.request(method, url, headers=sent_headers, **kwargs)
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
            self._authenticate(response.headers.get("WWW-Authenticate", ""))
        return response

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
                    f"{self.reference.registry}: unsupported authentication {scheme!r}"
                )
            query = {"service": params.get("service", "")}
            query["scope"] = f"repository:{self.repository}:pull,push"
            auth = self._credentials
            response = _with_retries(
                lambda: self._session.get(
                    params["realm"], params=query, auth=auth, timeout=_TIMEOUT_S
                )
            )
            if response.status_code in (401, 403):
                raise RegistryRefused(
                    f"{self.reference.registry}: token request refused ({response.status_code}); "
                    + ("check the credentials" if auth else _LOGIN_HINT)
                )
            if response.status_code != 200:
                raise _refusal(response, "token GET", self.reference)
            payload = response.json()
            token = payload.get("token") or payload.get("access_token")
            if not token:
                raise RegistryError(f"{self.reference.registry}: the token service sent no token")
            self._token = f"Bearer {token}"

    # blobs ----------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        response = self._request("HEAD", f"/v2/{self.repository}/blobs/{digest}", ok=(200, 404))
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
            if started.status_code != 202:
                return started
            location = started.headers["Location"]
            if location.startswith("/"):
                location = self._base_url() + location
            separator = "&" if "?" in location else "?"
            return self._send(
                "PUT",
                f"{location}{separator}digest={digest}",
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                data=source,
            )

        response = _with_retries(upload)
        if response.status_code != 201:
            raise _refusal(response, response.request.method, self.reference)
        with self._sent_lock:
            self.bytes_sent += size
        return True

    @contextlib.contextmanager
    def open_blob(self, digest: str, size: int) -> Iterator[VerifiedStream]:
        """A stream of the blob that raises RegistryError at its end if size or sha256 differ."""
        response = self._request("GET", f"/v2/{self.repository}/blobs/{digest}", stream=True)
        try:
            response.raw.decode_content = False
            yield VerifiedStream(
                response.raw,
                digest,
                size,
                f"{self.reference}: blob {digest}",
                RegistryError,
                hint="corrupt in the registry or in transit",
            )
        finally:
            response.close()

    def get_blob(self, digest: str, size: int, limit: int = 64 << 20) -> bytes:
        """A small blob (a config), verified."""
        if size > limit:
            raise RegistryError(
                f"{self.reference}: blob {digest} is {size} bytes, more than expected"
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
        )
        with self._sent_lock:
            self.bytes_sent += len(body)
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def get_manifest(self, tag_or_digest: str) -> tuple[str, dict[str, Any]] | None:
        """(digest, manifest) or None when there is no such tag; the digest is checked."""
        response = self._request(
            "GET",
            f"/v2/{self.repository}/manifests/{tag_or_digest}",
            ok=(200, 404),
            headers={"Accept": _ACCEPT},
        )
        if response.status_code == 404:
            return None
        body = response.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        claimed = response.headers.get("Docker-Content-Digest")
        expected = tag_or_digest if _DIGEST_RE.match(tag_or_digest) else claimed
        if expected and expected != digest:
            raise RegistryError(
                f"{self.reference}: manifest {tag_or_digest} does not match its digest {expected}"
            )
        try:
            return digest, json.loads(body)
        except ValueError as exc:
            raise RegistryError(f"{self.reference}: manifest {tag_or_digest} is not JSON") from exc

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
            return None
        body = response.content
        if len(body) > _REFERRERS_LIMIT:
            raise RegistryError(f"{self.reference}: the referrers of {digest}: answer too large")
        try:
            manifests = json.loads(body).get("manifests") or []
            return [
                str(item["digest"])
                for item in manifests
                if item.get("artifactType") == artifact_type
                and _DIGEST_RE.match(str(item.get("digest")))
            ]
        except (ValueError, AttributeError, TypeError, KeyError, RecursionError):
            raise RegistryError(
                f"{self.reference}: the referrers of {digest}: not an index"
            ) from None

    def tags(self) -> list[str]:
        """Every tag of the repository (following pagination)."""
        found: list[str] = []
        path: str | None = f"/v2/{self.repository}/tags/list?n=1000"
        while path:
            response = self._request("GET", path, ok=(200, 404))
            if response.status_code == 404:
                return []
            found.extend(response.json().get("tags") or [])
            link = response.headers.get("Link", "")
            match = re.match(r"<([^>]+)>", link)
            path = match.group(1) if match else None
        return sorted(found)


def _docker_ca(host: str) -> str | bool:
    """Docker's per-registry CA (`/etc/docker/certs.d/HOST/ca.crt`) when there is one."""
    ca = Path("/etc/docker/certs.d") / host / "ca.crt"
    return str(ca) if ca.is_file() else True


def _reason(exc: Exception) -> str:
    """The innermost message of a transport error, without URLs' query strings."""
    text = str(exc.args[0] if exc.args else exc)
    return re.sub(r"\?[^ '\")]*", "", text)[:300]


def _with_retries(send: Callable[[], Any]) -> Any:
    """`send()`, sent again while the answer is 429 or 5xx: after Retry-After when the
    registry gives one, else after 0.5, 1, 2, 4 s; at most `_RETRY_ATTEMPTS` tries and
    `_RETRY_BUDGET_S` of waiting, after which the last answer stands."""
    waited = 0.0
    response = send()
    for attempt in range(1, _RETRY_ATTEMPTS):
        if response.status_code not in _RETRY_STATUSES:
            break
        wait = _retry_after(response.headers.get("Retry-After"))
        if wait is None:
            wait = _RETRY_FIRST_WAIT_S * 2 ** (attempt - 1)
        if waited + wait > _RETRY_BUDGET_S:
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


def _refusal(response: Any, method: str, reference: Reference) -> RegistryError:
    """The error for an answer outside the expected ones, with a reason from the registry's
    error body ({"errors": [{"code", "message"}]}): credentials and unknown names are the
    user's to fix (RegistryRefused), anything else is the registry's (RegistryError)."""
    try:
        errors = response.json().get("errors") or []
        codes = {str(e.get("code")) for e in errors}
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        codes, detail = set(), response.text[:200]
    where = f"{reference.registry}/{reference.repository}"
    text = f"{where}: {method} refused: HTTP {response.status_code} {detail}".rstrip()
    if response.status_code in (401, 403):
        return RegistryRefused(f"{text} ({_LOGIN_HINT})")
    if response.status_code == 404 and codes & {"NAME_UNKNOWN", "MANIFEST_UNKNOWN"}:
        return RegistryRefused(f"{text} (check the repository name and tag)")
    return RegistryError(text)


_LOGIN_HINT = "run `docker login`, or set WARMER_REGISTRY_USERNAME and WARMER_REGISTRY_PASSWORD"
