"""The Docker runtime: one container per run, through the docker SDK (Podman through its
Docker-compatible socket, by the same code).

Lifecycle: create (labelled, never privileged, env in the API body) → optional preload tar at
/ → start → stream logs on threads → wait with our own monotonic deadline → the runner reads
the diff and streams files out → stop and remove in a `finally`. Leftovers of crashed runs
are found by label and removed by `sweep`. The SDK is imported inside functions so that
`import warmer.runtimes` stays light.
"""

from __future__ import annotations

import copy
import os
import posixpath
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, cast

from warmer.errors import UsageError, WarmerError
from warmer.runtimes.base import (
    HOST_LABEL,
    MANAGED_LABEL,
    PID_LABEL,
    STOP_GRACE_S,
    TAIL_LINES,
    ContainerSpec,
    RunOutcome,
    masker,
    open_chunks,
    read_secrets,
)

#: HTTP timeout of ordinary engine calls (create, diff, remove); log streams have none.
_API_TIMEOUT_S = 120
#: A quick answer is all `engine_answers` needs.
_PROBE_TIMEOUT_S = 5
#: Device nodes a ROCm container needs, and the groups that own them on a typical host.
ROCM_DEVICES = ("/dev/kfd", "/dev/dri")
ROCM_GROUPS = ("video", "render")
#: What an engine puts into every container itself: the init binary (`init=True`) and the
#: files it bind-mounts (Podman's diff shows /etc as modified because of them).
ENGINE_FILES = frozenset(
    {
        "/usr/sbin/docker-init",
        "/run/podman-init",
        "/run/.containerenv",
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
    }
)


def default_docker_url() -> str:
    """Where the SDK looks when no URL is given: $DOCKER_HOST, else the default socket."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def podman_base_url(environ: Mapping[str, str] = os.environ) -> str:
    """The Podman service socket: $WARMER_PODMAN_SOCKET or $CONTAINER_HOST as given, else the
    first of the rootless and the rootful default sockets that exists."""
    from warmer.config import settings

    for value in (settings(environ).podman_socket, environ.get("CONTAINER_HOST")):
        if value:
            return value if "://" in value else f"unix://{value}"
    defaults = []
    if environ.get("XDG_RUNTIME_DIR"):
        defaults.append(os.path.join(environ["XDG_RUNTIME_DIR"], "podman", "podman.sock"))
    defaults.append("/run/podman/podman.sock")
    for path in defaults:
        if os.path.exists(path):
            return f"unix://{path}"
    raise UsageError(
        "no Podman socket found (looked at $WARMER_PODMAN_SOCKET, $CONTAINER_HOST, "
        f"{', '.join(defaults)}): start `podman system service` or set WARMER_PODMAN_SOCKET"
    )


def engine_answers(base_url: str | None = None) -> bool:
    """True when an engine answers a ping at `base_url` (default: $DOCKER_HOST or the socket)."""
    try:
        import docker
        import docker.errors
    except ImportError:
        return False
    try:
        client = (
            docker.DockerClient(base_url=base_url, timeout=_PROBE_TIMEOUT_S)
            if base_url
            else docker.from_env(timeout=_PROBE_TIMEOUT_S)
        )
    except (docker.errors.DockerException, OSError):
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, OSError):
        return False
    finally:
        client.close()


def container_kwargs(
    spec: ContainerSpec,
    secrets: Mapping[str, str],
    *,
    device_groups: Sequence[str] = ROCM_GROUPS,
    cdi_gpus: bool = False,
) -> dict[str, Any]:
    """The `containers.create()` arguments for `spec`: least privilege, env in the API body.

    `device_groups` are the groups a ROCm container joins to open its device nodes (names
    resolved in the image, or numeric ids of the host's device files). `cdi_gpus` asks for
    CUDA GPUs by CDI name (`nvidia.com/gpu=...`), the form Podman understands, instead of
    Docker's NVIDIA device request.
    """
    from docker.types import Mount as DockerMount

    environment = {**spec.env, **secrets}
    kwargs: dict[str, Any] = {
        "image": spec.image,
        # Run exactly the command: an image's ENTRYPOINT (vllm-openai starts the API server)
        # would otherwise take it as arguments. [""] is how the API says "none".
        "entrypoint": [""],
        "command": list(spec.command),
        "environment": environment,
        "labels": managed_labels(spec.labels),
        "mounts": [
            DockerMount(m.target, m.source, type="bind", read_only=m.read_only) for m in spec.mounts
        ],
        "network_mode": spec.network,
        "init": True,
        "privileged": False,
        "security_opt": ["no-new-privileges"],
        "stdin_open": False,
        "tty": False,
    }
    if spec.user is not None:
        kwargs["user"] = spec.user
    if spec.workdir is not None:
        kwargs["working_dir"] = spec.workdir
    if spec.shm_size is not None:
        kwargs["shm_size"] = spec.shm_size
    if spec.backend == "cuda":
        kwargs["device_requests"] = [_cuda_request(spec.gpus, cdi_gpus)]
    elif spec.backend == "rocm":
        kwargs["devices"] = [f"{path}:{path}:rwm" for path in ROCM_DEVICES]
        kwargs["group_add"] = list(device_groups)
        # /dev/dri exposes every GPU: the HIP runtime narrows it to the ones asked for.
        ids = _device_ids(spec.gpus)
        if ids is not None and "HIP_VISIBLE_DEVICES" not in spec.env:
            environment["HIP_VISIBLE_DEVICES"] = ",".join(ids)
    elif spec.backend != "cpu":
        raise UsageError(f"unknown backend {spec.backend!r}: expected cuda, rocm or cpu")
    return kwargs


def _cuda_request(gpus: str | int | list[int], cdi: bool) -> Any:
    """Docker's NVIDIA request (all: count -1, a count, or ids), or the CDI names of the GPUs."""
    from docker.types import DeviceRequest

    ids = _device_ids(gpus)
    if cdi:
        names = [f"nvidia.com/gpu={i}" for i in ids] if ids is not None else ["nvidia.com/gpu=all"]
        return DeviceRequest(driver="cdi", device_ids=names)
    if isinstance(gpus, int):
        return DeviceRequest(count=gpus, capabilities=[["gpu"]])
    if ids is None:
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    return DeviceRequest(device_ids=ids, capabilities=[["gpu"]])


def _device_ids(gpus: str | int | list[int]) -> list[str] | None:
    """The GPU ids `gpus` selects: a list, a string such as "0,1", or the first N for a
    count; None for "all"."""
    if isinstance(gpus, int):
        return [str(i) for i in range(gpus)]
    if isinstance(gpus, list):
        return [str(i) for i in gpus]
    if gpus != "all":
        return [part.strip() for part in gpus.split(",") if part.strip()]
    return None


def managed_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The spec's labels plus the ones `sweep` relies on (owner pid and host)."""
    return {
        PID_LABEL: str(os.getpid()),
        HOST_LABEL: socket.gethostname(),
        **labels,
        MANAGED_LABEL: "1",
    }


def host_device_groups() -> list[str]:
    """Numeric ids of the groups owning this host's ROCm device nodes; the named defaults when
    there are none. Ids work whatever groups the image defines (a missing `render` group
    would stop the container from starting)."""
    paths = [Path("/dev/kfd"), *sorted(Path("/dev/dri").glob("renderD*"))]
    gids = sorted({p.stat().st_gid for p in paths if p.exists()} - {0})
    return [str(gid) for gid in gids] or list(ROCM_GROUPS)


class DockerSession:
    """One started container; it stays on the engine after it stops, until `start` exits."""

    def __init__(self, container: Any, spec: ContainerSpec, secret_values: Iterable[str]) -> None:
        self.container = container
        self._mask = masker(secret_values)
        self._mount_targets = frozenset(posixpath.normpath(m.target) for m in spec.mounts)
        self._started = time.monotonic()

    def wait(self, deadline_s: float, on_line: Callable[[str], None]) -> RunOutcome:
        """Stream stdout and stderr (masked) until the container exits or the deadline passes
        (counted from the container's start); then stop it (SIGTERM, 10 s, SIGKILL).

        A live log stream can end before it delivered the last lines (the engine closes it
        when the container stops), so the outcome is read again from the stored logs, and
        lines the stream missed still reach `on_line`.
        """
        streamed = {True: 0, False: 0}
        lock = threading.Lock()

        def follow(stdout: bool) -> None:
            stream = self.container.logs(stdout=stdout, stderr=not stdout, stream=True, follow=True)
            for raw in _lines(stream):
                line = self._mask(raw.decode("utf-8", "replace"))
                with lock:
                    streamed[stdout] += 1
                on_line(line)

        followers = [threading.Thread(target=follow, args=(out,), daemon=True) for out in (1, 0)]
        for thread in followers:
            thread.start()
        exit_code, timed_out = self._wait_until(self._started + deadline_s)
        for thread in followers:
            thread.join(timeout=STOP_GRACE_S)
        stored = {out: self._stored_lines(stdout=out, stderr=not out) for out in (True, False)}
        with lock:
            missed = [line for out in (True, False) for line in stored[out][streamed[out] :]]
        for line in missed:
            on_line(line)
        return RunOutcome(
            exit_code=exit_code,
            timed_out=timed_out,
            seconds=time.monotonic() - self._started,
            log_tail="\n".join(self._stored_lines(stdout=True, stderr=True, tail=TAIL_LINES)),
            stdout_lines=stored[True],
        )

    def _stored_lines(self, **which: Any) -> list[str]:
        """The container's logs as the engine stored them, split into masked lines."""
        data = self.container.logs(**which)
        return [self._mask(raw.decode("utf-8", "replace")) for raw in _lines([data])]

    def _wait_until(self, deadline: float) -> tuple[int | None, bool]:
        """(exit code, timed out): the engine's wait runs on a thread; the deadline is ours."""
        result: dict[str, Any] = {}
        done = threading.Event()

        def wait_for_exit() -> None:
            try:
                result["status"] = self.container.wait()
            except BaseException as exc:  # re-raised below, in the caller's thread
                result["error"] = exc
            finally:
                done.set()

        threading.Thread(target=wait_for_exit, daemon=True).start()
        if done.wait(timeout=max(0.0, deadline - time.monotonic())):
            if "error" in result:
                raise WarmerError(f"lost the container while waiting: {result['error']}")
            return int(result["status"].get("StatusCode", -1)), False
        stop_container(self.container)
        done.wait(timeout=STOP_GRACE_S)
        return None, True

    def changed_paths(self) -> list[str]:
        """Paths the container added (kind 1) or modified (kind 0), from the engine's diff,
        less what the engine made itself: the init binary, the mount points, and parents
        that changed only to hold them."""
        changed = {c["Path"] for c in self.container.diff() or [] if c["Kind"] in (0, 1)}
        injected = ENGINE_FILES | self._mount_targets
        kept = {p for p in changed if not any(p == i or p.startswith(i + "/") for i in injected)}
        for path in injected:
            parent = posixpath.dirname(path)
            while parent != "/" and not any(p.startswith(parent + "/") for p in kept):
                kept.discard(parent)
                parent = posixpath.dirname(parent)
        return sorted(kept)

    def read_tree(self, path: str) -> Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]:
        """Stream `path` out of the container as a tar, no temporary copy; members renamed to
        their absolute paths (the engine names them relative to the parent of `path`)."""
        import docker.errors

        path = posixpath.normpath("/" + path.lstrip("/"))
        try:
            chunks, _stat = self.container.get_archive(path)
        except docker.errors.NotFound:
            return
        parent = posixpath.dirname(path)
        with tarfile.open(fileobj=open_chunks(chunks), mode="r|") as tar:
            for member in tar:
                info = copy.copy(member)
                info.name = posixpath.normpath(posixpath.join(parent, member.name))
                reader = tar.extractfile(member) if member.isreg() else None
                yield info, cast("BinaryIO | None", reader)


def stop_container(container: Any) -> None:
    """Stop with the grace period (the engine sends SIGKILL after it), then make sure."""
    import docker.errors

    with suppress(docker.errors.NotFound):
        container.stop(timeout=STOP_GRACE_S)
        container.reload()
        if container.status == "running":
            container.kill()


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines out of log chunks that split anywhere (a last partial line included)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r")
    if pending:
        yield pending.rstrip(b"\r")


class DockerRuntime:
    """Runs jobs as containers on a Docker engine, or on Podman through its compatible API."""

    def __init__(self, base_url: str | None = None, name: str = "docker") -> None:
        import docker
        import docker.errors

        self.name = name
        self.base_url = base_url or default_docker_url()
        try:
            self.client = (
                docker.DockerClient(base_url=base_url, timeout=_API_TIMEOUT_S)
                if base_url
                else docker.from_env(timeout=_API_TIMEOUT_S)
            )
            self.client.ping()
        except (docker.errors.DockerException, OSError) as exc:
            what = "Podman service" if name == "podman" else "Docker engine"
            hint = "set WARMER_PODMAN_SOCKET" if name == "podman" else "set DOCKER_HOST"
            raise UsageError(
                f"no {what} at {self.base_url}: start one, {hint}, or use --runtime local ({exc})"
            ) from None
        self._device_groups = host_device_groups() if self._engine_is_local() else ROCM_GROUPS

    def _engine_is_local(self) -> bool:
        """Host device files say something about the engine's devices only on this machine."""
        return self.base_url.startswith(("unix://", "npipe://"))

    @contextmanager
    def start(
        self, spec: ContainerSpec, preload: Iterable[bytes] | None = None
    ) -> Iterator[DockerSession]:
        """Create, preload, start; on exit (also on errors and Ctrl-C) stop and remove."""
        secrets = read_secrets(spec.secret_names)
        kwargs = container_kwargs(
            spec, secrets, device_groups=self._device_groups, cdi_gpus=self.name == "podman"
        )
        container = self._create(kwargs)
        try:
            if preload is not None:
                container.put_archive("/", iter(preload))  # an iterator: sent chunked
            container.start()
            yield DockerSession(container, spec, secrets.values())
        finally:
            self._remove(container)

    def _create(self, kwargs: dict[str, Any]) -> Any:
        import docker.errors

        image = kwargs["image"]
        try:
            return self.client.containers.create(**kwargs)
        except docker.errors.ImageNotFound:
            hint = (
                "build it with images/cpu/build"
                if image.split("/")[-1].startswith("warmer-cpu:")
                else f"pull it ({self.name} pull {image}) or build it"
            )
            raise UsageError(f"image {image} is not on the {self.name} engine: {hint}") from None
        except docker.errors.APIError as exc:
            raise UsageError(
                f"the {self.name} engine refused the container for {image}: {exc.explanation}"
            ) from None

    def _remove(self, container: Any) -> None:
        """Stop (grace period) and remove; a second Ctrl-C during the stop still removes."""
        import docker.errors

        try:
            container.reload()
            if container.status in ("running", "restarting", "paused"):
                stop_container(container)
        except docker.errors.NotFound:
            return
        finally:
            with suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)

    def sweep(self) -> int:
        """Remove containers of this host whose owning warmer process is gone."""
        import docker.errors

        removed = 0
        leftovers = self.client.containers.list(
            all=True, filters={"label": f"{MANAGED_LABEL}=1"}, ignore_removed=True
        )
        for container in leftovers:
            if not _owner_gone(container.labels):
                continue
            with suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
                removed += 1
        return removed

    def remove_mine(self) -> int:
        """Remove every container this process made on this engine, running or not (an
        interrupted fan-out: its threads wait on containers that only their end releases)."""
        import docker.errors

        removed = 0
        labels = [f"{MANAGED_LABEL}=1", f"{PID_LABEL}={os.getpid()}"]
        mine = self.client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)
        for container in mine:
            if container.labels.get(HOST_LABEL) != socket.gethostname():
                continue
            with suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
                removed += 1
        return removed


def _owner_gone(labels: Mapping[str, str]) -> bool:
    """True when the container's warmer process is dead; False when it is alive or on another
    host (its pid means nothing here)."""
    if labels.get(HOST_LABEL, socket.gethostname()) != socket.gethostname():
        return False
    try:
        pid = int(labels.get(PID_LABEL, ""))
    except ValueError:
        return True
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


__all__ = [
    "DockerRuntime",
    "DockerSession",
    "container_kwargs",
    "engine_answers",
    "podman_base_url",
]
