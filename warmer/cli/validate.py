"""`warmer validate JOB.yaml…`: check job specs without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from warmer.cli.output import console, emit_json
from warmer.errors import UsageError


def _check(path: Path) -> dict[str, Any]:
    """One file's verdict: its job names, or every problem with its field path."""
    from warmer.spec import InvalidSpec, load_jobs  # pydantic stays out of `warmer --help`

    try:
        jobs = load_jobs(path)
    except InvalidSpec as exc:
        errors = [{"field": p.field, "message": p.message} for p in exc.problems]
        return {"file": str(path), "ok": False, "errors": errors}
    except UsageError as exc:
        return {"file": str(path), "ok": False, "errors": [{"field": "", "message": str(exc)}]}
    return {"file": str(path), "ok": True, "jobs": [job.name for job in jobs]}


def _report(result: dict[str, Any]) -> None:
    if result["ok"]:
        names = result["jobs"]
        count = f"{len(names)} job" + ("" if len(names) == 1 else "s")
        console.print(f"ok  {result['file']}: {count} ({', '.join(names)})", soft_wrap=True)
        return
    errors = result["errors"]
    count = f"{len(errors)} problem" + ("" if len(errors) == 1 else "s")
    console.print(f"bad {result['file']}: {count}", soft_wrap=True)
    for error in errors:
        where = f"{error['field']}: " if error["field"] else ""
        console.print(f"    {where}{error['message']}", soft_wrap=True)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def validate(files: tuple[Path, ...], as_json: bool) -> None:
    """Check job spec files; list every problem with its field path.

    Every file is checked; the exit status is 2 if any of them is invalid.
    """
    results = [_check(path) for path in files]
    if as_json:
        emit_json({"files": results})
    else:
        for result in results:
            _report(result)
    bad = sum(not result["ok"] for result in results)
    if bad:
        raise UsageError(f"{bad} of {len(results)} file(s) invalid")
