"""The test registry (WARMER_TEST_REGISTRY) and snapshots of random files to push to it."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from warmer.envkey import EnvKey
from warmer.store import Store
from warmer.store.manifest import FileEntry, Manifest

F = TypeVar("F", bound=Callable[..., Any])
REGISTRY = os.environ.get("WARMER_TEST_REGISTRY", "")
REGISTRY_DATA = os.environ.get("WARMER_TEST_REGISTRY_DATA", "")


def _registry_answers() -> bool:
    if not REGISTRY:
        return False
    import requests

    try:
        return requests.get(f"http://{REGISTRY}/v2/", timeout=5).status_code == 200
    except requests.RequestException:
        return False


_REGISTRY_SKIP = pytest.mark.skipif(
    not _registry_answers(),
    reason="no OCI registry (set WARMER_TEST_REGISTRY=host:port or run .ci/registry-up)",
)


def needs_registry(test: F) -> F:
    """Marked `registry`, and skipped with the reason when no registry answers."""
    return pytest.mark.registry(_REGISTRY_SKIP(test))  # type: ignore[no-any-return]


def synthetic(store: Store, name: str, sizes: dict[str, int], seed: object = 0, **env: str) -> str:
    """A snapshot of random files (path -> size) for this machine's env (or `env` over it)."""
    key = EnvKey.from_dict({**EnvKey.probe().to_dict(), **env})
    files = []
    for path, size in sorted(sizes.items()):
        data = random.Random(f"{seed}:{path}").randbytes(size)
        files.append(FileEntry(path, "triton", store.put_bytes(data), size, 0o644))
    manifest = Manifest(name, key.to_dict(), key.tag, key.digest, tuple(files))
    return store.commit(manifest).ref


# -- a registry of our own, in memory, that can be told to lie ----------------------------------

#: A body: bytes, or the chunks to send one by one (with no Content-Length unless given).
Body = bytes | Callable[[], Iterator[bytes]]
#: An answer: status, headers, body.
Answer = tuple[int, dict[str, str], Body]
_PATH = re.compile(
    r"^/v2/(?P<repo>.+?)/(?P<kind>blobs/uploads|blobs|manifests|tags)/?(?P<rest>.*)$"
)


class MemoryRegistry:
    """Just enough of the OCI distribution API, on 127.0.0.1 over plain HTTP, in a thread:
    blob uploads, manifests by tag and digest, tag lists. `lies` ("METHOD /path", query left
    out) answers in place of the truth, for hostile replies; `seen` lists every request."""

    def __init__(self) -> None:
        import http.server

        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        #: "METHOD /path" -> the answer, or a function of the full path that gives it
        self.lies: dict[str, Answer | Callable[[str], Answer]] = {}
        self.seen: list[str] = []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                key = f"{self.command} {self.path.split('?')[0]}"
                registry.seen.append(key)
                lie = registry.lies.get(key)
                if callable(lie):
                    lie = lie(self.path)
                status, headers, data = lie or registry.truth(self.command, self.path, body)
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                if isinstance(data, bytes):
                    headers.setdefault("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                try:
                    for chunk in [data] if isinstance(data, bytes) else data():
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except OSError:  # the client gave up: what a trickle is for
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = answer

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up early (a refused reply is not read to its end)

        self._server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> MemoryRegistry:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def truth(self, method: str, path: str, body: bytes) -> Answer:
        """What an honest registry answers."""
        url = urllib.parse.urlsplit(path)
        if url.path == "/v2/":
            return 200, {}, b"{}"
        match = _PATH.match(url.path)
        if not match:
            return 404, {}, b'{"errors": [{"code": "UNSUPPORTED"}]}'
        repo, kind, rest = match["repo"], match["kind"], match["rest"]
        if kind == "blobs/uploads":
            if method == "POST":
                return 202, {"Location": f"/v2/{repo}/blobs/uploads/{uuid.uuid4().hex}"}, b""
            digest = urllib.parse.parse_qs(url.query)["digest"][0]
            self.blobs[digest] = body
            return 201, {"Docker-Content-Digest": digest}, b""
        if kind == "blobs":
            if rest not in self.blobs:
                return 404, {}, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}'
            return 200, {"Content-Type": "application/octet-stream"}, self.blobs[rest]
        if kind == "manifests":
            if method == "PUT":
                self.put_manifest(repo, rest, body)
                return 201, {}, b""
            if (repo, rest) not in self.manifests:
                return 404, {}, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}'
            media_type, document = self.manifests[repo, rest]
            digest = "sha256:" + hashlib.sha256(document).hexdigest()
            return 200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, document
        tags = sorted(t for r, t in self.manifests if r == repo and not t.startswith("sha256:"))
        if not tags:
            return 404, {}, b'{"errors": [{"code": "NAME_UNKNOWN"}]}'
        return 200, {}, json.dumps({"name": repo, "tags": tags}).encode()

    def put_manifest(self, repo: str, tag: str, body: bytes) -> None:
        media_type = json.loads(body).get("mediaType", "application/json")
        self.manifests[repo, tag] = (media_type, body)
        self.manifests[repo, "sha256:" + hashlib.sha256(body).hexdigest()] = (media_type, body)

    def lie(self, method: str, path: str, body: Body, status: int = 200, **headers: str) -> None:
        """Answer `METHOD path` with this from now on (`Content_Type=` sets Content-Type)."""
        named = {name.replace("_", "-"): value for name, value in headers.items()}
        self.lies[f"{method} {path}"] = (status, named, body)
