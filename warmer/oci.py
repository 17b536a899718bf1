"""A client for OCI registries (the distribution API): references, credentials, transport.

Only what warmer needs: check and upload blobs, put and get manifests, list tags, stream a
blob. Credentials come from the environment or Docker's own config (`docker login`,
credential helpers) and travel only in request headers: never in argv, logs or errors.
TLS always, except for a loopback registry or an explicit `insecure`, which may use HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from warmer.errors import UsageError, WarmerError

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


class RegistryError(WarmerError):
    """The registry refused a request, or answered with something that does not verify."""


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
    config ($DOCKER_CONFIG/config.json: credHelpers, credsStore, auths), else None."""
    user, password = (
        environ.get("WARMER_REGISTRY_USERNAME"),
        environ.get("WARMER_REGISTRY_PASSWORD"),
    )
    if user and password:
        return user, password
    config_dir = Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        config = json.loads((config_dir / "config.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{config_dir / 'config.json'}: unreadable Docker config: {exc}") from exc
    keys = _config_keys(registry)
    helper = next(
        (config.get("credHelpers", {}).get(k) for k in keys if k in config.get("credHelpers", {})),
        None,
    )
    auths = config.get("auths", {})
    entry = next((auths[k] for k in keys if k in auths), None)
    if helper is None and entry is None:
        helper = config.get("credsStore")
    if helper:
        found = _from_helper(helper, keys[0])
        if found:
            return found
    if isinstance(entry, dict):
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise UsageError(
                    f"Docker config: auths[{registry}].auth is not base64 user:password"
                ) from exc
            return user, password
        if entry.get("username") and entry.get("password"):
            return entry["username"], entry["password"]
    return None


def _config_keys(registry: str) -> list[str]:
    """The keys Docker's config may file a registry under."""
    if registry == DOCKER_HUB:
        return ["https://index.docker.io/v1/", "index.docker.io", "docker.io", DOCKER_HUB]
    return [registry, f"https://{registry}", f"http://{registry}"]


def _from_helper(helper: str, server: str) -> tuple[str, str] | None:
    """Ask `docker-credential-<helper>`; the server URL goes on stdin, the secret comes back."""
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        raise UsageError(
            f"Docker config names credential helper {helper!r}, "
            f"but docker-credential-{helper} is not on PATH"
        )
    done = subprocess.run([program, "get"], input=server.encode(), capture_output=True, timeout=30)
    if done.returncode != 0:
        return None  # "credentials not found in native keychain": anonymous
    try:
        answer = json.loads(done.stdout)
        return str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"docker-credential-{helper} answered something that is not credentials"
        ) from exc


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
                raise RegistryError(
                    f"{host}: TLS failed ({_reason(exc)}); pass --insecure (or "
                    "WARMER_REGISTRY_INSECURE=1) only if this registry speaks plain HTTP on purpose"
                ) from None
            self._base = f"http://{host}"
        except requests.exceptions.ConnectionError as exc:
            if not plain_ok:
                raise RegistryError(f"{host}: cannot connect: {_reason(exc)}") from None
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
        """One request with authentication; a 401 fetches a token (or uses Basic) and retries."""
        import requests

        url = path if path.startswith("http") else self._base_url() + path
        kwargs.setdefault("timeout", _TIMEOUT_S)
        body = kwargs.get("data")
        for attempt in range(2):
            sent_headers = dict(headers or {})
            if self._token:
                sent_headers["Authorization"] = self._token
            if body is not None and hasattr(body, "seek"):
                body.seek(0)  # a retry sends the whole body again
            try:
                response = self._session.request(method, url, headers=sent_headers, **kwargs)
            except requests.exceptions.RequestException as exc:
                raise RegistryError(
                    f"{self.reference.registry}: {method} failed: {_reason(exc)}"
                ) from None
            if response.status_code != 401 or attempt:
                break
            self._authenticate(response.headers.get("WWW-Authenticate", ""))
        if response.status_code not in ok:
            raise RegistryError(_explain(response, method, self.reference))
        return response

    def _authenticate(self, challenge: str) -> None:
        """Answer a Bearer or Basic challenge with this registry's credentials."""
        scheme, _, params_text = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        with self._token_lock:
            if scheme.lower() == "basic":
                if not self._credentials:
                    raise RegistryError(
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
            response = self._session.get(
                params["realm"], params=query, auth=auth, timeout=_TIMEOUT_S
            )
            if response.status_code != 200:
                raise RegistryError(
                    f"{self.reference.registry}: token request refused ({response.status_code}); "
                    + ("check the credentials" if auth else _LOGIN_HINT)
                )
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
        """Upload unless the registry has it; returns whether bytes were sent."""
        if self.has_blob(digest):
            return False
        started = self._request("POST", f"/v2/{self.repository}/blobs/uploads/", ok=(202,))
        location = started.headers["Location"]
        if location.startswith("/"):
            location = self._base_url() + location
        separator = "&" if "?" in location else "?"
        self._request(
            "PUT",
            f"{location}{separator}digest={digest}",
            ok=(201,),
            data=source,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        with self._sent_lock:
            self.bytes_sent += size
        return True

    @contextlib.contextmanager
    def open_blob(self, digest: str, size: int) -> Iterator[CheckedStream]:
        """A stream of the blob that raises RegistryError at its end if size or sha256 differ."""
        response = self._request("GET", f"/v2/{self.repository}/blobs/{digest}", stream=True)
        try:
            response.raw.decode_content = False
            yield CheckedStream(response.raw, digest, size, str(self.reference))
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


def _explain(response: Any, method: str, reference: Reference) -> str:
    """A one-line reason from a registry's error body ({"errors": [{"code", "message"}]})."""
    try:
        errors = response.json().get("errors") or []
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except ValueError:
        detail = response.text[:200]
    if response.status_code in (401, 403):
        detail = f"{detail} ({_LOGIN_HINT})"
    where = f"{reference.registry}/{reference.repository}"
    return f"{where}: {method} refused: HTTP {response.status_code} {detail}"


_LOGIN_HINT = "run `docker login`, or set WARMER_REGISTRY_USERNAME and WARMER_REGISTRY_PASSWORD"


class CheckedStream:
    """Reads a blob while hashing it; at EOF compares size and sha256 with the descriptor."""

    def __init__(self, raw: IO[bytes], digest: str, size: int, where: str) -> None:
        self._raw, self._digest, self._size, self._where = raw, digest, size, where
        self._hash = hashlib.sha256()
        self._seen = 0
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            chunks = []
            while chunk := self.read(_CHUNK):
                chunks.append(chunk)
            return b"".join(chunks)
        data = self._raw.read(n)
        if data:
            self._hash.update(data)
            self._seen += len(data)
            if self._seen > self._size:
                raise RegistryError(
                    f"{self._where}: blob {self._digest} is longer than its descriptor"
                )
        elif not self._checked:
            self._checked = True
            actual = "sha256:" + self._hash.hexdigest()
            if self._seen != self._size or actual != self._digest:
                raise RegistryError(
                    f"{self._where}: blob {self._digest} does not match its digest "
                    f"({self._seen} bytes, sha256 {actual[7:19]}…): "
                    "corrupt in the registry or in transit"
                )
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass
