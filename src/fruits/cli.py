"""`fruits` command line: one command per capability, options mapped onto `PipelineConfig`."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Annotated, Optional, get_type_hints

import typer

from fruits.config import (
    DEFAULT_OUTPUT,
    Engine,
    FeaturizerConfig,
    OnError,
    PipelineConfig,
    Precision,
    ReduceConfig,
    bundled_sample,
)

if TYPE_CHECKING:
    from fruits.pipeline import RunResult

# Options typed with config.py's Literals: typer lists the choices and rejects others (exit 2).
Storage = get_type_hints(PipelineConfig)["storage"]

# `fruits run`'s options, declared once here so its signature reads as a list of settings.
InputOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        help="Images folder: path or URI (abfss://, s3a://, dbfs:/, /Volumes/...); repeat for several labelled sources. Default: the bundled sample."
    ),
]
NegativesOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        help="Folder of photos that show none of the classes (repeatable): trained as 'not a fruit', so the app can say 'not sure'."
    ),
]
LabelMapOpt = Annotated[
    Optional[str],
    typer.Option(
        help="JSON file mapping folder labels to the classes trained on: {folder: class} or the shared mapping_to_fruits360.json format."
    ),
]
OutputOpt = Annotated[str, typer.Option(help="Output folder: path or URI.")]
RemoteOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Spark Connect server (sc://host:port; default: $SPARK_REMOTE): the run goes"
        " through Spark Connect, as on Databricks serverless compute. Exclusive with --master."
    ),
]
MasterOpt = Annotated[
    Optional[str], typer.Option(help="Spark master; default: spark-submit's, else local[*].")
]
OnErrorOpt = Annotated[
    OnError,
    typer.Option(help="quarantine: record bad files and go on; fail: stop at the first."),
]
BackboneOpt = Annotated[
    str,
    typer.Option(
        help="CNN: efficientnet_lite0 (bundled weights) or mobilenet_v2 (needs --weights)."
    ),
]
WeightsOpt = Annotated[
    Optional[str], typer.Option(help="Weights file or URI for the backbone (state dict).")
]
ImageSizeOpt = Annotated[int, typer.Option(help="Model input size in pixels.")]
EngineOpt = Annotated[Engine, typer.Option(help="auto, onnx or torch.")]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(help="fp32 or bf16 (torch engine; falls back to fp32 without CPU support)."),
]
BatchSizeOpt = Annotated[int, typer.Option(help="Images per CNN batch.")]
PcaVarianceOpt = Annotated[float, typer.Option(help="Explained-variance target that picks k.")]
PcaKOpt = Annotated[Optional[int], typer.Option(help="Fixed k (overrides --pca-variance).")]
PcaMaxKOpt = Annotated[
    int, typer.Option(help="Upper bound of the k chosen by --pca-variance (0: none).")
]
ClassifyOpt = Annotated[
    bool, typer.Option(help="Train and evaluate the classifier when a test split exists.")
]
ConfOpt = Annotated[
    list[str], typer.Option("--conf", help="Extra Spark setting key=value (repeatable).")
]
StorageOpt = Annotated[
    Storage,
    typer.Option(
        help="auto: Spark's Hadoop connector when it has the scheme, else fsspec (adlfs); or force hadoop / fsspec."
    ),
]
IncrementalOpt = Annotated[
    bool,
    typer.Option(
        "--incremental",
        help="Process only files new or changed since the output's run (path, size, mtime); project them with its saved scaler + PCA; drop deleted files' rows and list them in report.json.",
    ),
]
RefitOpt = Annotated[
    bool,
    typer.Option(
        "--refit",
        help="Like --incremental, then refit scaler, PCA and classifier on every image (stored features are reused).",
    ),
]
VerifyContentOpt = Annotated[
    bool,
    typer.Option(
        "--verify-content",
        help="With --incremental: read every local file and compare a hash of its bytes too, so a rewrite that kept size and mtime is processed again.",
    ),
]
SingleCsvMaxRowsOpt = Annotated[
    int,
    typer.Option(
        min=0,
        help="Above this many rows pca.csv / quarantine.csv are written as a folder of CSV part files, in parallel, each with a header; 0 = always one file.",
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v")]

SUMMARY_KEYS = (  # what `fruits run` prints of its report, as one JSON line
    "images_total",
    "images_processed",
    "images_ok",
    "images_quarantined",
    "classes",
    "pca_k",
    "pca_explained_variance",
    "accuracy",
    "images_per_second",
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fruits! image pipeline on Spark.",
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "azure", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from fruits.azure import install_log_redaction

    install_log_redaction()  # storage keys and SAS tokens never reach the log


def _parse_conf(items: list[str]) -> dict[str, str]:
    conf = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--conf expects key=value, got {item!r}")
        conf[key.strip()] = value.strip()
    return conf


def _print_version(value: bool) -> None:
    if value:
        from fruits import __version__

        typer.echo(f"fruits {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    """Fruits! image pipeline on Spark."""


@app.command()
def run(
    input: InputOpt = None,
    negatives: NegativesOpt = None,
    label_map: LabelMapOpt = None,
    output: OutputOpt = DEFAULT_OUTPUT,
    master: MasterOpt = None,
    remote: RemoteOpt = None,
    on_error: OnErrorOpt = "quarantine",
    backbone: BackboneOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    image_size: ImageSizeOpt = FeaturizerConfig.image_size,
    engine: EngineOpt = "auto",
    precision: PrecisionOpt = "fp32",
    batch_size: BatchSizeOpt = FeaturizerConfig.batch_size,
    pca_variance: PcaVarianceOpt = ReduceConfig.variance,
    pca_k: PcaKOpt = None,
    pca_max_k: PcaMaxKOpt = ReduceConfig.max_k or 0,
    classify: ClassifyOpt = True,
    conf: ConfOpt = [],  # noqa: B006
    storage: StorageOpt = "auto",
    incremental: IncrementalOpt = False,
    refit: RefitOpt = False,
    verify_content: VerifyContentOpt = False,
    single_csv_max_rows: SingleCsvMaxRowsOpt = PipelineConfig.single_csv_max_rows,
    verbose: VerboseOpt = False,
) -> None:
    """Run the whole chain: ingest -> CNN features -> PCA -> classifier -> outputs."""
    _setup_logging(verbose)
    sources = list(input or [bundled_sample()])
    cfg = PipelineConfig(
        input=sources[0],
        extra_inputs=tuple(sources[1:]),
        negatives=tuple(negatives or ()),
        label_map=label_map,
        output=output,
        master=master,
        remote=remote,
        on_error=on_error,  # type: ignore[arg-type]
        featurizer=FeaturizerConfig(
            backbone=backbone,
            weights=weights,
            image_size=image_size,
            engine=engine,
            precision=precision,
            batch_size=batch_size,  # type: ignore[arg-type]
        ),
        reduce=ReduceConfig(variance=pca_variance, k=pca_k, max_k=pca_max_k or None),
        classify=classify,
        spark_conf=_parse_conf(conf),
        incremental=incremental or refit,
        refit=refit,
        verify_content=verify_content,
        storage=storage,  # type: ignore[arg-type]
        single_csv_max_rows=single_csv_max_rows,
    )
    _print_summary(_guard(lambda: _run(cfg)))


def _print_summary(result: RunResult) -> None:
    """The run's headline numbers as one JSON line, then where its outputs are."""
    r = result.report
    typer.echo(json.dumps({k: r.get(k) for k in SUMMARY_KEYS}))
    if r.get("published", True):
        typer.echo(f"outputs written to {result.output}")
    else:
        typer.echo(f"nothing new: {result.output} left as it was")


def _run(cfg: PipelineConfig):  # noqa: ANN202
    from fruits.pipeline import run_pipeline

    return run_pipeline(cfg)


@app.command(name="refit")
def refit_command(
    output: Annotated[
        str, typer.Option(help="Output folder of an earlier `fruits run`.")
    ] = DEFAULT_OUTPUT,
    input: Annotated[
        Optional[str], typer.Option(help="Images folder of that run. Default: the bundled sample.")
    ] = None,
    master: Annotated[Optional[str], typer.Option(help="Spark master.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Refit scaler, PCA and classifier on every image of an output, reusing its stored
    features (new or changed files are featurised first). `fruits run --refit` takes every
    other run option."""
    run(input=[input] if input else None, output=output, master=master, refit=True, verbose=verbose)


@app.command()
def evaluate(
    run: Annotated[str, typer.Option(help="Output folder of `fruits run` (local path).")],
    input: Annotated[
        list[str],
        typer.Option(help="Folder of labelled photos (class = parent folder); repeatable."),
    ],
    label_map: Annotated[
        Optional[str], typer.Option(help="JSON mapping folder labels to classes (as in `run`).")
    ] = None,
    negatives: Annotated[
        Optional[list[str]], typer.Option(help="Folder of photos that are none of the classes.")
    ] = None,
    plot: Annotated[
        Optional[str], typer.Option(help="Where to write the confusion plot (PNG).")
    ] = None,
) -> None:
    """Score a run on photos it never saw, as the app answers them: JSON with species_top1,
    variety_top1, species_top5, refused_negatives, refused_positives, ece, per-species recall
    and the 20 most confused pairs."""
    _setup_logging(False)
    from fruits.evaluate import evaluate_run
    from fruits.predictor import ServingError
    from fruits.recognition import LabelMapError

    try:
        result = evaluate_run(run, input, label_map=label_map, negatives=negatives, plot=plot)
    except (ServingError, LabelMapError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2))


@app.command()
def serve(
    run: Annotated[
        str,
        typer.Option(
            help="Output folder of `fruits run` (local path), or a model logged to MLflow"
            " (models:/name/1, runs:/<id>/model)."
        ),
    ] = DEFAULT_OUTPUT,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_mb: Annotated[float, typer.Option(help="Upload size limit in MB.")] = 10.0,
    threads: Annotated[int, typer.Option(help="CNN threads; 0 = every core.")] = 0,
    max_batch: Annotated[
        int, typer.Option(help="Concurrent requests share CNN calls up to this many; 1 = off.")
    ] = 1,
) -> None:
    """Serve a run's model: web page at /, API at /v1/predict, docs at /docs."""
    _setup_logging(False)
    try:
        from fruits.api import ServeSettings
        from fruits.api import serve as start
    except ImportError as exc:
        typer.echo(f"error: {exc.name} is missing: pip install 'fruits[serve]'", err=True)
        raise typer.Exit(2) from None
    from fruits.chain import MODEL_URI_SCHEMES
    from fruits.predictor import ServingError, check_run

    if run.startswith(MODEL_URI_SCHEMES):
        try:
            from fruits.chain import run_folder

            run = str(run_folder(run))
        except Exception as exc:  # mlflow missing, unknown model, no tracking server
            from fruits.azure import redact

            typer.echo(f"error: cannot fetch {run} from MLflow: {_one_line(redact(exc))}", err=True)
            raise typer.Exit(2) from None
    settings = ServeSettings(
        run=run, max_bytes=int(max_mb * 1024 * 1024), threads=threads, max_batch=max_batch
    )
    try:
        check_run(run)  # fail here with one line, not inside uvicorn's start-up
    except (ServingError, OSError, ValueError, KeyError) as exc:
        typer.echo(f"error: cannot serve {run}: {exc}", err=True)
        raise typer.Exit(2) from None
    start(settings, host=host, port=port)


def _guard(fn):  # noqa: ANN001, ANN202
    """Known failures become one line on stderr and exit code 2, not a stack trace."""
    from fruits.features import ImageFailure
    from fruits.ingest import InputError
    from fruits.spark import JavaMissingError

    try:
        return fn()
    except (InputError, ImageFailure, JavaMissingError, ValueError, OSError) as exc:
        from fruits.azure import redact

        typer.echo(f"error: {_one_line(redact(exc))}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # never a raw (possibly secret-bearing) traceback
        from fruits.azure import redact, redact_traceback

        logging.getLogger("fruits").debug("%s", redact_traceback(exc))
        typer.echo(
            f"error: {type(exc).__name__}: {_one_line(redact(exc))} (-v shows the traceback)",
            err=True,
        )
        raise typer.Exit(1) from None


def _one_line(text: str) -> str:
    """The first line of a message: Java traces stay out of the user's terminal."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


@app.command()
def upload(
    source: Annotated[str, typer.Argument(help="Local folder (or file) to copy.")],
    destination: Annotated[
        str,
        typer.Argument(
            help="abfss://container@account.dfs.core.windows.net/path, az://container/path or https://account.blob.core.windows.net/container/path"
        ),
    ],
    workers: Annotated[int, typer.Option(help="Files copied in parallel.")] = 8,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be copied; copy nothing.")
    ] = False,
    create_container: Annotated[
        bool, typer.Option("--create-container", help="Create the container if it does not exist.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
    verbose: VerboseOpt = False,
) -> None:
    """Copy local images to Azure Storage (like AzCopy): parallel, skips files already there
    with the same size and MD5, so re-running resumes and a second run copies nothing."""
    _setup_logging(verbose)
    from fruits.transfer import upload as do_upload

    summary = _guard(
        lambda: do_upload(
            source,
            destination,
            workers=workers,
            dry_run=dry_run,
            progress=progress,
            create_container=create_container,
        )
    )
    _finish_transfer(summary)


@app.command()
def download(
    source: Annotated[
        str,
        typer.Argument(help="Azure folder (any URI form `upload` accepts), e.g. a run's output."),
    ],
    destination: Annotated[str, typer.Argument(help="Local folder.")],
    workers: Annotated[int, typer.Option(help="Files copied in parallel.")] = 8,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be copied; copy nothing.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
    verbose: VerboseOpt = False,
) -> None:
    """Copy results from Azure Storage to a local folder; files already there with the same
    size and MD5 are skipped."""
    _setup_logging(verbose)
    from fruits.transfer import download as do_download

    summary = _guard(
        lambda: do_download(
            source,
            destination,
            workers=workers,
            dry_run=dry_run,
            progress=progress,
        )
    )
    _finish_transfer(summary)


def _finish_transfer(summary) -> None:  # noqa: ANN001
    """Print the summary; any failed file makes the exit code 1."""
    for line in summary.lines():
        typer.echo(line, err=line.startswith("FAILED"))
    if not summary.ok:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
