"""`warmer check SOURCE [--image IMAGE | --runtime local]`: will the bundle hit the target?"""

from __future__ import annotations

from pathlib import Path

import click

from warmer.cli.options import json_option, store_option
from warmer.cli.output import console, data_console, emit_json
from warmer.cli.registry import insecure_option


@click.command()
@click.argument("source")
@click.option("--image", help="The deployment image to probe (through --runtime).")
@click.option(
    "--runtime",
    type=click.Choice(["docker", "podman", "local"]),
    default=None,
    help="docker or podman with --image [default: docker]; local probes this machine.",
)
@click.option(
    "--backend",
    type=click.Choice(["cuda", "rocm", "cpu"]),
    default=None,
    help="Devices the probe container gets [default: the bundle's backend].",
)
@insecure_option
@store_option
@json_option
def check(
    source: str,
    image: str | None,
    runtime: str | None,
    backend: str | None,
    insecure: bool | None,
    store: Path | None,
    as_json: bool,
) -> None:
    """Predict, per cache kind, whether SOURCE's caches would hit the target, naming every
    factor of their keys that differs. SOURCE: a bundle file, REGISTRY/REPO:TAG or a store ref.

    Exit 0 when everything would hit, 4 when something would miss, 5 when SOURCE names
    nothing: a gate between building a serving image and deploying it.
    """
    from warmer.checking import check as check_source
    from warmer.errors import EnvMismatch

    result = check_source(
        source,
        image=image,
        runtime=runtime,
        backend=backend,
        store=store,
        insecure=insecure,
    )
    if as_json:
        emit_json(result.to_dict())
    else:
        console.print(f"{result.ref} against {result.target} ({result.target_env_tag}):")
        for verdict in result.kinds:
            word = "hit" if verdict.hit else "miss"
            data_console.print(f"{verdict.kind:<18} {word:<5} {verdict.files} files")
            for factor in verdict.factors:
                data_console.print(f"  {factor}")
        for warning in result.warnings:
            console.print(f"warning: {warning}")
    if not result.hit:
        missed = [v.kind for v in result.kinds if not v.hit]
        raise EnvMismatch(
            [
                f"{verdict.kind}: {factor}"
                for verdict in result.kinds
                for factor in verdict.factors
                if verdict.kind in missed
            ]
        )
