"""`warmer k8s JOB_FILE`: print a Kubernetes ConfigMap + Job per warm job (see warmer/k8s.py)."""

from __future__ import annotations

from pathlib import Path

import click

from warmer.cli.options import current_settings


@click.command()
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--job", "only", metavar="NAME", help="Only the job with this name.")
@click.option(
    "--registry",
    metavar="REGISTRY/PREFIX",
    default=None,
    help="Where the pod pushes [default: $WARMER_REGISTRY or registry.url in the config].",
)
@click.option(
    "--warmer-image",
    required=True,
    metavar="IMAGE",
    help="An image with warmer installed: its init container delivers the agent.",
)
@click.option(
    "--push-image",
    metavar="IMAGE",
    default=None,
    help="The image that saves and pushes (warmer installed, the job's environment) "
    "[default: the job's image].",
)
@click.option("--namespace", default=None, help="The namespace of the objects.")
@click.option(
    "--node-selector",
    "selectors",
    metavar="KEY=VALUE",
    multiple=True,
    help="Run on nodes with this label (repeatable), e.g. nvidia.com/gpu.product=H100.",
)
@click.option(
    "--registry-secret",
    metavar="SECRET",
    default=None,
    help="A kubernetes.io/dockerconfigjson Secret with the registry's credentials.",
)
def k8s(
    job_file: Path,
    only: str | None,
    registry: str | None,
    warmer_image: str,
    push_image: str | None,
    namespace: str | None,
    selectors: tuple[str, ...],
    registry_secret: str | None,
) -> None:
    """Print a Kubernetes ConfigMap and Job for each job of JOB_FILE (YAML, for kubectl apply)."""
    import yaml

    from warmer.errors import UsageError
    from warmer.k8s import manifests
    from warmer.oci import Reference
    from warmer.spec import load_jobs, require_images

    target = registry or current_settings().registry
    if not target:
        raise UsageError("warmer k8s needs a registry: --registry, WARMER_REGISTRY or registry.url")
    Reference.parse(target)
    labels = {}
    for item in selectors:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--node-selector {item!r}: give KEY=VALUE")
        labels[key] = value
    jobs = load_jobs(job_file, only=only)
    require_images(jobs, "docker", job_file)
    documents = [
        document
        for job in jobs
        for document in manifests(
            job,
            registry=target,
            warmer_image=warmer_image,
            push_image=push_image,
            namespace=namespace,
            node_selector=labels,
            registry_secret=registry_secret,
        )
    ]
    click.echo(yaml.safe_dump_all(documents, sort_keys=False), nl=False)
