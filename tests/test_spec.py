"""Job specs: the example jobs, every accepted form, and every kind of error with its field path."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from warmer.cli import cli
from warmer.errors import SpecError, UsageError
from warmer.spec import InvalidSpec, Job, Problem, job_from_dict, load_jobs

JOBS = Path(__file__).parent.parent / "jobs"

TORCH_JOB: dict[str, Any] = {
    "name": "t",
    "engine": {"kind": "torch-compile", "model": "pkg.mod:factory"},
    "warmup": {"inputs": [{"shape": [1, 4]}]},
}
VLLM_JOB: dict[str, Any] = {"name": "v", "engine": {"kind": "vllm", "model": "org/model"}}


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def changed(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`base` with top-level fields replaced, or one level deeper for `engine`/`warmup` dicts."""
    result = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            value = {**result[key], **value}
        result[key] = value
    return result


def problems_in(path: Path) -> list[Problem]:
    with pytest.raises(InvalidSpec) as caught:
        load_jobs(path)
    return list(caught.value.problems)


def only_problem(tmp_path: Path, job: dict[str, Any]) -> Problem:
    problems = problems_in(write(tmp_path, yaml.safe_dump(job)))
    assert len(problems) == 1, problems
    return problems[0]


# --- the example jobs --------------------------------------------------------------------


def test_tiny_cpu_example() -> None:
    (job,) = load_jobs(JOBS / "tiny-cpu.yaml")
    assert job.name == "tiny-cpu"
    assert job.image == "warmer-cpu:py3.11-torch2.13.0"
    assert job.backend == "cpu"
    assert job.engine.kind == "torch-compile"
    assert job.engine.model == "warmer.agent.examples:tiny_transformer"
    assert job.engine.args == {"layers": 4, "dim": 256, "heads": 4}
    assert job.engine.compile.mode == "default"
    assert [i.shape for i in job.warmup.inputs] == [(1, 32, 256), (4, 64, 256), (8, 128, 256)]
    assert {i.dtype for i in job.warmup.inputs} == {"float32"}
    assert job.timeout == 1200.0
    assert job.network == "none"


def test_llama_example() -> None:
    (job,) = load_jobs(JOBS / "llama.yaml")
    assert (job.backend, job.engine.kind, job.image) == ("cuda", "vllm", "vllm/vllm-openai:v0.32.0")
    assert job.engine.args["max_num_seqs"] == max(job.warmup.batch_sizes)
    assert job.secrets == ["HF_TOKEN"]
    assert job.volumes == ["/models:/models:ro"]
    assert job.env == {"HF_HOME": "/models"}
    assert job.warmup.prompt_lengths == [16, 512, 4096]
    assert job.warmup.batch_sizes == [1, 8, 32]
    assert job.timeout == 1800.0


def test_vllm_cpu_examples_differ_only_in_mode_and_name() -> None:
    (offline,) = load_jobs(JOBS / "vllm-cpu.yaml")
    (serve,) = load_jobs(JOBS / "vllm-cpu-serve.yaml")
    assert (offline.engine.mode, serve.engine.mode) == ("offline", "serve")
    assert offline.image == serve.image == "warmer-vllm-cpu:vllm0.32.0-torch2.13.0"
    assert offline.env == serve.env == {"VLLM_USE_AOT_COMPILE": "0"}
    assert offline.engine.args == serve.engine.args
    assert offline.engine.args["kv_cache_memory_bytes"] > 0
    assert offline.warmup == serve.warmup


def test_matrix_example() -> None:
    jobs = load_jobs(JOBS / "matrix-example.yaml")
    assert [job.name for job in jobs] == ["tiny-d128", "tiny-d256", "tiny-max-autotune"]
    assert jobs[1].engine.args["dim"] == 256
    assert jobs[1].warmup.inputs[0].shape == (1, 32, 256)
    assert {job.image for job in jobs} == {"warmer-cpu:py3.11-torch2.13.0"}


# --- valid files -------------------------------------------------------------------------


def test_single_job_defaults(tmp_path: Path) -> None:
    (job,) = load_jobs(write(tmp_path, yaml.safe_dump(TORCH_JOB)))
    assert job.version == 1
    assert (job.backend, job.gpus, job.network, job.caches) == ("cpu", "all", "none", None)
    assert job.timeout == 1800.0
    assert job.warmup.batch_sizes == [1]
    assert job.warmup.inputs[0].dtype == "float32"
    assert (job.engine.compile.backend, job.engine.compile.fullgraph) == ("inductor", False)


def test_jobs_list_with_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        defaults:
          image: img:1
          env: {A: "1", B: "2"}
          engine: {kind: vllm, args: {dtype: bfloat16}}
        jobs:
          - {name: one, engine: {model: org/one}}
          - name: two
            image: img:2
            env: {B: "3"}
            engine: {model: org/two, args: {max_model_len: 4096}}
        """,
    )
    one, two = load_jobs(path)
    assert (one.image, one.env, one.engine.args) == (
        "img:1",
        {"A": "1", "B": "2"},
        {"dtype": "bfloat16"},
    )
    assert (two.image, two.env) == ("img:2", {"A": "1", "B": "3"})
    assert two.engine.args == {"dtype": "bfloat16", "max_model_len": 4096}


def test_matrix_expands_the_cartesian_product(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: m-${dim}-${dtype}
        matrix: {dim: [64, 128], dtype: [float32, bfloat16]}
        engine:
          kind: torch-compile
          model: pkg.mod:factory
          args: {dim: "${dim}", label: "d=${dim}"}
        warmup: {inputs: [{shape: [2, "${dim}"], dtype: "${dtype}"}]}
        env: {SHELL_VAR: "${HOME}"}
        """,
    )
    jobs = load_jobs(path)
    assert [job.name for job in jobs] == [
        "m-64-float32",
        "m-64-bfloat16",
        "m-128-float32",
        "m-128-bfloat16",
    ]
    last = jobs[-1]
    assert last.engine.args == {"dim": 128, "label": "d=128"}
    assert (last.warmup.inputs[0].shape, last.warmup.inputs[0].dtype) == ((2, 128), "bfloat16")
    assert last.env == {"SHELL_VAR": "${HOME}"}  # not a matrix key: left for the shell


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [("all", "all"), (2, 2), ("0,1", [0, 1]), (" 3 ", [3]), ([0, 2], [0, 2])],
)
def test_gpus_forms(tmp_path: Path, gpus: Any, expected: Any) -> None:
    (job,) = load_jobs(write(tmp_path, yaml.safe_dump(changed(VLLM_JOB, gpus=gpus))))
    assert job.gpus == expected


def test_yaml_scalars_keep_what_was_written(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: v
        engine: {kind: vllm, model: org/model}
        env: {PORT: 8000, RATIO: 0.5, DEBUG: true, COUNTRY: NO, MODE: 0755, WHEN: 2024-01-02}
        user: 1000
        shm_size: 8G
        """,
    )
    (job,) = load_jobs(path)
    assert job.env == {
        "PORT": "8000",
        "RATIO": "0.5",
        "DEBUG": "true",
        "COUNTRY": "NO",
        "MODE": "0755",
        "WHEN": "2024-01-02",
    }
    assert (job.user, job.shm_size) == ("1000", "8G")


@pytest.mark.parametrize(
    ("timeout", "seconds"), [("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("500ms", 0.5)]
)
def test_timeout_forms(tmp_path: Path, timeout: Any, seconds: float) -> None:
    (job,) = load_jobs(write(tmp_path, yaml.safe_dump(changed(VLLM_JOB, timeout=timeout))))
    assert job.timeout == seconds


@pytest.mark.parametrize("timeout", ["20", "timeout: 20", "timeout: 2.5", "timeout: '20'"])
def test_a_timeout_without_a_unit_is_refused(tmp_path: Path, timeout: str) -> None:
    """`timeout: 20` meant 20 seconds: every duration carries its unit."""
    line = timeout if ":" in timeout else f"timeout: '{timeout}'"
    path = write(tmp_path, f"name: v\nengine: {{kind: vllm, model: org/m}}\n{line}\n")
    problems = problems_in(path)
    assert [p.field for p in problems] == ["timeout"]
    number = line.split(":")[1].strip().strip("'")
    assert f"{number} has no unit: write {number}s, {number}m" in problems[0].message


def test_command_string_is_split_like_a_shell(tmp_path: Path) -> None:
    job = changed(
        TORCH_JOB, engine={"kind": "command", "command": "python -c 'print(1)'", "model": None}
    )
    del job["warmup"]
    (loaded,) = load_jobs(write(tmp_path, yaml.safe_dump(job)))
    assert loaded.engine.command == ["python", "-c", "print(1)"]


def test_manifest_round_trips_and_holds_secret_names_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    (job,) = load_jobs(JOBS / "llama.yaml")
    manifest = job.to_manifest()
    text = json.dumps(manifest)
    assert "hf_secret_value" not in text
    assert manifest["secrets"] == ["HF_TOKEN"]
    assert Job.from_manifest(json.loads(text)) == job
    (tiny,) = load_jobs(JOBS / "tiny-cpu.yaml")
    assert Job.from_manifest(json.loads(json.dumps(tiny.to_manifest()))) == tiny


def test_only_keeps_one_job(tmp_path: Path) -> None:
    path = JOBS / "matrix-example.yaml"
    assert [job.name for job in load_jobs(path, only="tiny-d256")] == ["tiny-d256"]
    with pytest.raises(
        UsageError, match=r"no job named 'nope'; the file has: tiny-d128, tiny-d256"
    ):
        load_jobs(path, only="nope")


def test_jobs_are_frozen() -> None:
    job = job_from_dict(TORCH_JOB)
    with pytest.raises(ValueError, match="frozen"):
        job.name = "other"


# --- errors, each with its exact field path ----------------------------------------------


@pytest.mark.parametrize(
    ("job", "field", "message"),
    [
        (
            changed(TORCH_JOB, warmup={"inputs": [{"shape": [1], "shap": [2]}]}),
            "warmup.inputs[0].shap",
            "unknown field (did you mean 'shape'?)",
        ),
        (changed(TORCH_JOB, colour="red"), "colour", "unknown field (known: version, name,"),
        (changed(TORCH_JOB, warmup={"repeat": "twice"}), "warmup.repeat", "valid integer"),
        (changed(TORCH_JOB, warmup={"repeat": True}), "warmup.repeat", "valid integer"),
        (changed(TORCH_JOB, engine={"kind": "onnx"}), "engine.kind", "'torch-compile', 'vllm' or"),
        (changed(TORCH_JOB, backend="metal"), "backend", "'cuda', 'rocm' or 'cpu'"),
        (changed(TORCH_JOB, timeout="soon"), "timeout", "not a duration: 'soon'"),
        (changed(TORCH_JOB, timeout="0s"), "timeout", "must be positive"),
        (changed(TORCH_JOB, gpus=0), "gpus", "a GPU count must be at least 1"),
        (changed(TORCH_JOB, gpus="a,b"), "gpus", "is not 'all', a count or device ids"),
        (changed(TORCH_JOB, gpus=[0, 0]), "gpus", "device ids repeat"),
        (changed(TORCH_JOB, gpus=[-1]), "gpus", "integers >= 0"),
        (changed(TORCH_JOB, gpus=True), "gpus", "is not 'all', a count or a list"),
        (changed(TORCH_JOB, name="has space"), "name", "is not a job name"),
        (changed(TORCH_JOB, name="x" * 65), "name", "is not a job name"),
        (
            changed(TORCH_JOB, secrets=["HF-TOKEN"]),
            "secrets[0]",
            "not a valid environment variable",
        ),
        (changed(TORCH_JOB, secrets=["A", "A"]), "secrets", "secret names repeat"),
        (
            changed(TORCH_JOB, secrets=["A", "B"], env={"B": "x"}),
            "secrets[1]",
            "B is also set in env",
        ),
        (changed(TORCH_JOB, env={"1X": "v"}), 'env["1X"]', "not a valid environment variable"),
        (changed(TORCH_JOB, env={"A": None}), "env.A", "no value"),
        (changed(TORCH_JOB, warmup={"inputs": []}), "warmup.inputs", "needs at least one input"),
        (
            changed(TORCH_JOB, warmup={"inputs": [{"shape": [2], "low": 1, "high": 1}]}),
            "warmup.inputs[0].high",
            "must be greater than low (1)",
        ),
        (
            changed(TORCH_JOB, warmup={"inputs": [{"shape": []}]}),
            "warmup.inputs[0].shape",
            "at least 1",
        ),
        (
            changed(TORCH_JOB, warmup={"inputs": [{"shape": [1]}], "prompts": ["hi"]}),
            "warmup.prompts",
            "only for engine kind vllm",
        ),
        (
            changed(TORCH_JOB, engine={"model": "just_a_name"}),
            "engine.model",
            "package.module:factory",
        ),
        (changed(VLLM_JOB, engine={"model": None}), "engine.model", "required for kind vllm"),
        (
            changed(VLLM_JOB, engine={"compile": {"mode": "max-autotune"}}),
            "engine.compile",
            "only for kind torch-compile",
        ),
        (changed(VLLM_JOB, engine={"command": ["x"]}), "engine.command", "only for kind command"),
        (
            changed(VLLM_JOB, warmup={"inputs": [{"shape": [1]}]}),
            "warmup.inputs",
            "only for engine kind torch-compile",
        ),
        (
            {"name": "c", "engine": {"kind": "command"}},
            "engine.command",
            "required for kind command",
        ),
        (
            changed(VLLM_JOB, engine={"command": "echo 'open"}),
            "engine.command",
            "No closing quotation",
        ),
        (
            changed(VLLM_JOB, volumes=["/m:models"]),
            "volumes[0]",
            "container side 'models' must be an absolute",
        ),
        (
            changed(VLLM_JOB, volumes=["rel/dir:/m"]),
            "volumes[0]",
            "absolute path or a named volume",
        ),
        (changed(VLLM_JOB, volumes=["/m:/m:rx"]), "volumes[0]", "mode 'rx' must be ro or rw"),
        (changed(VLLM_JOB, shm_size="lots"), "shm_size", "not a size: 'lots'"),
        (
            changed(VLLM_JOB, caches=["triton", "ptx"]),
            "caches",
            "unknown cache kind(s) ptx; known: triton,",
        ),
        (changed(VLLM_JOB, workdir="work"), "workdir", "must be an absolute path"),
        (changed(VLLM_JOB, version=2), "version", "Input should be 1"),
        (
            changed(VLLM_JOB, warmup={"batch_sizes": [1, 0]}),
            "warmup.batch_sizes[1]",
            "greater than or equal to 1",
        ),
    ],
)
def test_each_error_names_its_field(
    tmp_path: Path, job: dict[str, Any], field: str, message: str
) -> None:
    problem = only_problem(tmp_path, job)
    assert problem.field == field
    assert message in problem.message


def test_every_problem_is_listed_with_jobs_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        jobs:
          - name: ok
            engine: {kind: vllm, model: org/m}
          - name: bad
            engine: {kind: vllm, model: org/m}
            warmup: {batch_sizes: [0], max_tokens: "x"}
            timeout: never
        """,
    )
    with pytest.raises(InvalidSpec) as caught:
        load_jobs(path)
    error = caught.value
    assert isinstance(error, SpecError)
    fields = [p.field for p in error.problems]
    assert fields == [
        "jobs[1].warmup.batch_sizes[0]",
        "jobs[1].warmup.max_tokens",
        "jobs[1].timeout",
    ]
    assert error.field == "jobs[1].warmup.batch_sizes[0]"
    assert error.exit_code == 2
    lines = str(error).splitlines()
    assert lines[0] == f"{path}: 3 problems"
    assert lines[3].startswith("  jobs[1].timeout: not a duration")


def test_single_problem_message_names_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(changed(VLLM_JOB, gpus=0)))
    with pytest.raises(InvalidSpec, match=r"job\.yaml: gpus: a GPU count must be at least 1"):
        load_jobs(path)


def test_duplicate_names_across_jobs(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump({"jobs": [VLLM_JOB, VLLM_JOB]}))
    assert problems_in(path) == [Problem("jobs[1].name", "duplicate job name 'v' (also jobs[0])")]


def test_matrix_duplicate_names(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump({**VLLM_JOB, "matrix": {"dim": [1, 2]}}))
    (problem,) = problems_in(path)
    assert problem.field == "matrix"
    assert "expands to the same job name more than once (v)" in problem.message


@pytest.mark.parametrize(
    ("matrix", "field", "message"),
    [
        ({"dim": 128}, "jobs[0].matrix.dim", "non-empty list"),
        ({"dim": [[1]]}, "jobs[0].matrix.dim", "values must be scalars"),
        ({"bad-key": [1]}, "jobs[0].matrix.bad-key", "identifier"),
        ([1, 2], "jobs[0].matrix", "non-empty mapping"),
    ],
)
def test_matrix_shape_errors(tmp_path: Path, matrix: Any, field: str, message: str) -> None:
    path = write(tmp_path, yaml.safe_dump({"jobs": [{**VLLM_JOB, "matrix": matrix}]}))
    (problem,) = problems_in(path)
    assert (problem.field, message in problem.message) == (field, True)


def test_matrix_problem_of_some_values_names_them(tmp_path: Path) -> None:
    job = changed(
        TORCH_JOB, name="t-${n}", matrix={"n": [0, 3]}, warmup={"inputs": [{"shape": ["${n}"]}]}
    )
    (problem,) = problems_in(write(tmp_path, yaml.safe_dump(job)))
    assert problem.field == "warmup.inputs[0].shape[0]"
    assert problem.message.endswith("(matrix n=0)")


def test_defaults_and_top_level_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 3
        extra: 1
        defaults: {imagee: x, name: d}
        jobs:
          - name: v
            engine: {kind: vllm, model: org/m}
          - just-a-string
        """,
    )
    assert problems_in(path) == [
        Problem(
            "extra",
            "unknown field (beside jobs: only version and defaults; job fields go in each job)",
        ),
        Problem("version", "3 is not a spec version this warmer reads (1)"),
        Problem("defaults.imagee", "unknown field (did you mean 'image'?)"),
        Problem("defaults.name", "each job names itself"),
        Problem("jobs[1]", "must be a job (a mapping with name)"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a\nengine: {kind: vllm\n", "invalid YAML at line 3, column 1"),
        (
            "name: a\n  engine: x\n",
            "invalid YAML at line 2, column 9: mapping values are not allowed",
        ),
        (
            "name: a\nengine: {kind: vllm}\nname: b\n",
            "invalid YAML at line 3, column 1: duplicate key 'name'",
        ),
        ("", "the file holds no job"),
        ("- name: a\n", "the top level must be a job"),
        (b"name: \xff\n", "not UTF-8 text"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str | bytes, message: str) -> None:
    path = tmp_path / "job.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    (problem,) = problems_in(path)
    assert problem.field == ""
    assert problem.message.startswith(message)


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="job file not found"):
        load_jobs(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="not a job file"):
        load_jobs(tmp_path)


def test_job_from_dict_prefixes_paths() -> None:
    with pytest.raises(InvalidSpec) as caught:
        job_from_dict(changed(VLLM_JOB, gpus=0, timeout="x"), file="run.json", prefix="job")
    assert [p.field for p in caught.value.problems] == ["job.gpus", "job.timeout"]
    assert caught.value.file == "run.json"


# --- the validate command ----------------------------------------------------------------


def test_validate_ok() -> None:
    result = CliRunner().invoke(
        cli, ["validate", str(JOBS / "tiny-cpu.yaml"), str(JOBS / "llama.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"ok  {JOBS / 'tiny-cpu.yaml'}: 1 job (tiny-cpu)" in result.stderr
    assert f"ok  {JOBS / 'llama.yaml'}: 1 job (llama-3.1-8b)" in result.stderr


def test_validate_checks_every_file_and_exits_2(tmp_path: Path) -> None:
    bad = write(tmp_path, yaml.safe_dump(changed(VLLM_JOB, gpus=0, timeout="x")), "bad.yaml")
    good = JOBS / "tiny-cpu.yaml"
    result = CliRunner().invoke(
        cli, ["validate", str(bad), str(tmp_path / "missing.yaml"), str(good)]
    )
    assert result.exit_code == 2
    assert f"bad {bad}: 2 problems" in result.stderr
    assert "    gpus: a GPU count must be at least 1" in result.stderr
    assert "job file not found" in result.stderr
    assert f"ok  {good}: 1 job (tiny-cpu)" in result.stderr


def test_validate_json(tmp_path: Path) -> None:
    bad = write(tmp_path, yaml.safe_dump(changed(VLLM_JOB, gpus=0)), "bad.yaml")
    good = JOBS / "matrix-example.yaml"
    result = CliRunner().invoke(cli, ["validate", "--json", str(good), str(bad)])
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {
        "files": [
            {
                "file": str(good),
                "ok": True,
                "jobs": ["tiny-d128", "tiny-d256", "tiny-max-autotune"],
            },
            {
                "file": str(bad),
                "ok": False,
                "errors": [
                    {
                        "field": "gpus",
                        "message": "a GPU count must be at least 1 (device ids go in a list: [0])",
                    }
                ],
            },
        ]
    }
    ok = CliRunner().invoke(cli, ["validate", "--json", str(good)])
    assert ok.exit_code == 0
    assert json.loads(ok.stdout)["files"][0]["ok"] is True
