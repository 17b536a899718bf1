"""Runtimes start the agent where the warm-up happens: a container (docker, podman) or this
host (local). Importing this package imports no third-party module; the docker SDK is loaded
when a container runtime is asked for.
"""

from __future__ import annotations

from warmer.errors import UsageError
from warmer.runtimes.base import ContainerSpec, Mount, RunOutcome, Runtime, Session

RUNTIMES = ("docker", "podman", "local")

__all__ = [
    "RUNTIMES",
    "ContainerSpec",
    "Mount",
    "RunOutcome",
    "Runtime",
    "Session",
    "available_runtime",
    "get_runtime",
]


def available_runtime() -> str:
    """The runtime to use when none is named: "docker" when an engine answers (at $DOCKER_HOST
    or the default socket), else "podman" when a Podman service answers, else "local"."""
    from warmer.runtimes.docker import engine_answers, podman_base_url

    if engine_answers():
        return "docker"
    try:
        podman_url = podman_base_url()
    except UsageError:
        return "local"
    return "podman" if engine_answers(podman_url) else "local"


def get_runtime(name: str) -> Runtime:
    """The runtime called `name`; a container runtime checks that its engine answers."""
    if name == "docker":
        from warmer.runtimes.docker import DockerRuntime

        return DockerRuntime()
    if name == "podman":
        from warmer.runtimes.docker import DockerRuntime, podman_base_url

        return DockerRuntime(podman_base_url(), name="podman")
    if name == "local":
        from warmer.runtimes.local import LocalRuntime

        return LocalRuntime()
    raise UsageError(f"unknown runtime {name!r}: choose one of {', '.join(RUNTIMES)}")
