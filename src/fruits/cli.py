"""`fruits` command line: one command per capability, options mapped onto `PipelineConfig`."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Optional

import typer

from fruits.config import (
    DEFAULT_OUTPUT,
    FeaturizerConfig,
    PipelineConfig,
    ReduceConfig,
    bundled_sample,
)

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Fruits! image pipeline on Spark.",
)  # fmt: skip


class UserError(Exception):
    """Anything we can explain in one line; the CLI prints it and exits 2."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "azure", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parse_conf(items: list[str]) -> dict[str, str]:
    conf = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--conf expects key=value, got {item!r}")
        conf[key.strip()] = value.strip()
    return conf


@app.callback()
def _root() -> None:
    """Fruits! image pipeline on Spark."""


@app.command()
def run(
    input: Annotated[
        Optional[str],
        typer.Option(
            help="Images folder: path or URI (abfss://, s3a://, dbfs:/). Default: the bundled sample."
        ),
    ] = None,
    output: Annotated[str, typer.Option(help="Output folder: path or URI.")] = DEFAULT_OUTPUT,
    master: Annotated[
        Optional[str], typer.Option(help="Spark master; default: spark-submit's, else local[*].")
    ] = None,
    on_error: Annotated[
        str, typer.Option(help="quarantine: record bad files and go on; fail: stop at the first.")
    ] = "quarantine",
    backbone: Annotated[
        str,
        typer.Option(
            help="CNN: efficientnet_lite0 (bundled weights) or mobilenet_v2 (needs --weights)."
        ),
    ] = "efficientnet_lite0",
    weights: Annotated[
        Optional[str], typer.Option(help="Weights file or URI for the backbone (state dict).")
    ] = None,
    image_size: Annotated[
        int, typer.Option(help="Model input size in pixels.")
    ] = FeaturizerConfig.image_size,
    engine: Annotated[str, typer.Option(help="auto, onnx or torch.")] = "auto",
    precision: Annotated[
        str,
        typer.Option(help="fp32 or bf16 (torch engine; falls back to fp32 without CPU support)."),
    ] = "fp32",
    batch_size: Annotated[
        int, typer.Option(help="Images per CNN batch.")
    ] = FeaturizerConfig.batch_size,
    pca_variance: Annotated[
        float, typer.Option(help="Explained-variance target that picks k.")
    ] = ReduceConfig.variance,
    pca_k: Annotated[
        Optional[int], typer.Option(help="Fixed k (overrides --pca-variance).")
    ] = None,
    classify: Annotated[
        bool, typer.Option(help="Train and evaluate the classifier when a test split exists.")
    ] = True,
    conf: Annotated[
        list[str], typer.Option("--conf", help="Extra Spark setting key=value (repeatable).")
    ] = [],  # noqa: B006
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the whole chain: ingest -> CNN features -> PCA -> classifier -> outputs."""
    _setup_logging(verbose)
    if on_error not in ("quarantine", "fail"):
        raise typer.BadParameter("--on-error must be quarantine or fail")
    cfg = PipelineConfig(
        input=input or bundled_sample(),
        output=output,
        master=master,
        on_error=on_error,  # type: ignore[arg-type]
        featurizer=FeaturizerConfig(
            backbone=backbone,
            weights=weights,
            image_size=image_size,
            engine=engine,
            precision=precision,
            batch_size=batch_size,  # type: ignore[arg-type]
        ),
        reduce=ReduceConfig(variance=pca_variance, k=pca_k),
        classify=classify,
        spark_conf=_parse_conf(conf),
    )
    result = _guard(lambda: _run(cfg))
    r = result.report
    summary = {k: r.get(k) for k in ("images_total", "images_ok", "images_quarantined", "classes",
                                     "pca_k", "pca_explained_variance", "accuracy", "images_per_second")}  # fmt: skip
    typer.echo(json.dumps(summary))
    typer.echo(f"outputs written to {result.output}")


def _run(cfg: PipelineConfig):  # noqa: ANN202
    from fruits.pipeline import run_pipeline

    return run_pipeline(cfg)


def _guard(fn):  # noqa: ANN001, ANN202
    """Known failures become one line on stderr and exit code 2, not a stack trace."""
    from fruits.ingest import InputError
    from fruits.pipeline import ImageFailure
    from fruits.spark import JavaMissingError

    try:
        return fn()
    except (InputError, ImageFailure, JavaMissingError, UserError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
