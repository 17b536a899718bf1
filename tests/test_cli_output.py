"""Output that fits automation: plain progress lines where stderr is no terminal, `-v`,
heartbeats of a warm-up step, `export -o` names, through the real command line."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, compile_triton, saved_triton
from helpers.registry import needs_registry

from warmer.agent.report import Channel, Progress, parse_line
from warmer.cli import cli
from warmer.cli.output import ProgressPrinter


def warmer_process(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`warmer ARGS` as a new process whose stderr is a pipe (no terminal), as in CI."""
    return subprocess.run(
        [sys.executable, "-c", "from warmer.cli import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        check=False,
    )


#: `LABEL: DONE[/TOTAL] files, SIZE[/SIZE], ELAPSED`
def files_line(label: str) -> re.Pattern[str]:
    return re.compile(rf"^{label}: (\d+)(?:/(\d+))? files, \S+, \S+$", re.MULTILINE)


def test_save_and_restore_print_plain_progress_lines_without_a_terminal(
    triton_cache: Path, tmp_path: Path
) -> None:
    env = {
        "TRITON_CACHE_DIR": str(triton_cache),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "no-inductor"),
        "VLLM_CACHE_ROOT": str(tmp_path / "no-vllm"),
        "HOME": str(tmp_path / "home"),
        "WARMER_STORE": str(tmp_path / "store"),
    }
    saved = warmer_process("save", "--kinds", "triton", "--out", tmp_path / "out", env=env)
    assert saved.returncode == 0, saved.stderr
    files = sum(1 for p in triton_cache.rglob("*") if p.is_file())
    done = files_line("saving").findall(saved.stderr)
    assert done and int(done[-1][0]) == files, saved.stderr
    assert "\x1b[" not in saved.stderr  # no bar, no escape codes in a log

    bundle = next((tmp_path / "out").iterdir())
    fresh = tmp_path / "fresh"
    restored = warmer_process("restore", bundle, "--root", fresh, env=env)
    assert restored.returncode == 0, restored.stderr
    assert files_line("restoring").findall(restored.stderr)[-1][:2] == (str(files), str(files))
    events = compile_triton(fresh / str(triton_cache).lstrip("/"))
    assert events and all(event["cache_hit"] for event in events)


def test_plain_lines_come_every_interval_and_at_the_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = [100.0]
    printer = ProgressPrinter(label="pulling", every=10.0, clock=lambda: now[0])
    for second in range(0, 26):
        now[0] = 100.0 + second
        printer("files", {"files": second, "bytes": second * 1024, "files_total": 25})
    printer.finish()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "pulling: 10/25 files, 10.0K, 10.0s",
        "pulling: 20/25 files, 20.0K, 20.0s",
        "pulling: 25/25 files, 25.0K, 25.0s",
    ]
    ProgressPrinter(label="quiet").finish()  # nothing reported, nothing printed
    assert capsys.readouterr().err == ""


def test_verbose_prints_plain_lines_and_is_a_global_option(
    triton_cache: Path, tmp_path: Path
) -> None:
    bundle, _manifest = saved_triton(triton_cache, tmp_path)
    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(cli, ["-v", "restore", str(bundle), "--root", str(fresh)])
    assert result.exit_code == 0, result.output
    assert files_line("restoring").search(result.stderr), result.stderr
    assert "-v, --verbose" in CliRunner().invoke(cli, ["--help"]).output


def test_a_quiet_step_sends_heartbeats_until_it_ends() -> None:
    beat = threading.Event()

    class Watched(io.StringIO):
        def write(self, text: str) -> int:
            if "elapsed_s" in text:
                beat.set()
            return super().write(text)

    stream = Watched()
    progress = Progress(Channel(stream), heartbeat=0.01)
    progress.expect(2)
    with progress.step("input[0] (1, 32, 256)"):
        assert beat.wait(30), "no heartbeat while the step ran"
    after = len(stream.getvalue().splitlines())
    with progress.step("input[1]"):
        pass
    parsed = [parse_line(line) for line in stream.getvalue().splitlines()]
    documents = [item[1] for item in parsed if item is not None and item[0] == "progress"]
    assert len(documents) == len(parsed)
    assert documents[0] == {"step": "input[0] (1, 32, 256)", "i": 1, "n": 2}
    beats = documents[1:after]
    assert beats and all(d["i"] == 1 and d["elapsed_s"] >= 0 for d in beats)
    assert documents[after] == {"step": "input[1]", "i": 2, "n": 2}  # none after the end
    assert [s["name"] for s in progress.steps] == ["input[0] (1, 32, 256)", "input[1]"]


def test_a_heartbeat_prints_the_step_and_its_elapsed_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    printer = ProgressPrinter()
    printer("progress", {"job": "tiny", "step": "input[1]", "i": 2, "n": 3, "elapsed_s": 90.0})
    printer("progress", {"job": "tiny", "step": "input[2]", "i": 3, "n": 3})
    assert capsys.readouterr().err.splitlines() == [
        "[tiny] input[1] 2/3: still running, 1m30s",
        "[tiny] input[2] 3/3",
    ]


def test_export_into_a_directory_and_refuse_a_wrong_extension(
    triton_cache: Path, tmp_path: Path
) -> None:
    _bundle, manifest = saved_triton(triton_cache, tmp_path)
    store = ["--store", str(tmp_path / "store")]

    def export(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli, ["export", manifest.ref, *args, *store])
        return result.exit_code, result.stdout, result.stderr

    unknown = CliRunner().invoke(cli, ["export", "nothing@here", "-o", f"{tmp_path}/new/", *store])
    assert unknown.exit_code != 0 and not (tmp_path / "new").exists()
    code, _out, err = export("-o", f"{tmp_path}/new/", "--json")
    assert code == 0, err
    written = list((tmp_path / "new").iterdir())
    assert [p.name.endswith(".tar.zst") for p in written] == [True]
    assert written[0].name.startswith("triton-unit__")

    for name, fmt, says in [
        ("x.tar.gz", "zst", ".tar.zst"),
        ("x.tar.zst", "gz", ".tar.gz"),
        ("x.zip", None, ".tar.zst"),
        ("bundle", None, ".tar.zst"),
    ]:
        code, _out, err = export("-o", str(tmp_path / name), *(["--format", fmt] if fmt else []))
        assert code == 2 and says in err and "-o" in err, (name, err)
        assert not (tmp_path / name).exists()
    code, _out, err = export("-o", str(tmp_path / "x.tgz"))
    assert code == 0, err
    assert (tmp_path / "x.tgz").read_bytes()[:2] == b"\x1f\x8b"


@needs_registry
def test_push_and_pull_print_plain_progress_lines(triton_cache: Path, tmp_path: Path) -> None:
    from helpers.registry import REGISTRY

    bundle, manifest = saved_triton(triton_cache, tmp_path)
    repo = f"{REGISTRY}/test/progress-{os.getpid()}"
    env = {"WARMER_STORE": str(tmp_path / "store")}
    pushed = warmer_process("push", bundle, repo, env=env)
    assert pushed.returncode == 0, pushed.stderr
    done = files_line("pushing").findall(pushed.stderr)
    assert done[-1] == (str(len(manifest.files)), str(len(manifest.files)))
    pulled = warmer_process("pull", repo, "--auto", env={"WARMER_STORE": str(tmp_path / "s2")})
    assert pulled.returncode == 0, pulled.stderr
    done = files_line("pulling").findall(pulled.stderr)
    assert done and done[-1][0] == done[-1][1], pulled.stderr


def test_on_a_terminal_a_bar_and_with_v_plain_lines(triton_cache: Path, tmp_path: Path) -> None:
    """stderr a real pseudo-terminal: the transient bar, no plain lines; `-v`: plain lines."""
    import pty

    bundle, _manifest = saved_triton(triton_cache, tmp_path)

    def restore_on_a_terminal(*options: str) -> str:
        root = tmp_path / f"fresh{len(options)}"
        command = [*options, "restore", str(bundle), "--root", str(root)]
        controller, terminal = pty.openpty()
        process = subprocess.Popen(
            [sys.executable, "-c", "from warmer.cli import main; main()", *command],
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env={**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm"},
        )
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process is done writing
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(controller)
        assert process.wait() == 0
        return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")

    plain = files_line("restoring")
    assert not plain.search(restore_on_a_terminal())
    assert plain.search(restore_on_a_terminal("-v"))
