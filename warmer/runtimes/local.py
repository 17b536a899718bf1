"""The local runtime: the same job as a subprocess on this host, for machines with no engine
(a GPU box, a Kubernetes pod already on the target image, a lent GPU machine).

A container starts with empty caches; the local runtime gets the same guarantee by pointing
every cache variable at a fresh work directory, so the harvest holds everything the run
needed. Files are recorded at the places this host's runtimes would look by default
(`path_mapping`), and a preload (a verify pass) is unpacked the other way round.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from warmer.caches import (
    Facts,
    default_roots,
    inductor_default_dir,
    is_triton_group,
    relocate,
    rewrite_group,
)
from warmer.runtimes.base import (
    AGENT_PACKAGE_TARGET,
    STOP_GRACE_S,
    TAIL_LINES,
    ContainerSpec,
    RunOutcome,
    masker,
    open_chunks,
    read_secrets,
)


class LocalSession:
    """One run of the agent as a process group on this host, in its own cache directories."""

    def __init__(self, spec: ContainerSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.environ = _job_environment(spec)
        facts = Facts.of_this_process()
        deployed = Facts(
            environ={**facts.environ, **{k: spec.env[k] for k in facts.environ if k in spec.env}},
            home=facts.home,
            tmpdir=facts.tmpdir,
            user=facts.user,
        )
        # Inductor is not redirected: the fresh TMPDIR below moves its default root, which
        # also holds what it writes at the default place whatever its variable says.
        # Triton is moved through TRITON_HOME unless TRITON_CACHE_DIR is set here (or the job
        # names TRITON_HOME): with TRITON_CACHE_DIR unset, as in a container or a deployment,
        # Inductor keeps its kernels under its own root (`<inductor>/triton/<device>`); set, it
        # would send them to Triton's root, where a deployment does not look for them.
        triton = (
            "TRITON_CACHE_DIR"
            if self.environ.get("TRITON_CACHE_DIR") or "TRITON_HOME" in spec.env
            else "TRITON_HOME"
        )
        isolated = {
            triton: workdir / "triton",
            "VLLM_CACHE_ROOT": workdir / "vllm",
            "CUDA_CACHE_PATH": workdir / "cuda-jit",
            "TORCH_EXTENSIONS_DIR": workdir / "torch-extensions",
        }
        by_kind = {root.kind: root.path for root in default_roots(deployed)}
        kinds = {
            "TRITON_CACHE_DIR": "triton",
            "TRITON_HOME": "triton",
            "VLLM_CACHE_ROOT": "vllm",
            "CUDA_CACHE_PATH": "cuda-jit",
            "TORCH_EXTENSIONS_DIR": "torch-extensions",
        }
        #: where a file found in the work dir is recorded -> (work dir path -> default path)
        self.path_mapping: dict[str, str] = {}
        #: cache directories the job chose itself: kept, and harvested by modification time
        self.explicit_roots = [
            spec.env[name] for name in (*isolated, "TORCHINDUCTOR_CACHE_DIR") if name in spec.env
        ]
        self.started = time.time()
        for name, path in isolated.items():
            if name in spec.env:
                continue
            self.environ[name] = str(path)
            cache = path / ".triton" / "cache" if name == "TRITON_HOME" else path
            self.path_mapping[str(cache)] = by_kind[kinds[name]]
        tmp = workdir / "tmp"
        tmp.mkdir()
        self.environ["TMPDIR"] = str(tmp)
        work_facts = Facts(environ={}, home=facts.home, tmpdir=str(tmp), user=facts.user)
        self.path_mapping[inductor_default_dir(work_facts)] = inductor_default_dir(deployed)
        self.roots = list(self.path_mapping)

    def preload(self, chunks: Iterable[bytes]) -> None:
        """Unpack a tar of files at their recorded paths into this session's directories."""
        inverse = {recorded: work for work, recorded in self.path_mapping.items()}
        with tarfile.open(fileobj=open_chunks(chunks), mode="r|") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                recorded = "/" + member.name.lstrip("/")
                target = relocate(recorded, inverse)
                if target == recorded:  # not under a cache root of this session: skip it
                    continue
                reader = tar.extractfile(member)
                assert reader is not None
                data = reader.read()
                if is_triton_group(target):
                    data = rewrite_group(data, os.path.dirname(target)) or data
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                Path(target).write_bytes(data)
                os.chmod(target, member.mode & 0o777)
                # the bundle's time, as a container's unpacked preload keeps it: what the run
                # writes itself stands out by its newer time
                os.utime(target, (member.mtime, member.mtime))

    def wait(self, deadline_s: float, on_line: Callable[[str], None]) -> RunOutcome:
        """Run the command; stream its merged output; kill the process group at the deadline."""
        started = time.monotonic()
        self.started = time.time()
        process = subprocess.Popen(
            _host_command(self.spec),
            env=self.environ,
            cwd=self.spec.workdir or None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        stdout_lines: list[str] = []
        mask = masker(read_secrets(self.spec.secret_names).values())

        def pump() -> None:
            assert process.stdout is not None
            for raw in process.stdout:
                line = mask(raw.decode("utf-8", "replace").rstrip("\n"))
                stdout_lines.append(line)
                tail.append(line)
                on_line(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(process)
        finally:
            if process.poll() is None:
                _stop_group(process)
        reader.join(timeout=STOP_GRACE_S)
        return RunOutcome(
            exit_code=None if timed_out else process.returncode,
            timed_out=timed_out,
            seconds=time.monotonic() - started,
            log_tail="\n".join(tail),
            stdout_lines=stdout_lines,
        )

    def changed_paths(self) -> list[str]:
        """Everything under the fresh cache directories, and what changed since the start
        under the directories the job chose itself."""
        changed = []
        for root in [*self.roots, *self.explicit_roots]:
            fresh = root in self.roots
            for directory, _dirs, files in os.walk(root):
                for name in files:
                    path = os.path.join(directory, name)
                    if fresh or os.lstat(path).st_mtime >= self.started:
                        changed.append(path)
        return sorted(changed)

    def read_tree(self, path: str) -> Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]:
        """The regular files under `path` on this host, as (TarInfo, reader)."""
        for directory, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(directory, name)
                status = os.lstat(full)
                info = tarfile.TarInfo(full)
                info.size, info.mode = status.st_size, status.st_mode & 0o777
                info.mtime = int(status.st_mtime)
                if not os.path.isfile(full) or os.path.islink(full):
                    info.type = tarfile.SYMTYPE
                    yield info, None
                    continue
                with open(full, "rb") as reader:
                    yield info, reader


class LocalRuntime:
    """Runs jobs as subprocesses of this host (see the module docstring)."""

    name = "local"

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir

    @contextmanager
    def start(
        self, spec: ContainerSpec, preload: Iterable[bytes] | None = None
    ) -> Iterator[LocalSession]:
        base = tempfile.mkdtemp(prefix="warmer-local-", dir=self.workdir)
        try:
            session = LocalSession(spec, Path(base))
            if preload is not None:
                session.preload(preload)
            yield session
        finally:
            import shutil

            shutil.rmtree(base, ignore_errors=True)

    def sweep(self) -> int:
        """Nothing outlives a local run: work directories are removed in a `finally`."""
        return 0


def _job_environment(spec: ContainerSpec) -> dict[str, str]:
    """This process's environment plus the job's; the agent's package comes first on the path."""
    environ = dict(os.environ)
    environ.update(spec.env)
    package = next((m.source for m in spec.mounts if m.target == AGENT_PACKAGE_TARGET), None)
    if package:
        package_parent = os.path.dirname(package.rstrip("/"))
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, os.environ.get("PYTHONPATH")) if p
        )
    return environ


def _host_command(spec: ContainerSpec) -> list[str]:
    """The container command with mount targets turned back into host paths, run by this
    Python (the image's `python3` is this interpreter here)."""
    command = list(spec.command)
    if command and command[0] in ("python", "python3"):
        command[0] = sys.executable
    for mount in sorted(spec.mounts, key=lambda m: len(m.target), reverse=True):
        command = [
            mount.source + arg[len(mount.target) :] if arg.startswith(mount.target + "/") else arg
            for arg in command
        ]
    return command


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL after the grace period."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
