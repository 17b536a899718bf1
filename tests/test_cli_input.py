"""Input from outside, refused before anything is written: durations carry a unit, a bad option
or variable is named and exits 2 with no store or output directory left behind, `--json`
failures are documents, and Ctrl-C on a real `warmer` process exits 130 with the store whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from helpers.bundles import make_manifest, opener
from helpers.run import WARMER, warmer_environ
from helpers.store import manifest, put_files

from warmer.bundle import write_bundle
from warmer.cli import cli
from warmer.store import Store

#: A Triton kernel directory name (52 base32 characters).
KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRST"


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def command_job(tmp_path: Path, script: str, file: str = "job.yaml", **fields: object) -> Path:
    """A job of the command engine (no image: the local runtime runs it on this host)."""
    job = {
        "version": 1,
        "name": "cmd",
        "engine": {"kind": "command", "command": ["sh", "-c", script]},
        "timeout": "5m",
        **fields,
    }
    path = tmp_path / file
    path.write_text(yaml.safe_dump(job))
    return path


# -- durations -------------------------------------------------------------------------------


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A store with one snapshot last used a minute ago."""
    root = tmp_path / "store"
    with Store(root) as store:
        store.commit(manifest("tiny", put_files(store, {"/root/.triton/cache/K/k.json": b"{}"})))
    return root


def test_prune_older_than_a_bare_number_deletes_nothing(store_dir: Path) -> None:
    """`--older-than 30` pruned every snapshot idle for 30 seconds."""
    result = invoke("prune", "--older-than", "30", "-y", "--store", str(store_dir))
    assert result.exit_code == 2, result.output
    assert "--older-than: 30 has no unit: write 30s, 30m, 30h or 30d" in result.stderr
    assert invoke("ls", "-q", "--store", str(store_dir)).stdout.split() != []


@pytest.mark.parametrize("option", ["--older-than", "--younger-than"])
def test_kernel_filters_refuse_a_bare_number(tmp_path: Path, option: str) -> None:
    (tmp_path / "cache").mkdir()
    result = invoke("kernels", "ls", "--cache-dir", str(tmp_path / "cache"), option, "7")
    assert result.exit_code == 2
    assert option in result.stderr and "7 has no unit: write 7s" in result.stderr


# -- invalid input writes nothing ------------------------------------------------------------


def _bundle(tmp_path: Path) -> Path:
    files = {f"/root/.triton/cache/{KEY}/k.json": b"{}"}
    return write_bundle(make_manifest(files), opener(files), tmp_path / "in.tar.zst")


#: (arguments, extra environment, what the message must name). {tmp} is the test's directory;
#: the store is {tmp}/store and the outputs {tmp}/out and {tmp}/root, none of which may exist
#: afterwards.
BAD_INPUTS: list[tuple[list[str], dict[str, str], str]] = [
    (["save", "--name", "../../evil", "--kinds", "triton", "--out", "{tmp}/out"], {}, "--name"),
    (["save", "--kinds", "nope", "--out", "{tmp}/out"], {}, "nope"),
    (["save", "--out", "{tmp}/out"], {"WARMER_BUNDLE_FORMAT": "xz"}, "WARMER_BUNDLE_FORMAT"),
    (["show", "some-ref"], {"WARMER_REGISTRY": "::::/"}, "WARMER_REGISTRY"),
    (
        ["restore", "some-ref", "--root", "{tmp}/root"],
        {"WARMER_REGISTRY": "::::/"},
        "WARMER_REGISTRY",
    ),
    (["pull", "localhost:1/x:y"], {"WARMER_REGISTRY": "::::/"}, "WARMER_REGISTRY"),
    (["pull", "localhost:1/UPPER:y"], {}, "UPPER"),
    (["push", "{bundle}"], {"WARMER_REGISTRY": ""}, "no registry configured"),
    (["push", "{bundle}", "localhost:1/x:bad tag"], {}, "bad tag"),
    (["export", "no-such-ref", "-o", "{tmp}/out/b.tar.zst"], {}, "no-such-ref"),
    (["import", "{tmp}/junk.tar.zst"], {}, "junk.tar.zst"),
    (["restore", "{tmp}/junk.tar.zst", "--root", "{tmp}/root"], {}, "junk.tar.zst"),
    (["restore", "{bundle}", "--root", "{tmp}/root", "--map", "a=b"], {}, "--map"),
    (["pin", "no-such-ref"], {}, "no-such-ref"),
    (["prune", "--older-than", "30", "-y"], {}, "--older-than"),
    (["prune", "-y"], {"WARMER_MAX_SIZE": "lots"}, "WARMER_MAX_SIZE"),
    (["run", "{job}", "--runtime", "local", "--out", "{tmp}/out"], {}, "timeout"),
    (
        [
            "run",
            "{ok_job}",
            "--runtime",
            "local",
            "--out",
            "{tmp}/out",
            "--push",
            "--registry",
            "x/y",
        ],
        {},
        "--registry",
    ),
    (["run", "{ok_job}", "--out", "{tmp}/out"], {"WARMER_HOSTS": "::"}, "WARMER_HOSTS"),
    (["kernels", "ls", "--cache-dir", "{tmp}/nope"], {}, "{tmp}/nope"),
    (["ls"], {"WARMER_CONFIG": "{tmp}/nope.yaml"}, "WARMER_CONFIG"),
]


@pytest.mark.parametrize(
    ("args", "env", "named"), BAD_INPUTS, ids=[" ".join(a[:2]) for a, _, _ in BAD_INPUTS]
)
def test_bad_input_exits_2_names_it_and_creates_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    cache = tmp_path / "triton" / KEY
    cache.mkdir(parents=True)
    (cache / "k.json").write_text("{}")
    (tmp_path / "junk.tar.zst").write_bytes(b"not a bundle at all")
    fields = {
        "tmp": str(tmp_path),
        "bundle": str(_bundle(tmp_path)),
        "job": str(command_job(tmp_path, "true", "bare.yaml", timeout=20)),
        "ok_job": str(command_job(tmp_path, "true", image="x:y")),
    }
    state = tmp_path / "state"
    environ = {
        "WARMER_STORE": str(tmp_path / "store"),
        "WARMER_STATE_DIR": str(state),
        "TRITON_CACHE_DIR": str(tmp_path / "triton"),
        "WARMER_CONFIG": "",
        "WARMER_REGISTRY": "",
        **{name: value.format(**fields) for name, value in env.items()},
    }
    result = invoke(*(arg.format(**fields) for arg in args), env=environ)
    assert result.exit_code == 2, result.output
    assert named.format(**fields) in result.stderr, result.stderr
    assert "Traceback" not in result.output
    for made in ("store", "out", "root", "state"):
        assert not (tmp_path / made).exists(), f"{made} was created"


# -- --json failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["show", "no-such-ref", "--json"], 2),
        (["show", "no-such-ref", "--json"], 2),  # a second invocation in the same process
        (["prune", "--older-than", "30", "-y", "--json"], 2),
        (["verify", "{tmp}/junk.tar.zst", "--json"], 2),
    ],
)
def test_json_failures_are_one_document_on_stdout(
    tmp_path: Path, args: list[str], code: int
) -> None:
    (tmp_path / "junk.tar.zst").write_bytes(b"junk")
    result = invoke(*(a.format(tmp=tmp_path) for a in args), env={"WARMER_STORE": str(tmp_path)})
    assert result.exit_code == code
    (line,) = result.stdout.splitlines()  # one document, whatever came before
    document = json.loads(line)
    if "ok" in document:  # the command's own report (verify), which says it failed
        assert document["ok"] is False
    else:
        assert set(document) == {"error", "exit"} and document["exit"] == code


# -- Ctrl-C ----------------------------------------------------------------------------------


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    """The real `warmer` in a process group of its own, as a terminal starts a command."""
    return subprocess.Popen(
        [*WARMER, *args],
        env=warmer_environ(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _interrupt(process: subprocess.Popen[str]) -> str:
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group; returns
    what the process printed on stderr."""
    os.killpg(process.pid, signal.SIGINT)
    return process.communicate(timeout=60)[1]


def _wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _ends(pid: int) -> bool:
    """Whether `pid` is gone (or dead and awaiting its reaper) within a few seconds."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_during_a_job_exits_130_and_stops_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "job.pid"
    job = command_job(tmp_path, f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; sleep 60")
    process = _start(
        ["run", str(job), "--runtime", "local", "--out", str(tmp_path / "out")], tmp_path
    )
    _wait_for(pid_file, process)
    stderr = _interrupt(process)
    assert process.returncode == 130, stderr
    assert stderr.rstrip().endswith("interrupted")
    assert "Aborted!" not in stderr and "Traceback" not in stderr
    assert _ends(int(pid_file.read_text())), "the job's process outlived warmer"
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_a_save_leaves_the_store_whole(tmp_path: Path) -> None:
    """Interrupted while it writes objects: exit 130, no ref, and `verify` finds no damage."""
    cache = tmp_path / "triton"
    for index in range(400):
        kernel = cache / f"{index:052d}"
        kernel.mkdir(parents=True)
        (kernel / "k.cubin").write_bytes(os.urandom(256 << 10))
    env = {**warmer_environ(tmp_path), "TRITON_CACHE_DIR": str(cache)}
    process = subprocess.Popen(
        [*WARMER, "save", "--kinds", "triton", "--out", str(tmp_path / "out")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for(tmp_path / "store" / "store-v1" / "index.sqlite", process)
    stderr = _interrupt(process)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and "Aborted!" not in stderr
    listed = subprocess.run(
        [*WARMER, "ls", "-q"], env=env, capture_output=True, text=True, check=True
    )
    assert listed.stdout == ""
    checked = subprocess.run(
        [*WARMER, "verify", "--json"], env=env, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"], checked.stdout
    assert not (tmp_path / "out").exists()


def test_ctrl_c_at_a_prompt_exits_130_and_deletes_nothing(store_dir: Path, tmp_path: Path) -> None:
    """click turns Ctrl-C at a prompt into its own Abort ("Aborted!", exit 1)."""
    env = {**warmer_environ(tmp_path), "WARMER_STORE": str(store_dir)}
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [*WARMER, "prune", "--max-size", "0"],
            env=env,
            stdin=subprocess.PIPE,  # open, never written: the prompt waits
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while "Proceed?" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 130
    printed = log.read_text()
    assert "interrupted" in printed and "Aborted!" not in printed and "Traceback" not in printed
    listed = subprocess.run([*WARMER, "ls", "-q"], env=env, capture_output=True, text=True)
    [ref] = listed.stdout.split()
    assert ref.startswith("tiny@")
