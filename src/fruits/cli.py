"""`fruits` command line: one command per capability, options mapped onto `PipelineConfig`."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional, TypeVar, get_type_hints

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from fruits.config import (
    DEFAULT_OUTPUT,
    Augment,
    Engine,
    FeaturizerConfig,
    OnError,
    PipelineConfig,
    Precision,
    ReduceConfig,
    bundled_negatives,
    bundled_sample,
)

if TYPE_CHECKING:
    from fruits.pipeline import RunResult
    from fruits.transfer import TransferSummary

T = TypeVar("T")  # what a `_guard`ed call returns

# Options typed with config.py's Literals: typer lists the choices and rejects others (exit 2).
Storage: Any = get_type_hints(PipelineConfig)["storage"]

# `fruits run`'s options, declared once here so its signature reads as a list of settings.
InputOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        help="Images folder, path or URI (repeatable). Default: the bundled sample "
        "(with its bundled negatives).",
        metavar="DIR",
    ),
]
NegativesOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        help="Folder of photos of none of the classes (repeatable): 'not a fruit'.",
        metavar="DIR",
    ),
]
LabelMapOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        help="JSON file mapping folder labels to classes ({folder: class}); repeatable "
        "(maps merged).",
        metavar="FILE",
    ),
]
OutputOpt = Annotated[str, typer.Option(help="Output folder: path or URI.", metavar="DIR")]
RemoteOpt = Annotated[
    Optional[str],
    typer.Option(help="Spark Connect server sc://host:port (default: $SPARK_REMOTE)."),
]
MasterOpt = Annotated[
    Optional[str],
    typer.Option(help="Spark master; default: spark-submit's, else local[*].", metavar="URL"),
]
OnErrorOpt = Annotated[
    OnError,
    typer.Option(help="Bad files: quarantine (record, go on) or fail."),
]
BackboneOpt = Annotated[
    str,
    typer.Option(
        help="CNN: efficientnet_lite0 (bundled) or mobilenet_v2 (needs --weights).",
        metavar="NAME",
    ),
]
WeightsOpt = Annotated[
    Optional[str], typer.Option(help="Backbone weights file or URI.", metavar="PATH")
]
ImageSizeOpt = Annotated[int, typer.Option(help="Model input size in pixels.", metavar="PX")]
EngineOpt = Annotated[Engine, typer.Option(help="auto, onnx or torch.")]
AugmentOpt = Annotated[
    Augment,
    typer.Option(
        help="Studio frames on backgrounds cut from --negatives, and those backgrounds alone, "
        "for the classifier: on, off, or auto (with 2+ --input and --negatives)."
    ),
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(help="fp32 or bf16 (torch engine only)."),
]
BatchSizeOpt = Annotated[int, typer.Option(help="Images per CNN batch.", metavar="N")]
PcaVarianceOpt = Annotated[
    float, typer.Option(help="Explained variance that picks k.", metavar="FRACTION")
]
PcaKOpt = Annotated[
    Optional[int], typer.Option(help="Fixed k (overrides --pca-variance).", metavar="K")
]
PcaMaxKOpt = Annotated[int, typer.Option(help="Cap on the k chosen by --pca-variance (0: none).")]
ClassifyOpt = Annotated[
    bool, typer.Option(help="Train and test the classifier (needs a test split).")
]
ConfOpt = Annotated[
    list[str],
    typer.Option("--conf", help="Spark setting (repeatable).", metavar="KEY=VALUE"),
]
StorageOpt = Annotated[
    Storage,
    typer.Option(help="I/O: hadoop, fsspec, or auto (hadoop when it knows the scheme)."),
]
IncrementalOpt = Annotated[
    bool,
    typer.Option(
        "--incremental",
        help="Process only new or changed files, with the output's saved PCA.",
    ),
]
RefitOpt = Annotated[
    bool,
    typer.Option(
        "--refit",
        help="Like --incremental, then refit scaler, PCA and classifier.",
    ),
]
VerifyContentOpt = Annotated[
    bool,
    typer.Option(
        "--verify-content",
        help="With --incremental: compare content hashes, not only size and mtime.",
    ),
]
SingleCsvMaxRowsOpt = Annotated[
    int,
    typer.Option(
        min=0,
        help="Rows above which CSVs are written as folders of parts (0: one file).",
        metavar="ROWS",
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log everything, Spark too.")]

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


# Click's exception classes, whichever click Typer uses (its own vendored copy since 0.2x).
ClickException: Any
UsageError: Any
ClickException, UsageError = (
    next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
    for name in ("ClickException", "UsageError")
)


class OneLineErrors(TyperGroup):
    """Usage errors as one line on stderr (`fruits: error: ...`, exit 2), not a 5-line box."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `fruits`: the help
                exc.show()
                sys.exit(0)
            hint = ""
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, UsageError) and ctx is not None:
                path = " ".join(["fruits", *ctx.command_path.split()[1:]])  # any prog name
                hint = f" (see '{path} --help')"
            message = " ".join(exc.format_message().split())
            typer.echo(f"fruits: error: {message}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("fruits: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


# Typer 0.2x shows a value's Python type (`--input <list[str]>`); plain words read better.
PLAIN_METAVARS = {"str": "TEXT", "list[str]": "TEXT", "int": "N", "float": "NUMBER"}


class PlainHelpCommand(TyperCommand):
    """Option help without Python type names: DIR, FILE, N, TEXT."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            show = getattr(param, "display_type", None)
            if isinstance(param, TyperArgument) or show is None or getattr(param, "is_flag", False):
                continue
            shown = show(ctx) or ""
            if param.metavar is None and shown.startswith("<") and "|" not in shown:
                param.metavar = PLAIN_METAVARS.get(shown.strip("<>").replace(" range", ""), "VALUE")
        return params


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help that fits 80 columns, plain errors
    help="Fruits! image pipeline on Spark.",
)

# Without -v, what a user reads: each stage once when done, the featurize progress, warnings.
_QUIET_INFO = {"fruits.progress": "", "fruits.run_context": ": done in "}


def _quiet(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
        return True
    needle = _QUIET_INFO.get(record.name)
    return needle is not None and needle in record.getMessage()


def _one_or_many(values: list[str] | None) -> str | tuple[str, ...] | None:
    """A repeatable option as the config keeps it: one file as a str (as report.json has
    always recorded it), several as a tuple."""
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _setup_logging(verbose: bool) -> None:
    """-v: every logger at DEBUG with its name; else a short line per stage (`_quiet`)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet)
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


@app.command(cls=PlainHelpCommand)
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
    augment: AugmentOpt = "auto",
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
    # No --input: the bundled sample comes with its bundled negatives, so the quick-start model
    # can answer "not a fruit"; an explicit --input gets only the --negatives it names.
    negatives = negatives or ([] if input else [bundled_negatives()])
    cfg = PipelineConfig(
        input=sources[0],
        extra_inputs=tuple(sources[1:]),
        negatives=tuple(negatives or ()),
        label_map=_one_or_many(label_map),
        output=output,
        master=master,
        remote=remote,
        on_error=on_error,
        featurizer=FeaturizerConfig(
            backbone=backbone,
            weights=weights,
            image_size=image_size,
            engine=engine,
            precision=precision,
            batch_size=batch_size,
        ),
        reduce=ReduceConfig(variance=pca_variance, k=pca_k, max_k=pca_max_k or None),
        classify=classify,
        augment=augment,
        spark_conf=_parse_conf(conf),
        incremental=incremental or refit,
        refit=refit,
        verify_content=verify_content,
        storage=storage,
        single_csv_max_rows=single_csv_max_rows,
        spark_log_level="WARN" if verbose else PipelineConfig.spark_log_level,
    )
    _print_summary(_guard(lambda: _run(cfg)))


@app.command(cls=PlainHelpCommand)
def finetune(
    input: Annotated[
        list[str], typer.Option(help="Labelled images folder, path or URI (repeatable).")
    ],
    output: Annotated[
        str, typer.Option(help="Output folder for the weights and their report.", metavar="DIR")
    ],
    negatives: NegativesOpt = None,
    label_map: LabelMapOpt = None,
    master: MasterOpt = None,
    backbone: BackboneOpt = "efficientnet_lite0",
    weights: Annotated[
        Optional[str], typer.Option(help="Start from these weights (default: the bundled ones).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training rows.")] = 3,
    image_size: ImageSizeOpt = FeaturizerConfig.image_size,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step and process.")] = 32,
    lr: Annotated[
        float, typer.Option(min=0.0, help="Backbone learning rate; 0: train the head alone.")
    ] = 1e-4,
    head_lr: Annotated[float, typer.Option(min=0.0, help="Head learning rate; 0: 10x --lr.")] = 0.0,
    l2sp: Annotated[
        float, typer.Option(min=0.0, help="Pull toward the pretrained weights (L2-SP).")
    ] = 1e-2,
    processes: Annotated[
        int, typer.Option(min=1, help="Training processes (TorchDistributor).")
    ] = 1,
    gpu: Annotated[bool, typer.Option(help="Train on CUDA GPUs (one per process).")] = False,
    steps_per_epoch: Annotated[
        int, typer.Option(min=0, help="Steps per epoch and process; 0: one pass.")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Random draws of rows and augmentation.")] = 0,
    conf: ConfOpt = [],  # noqa: B006
    verbose: VerboseOpt = False,
) -> None:
    """Fine-tune the backbone on labelled sources (Spark's TorchDistributor); then
    `fruits run --weights OUTPUT/models/backbone-weights.pt` uses it. Needs fruits[export]."""
    _setup_logging(verbose)
    from fruits.finetune import FinetuneConfig

    cfg = PipelineConfig(
        input=input[0],
        extra_inputs=tuple(input[1:]),
        negatives=tuple(negatives or ()),
        label_map=_one_or_many(label_map),
        output=output,
        master=master,
        featurizer=FeaturizerConfig(backbone=backbone, weights=weights, image_size=image_size),
        spark_conf=_parse_conf(conf),
        spark_log_level="WARN" if verbose else PipelineConfig.spark_log_level,
    )
    ft = FinetuneConfig(
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        l2sp=l2sp,
        processes=processes,
        gpu=gpu,
        steps_per_epoch=steps_per_epoch,
        seed=seed,
    )
    report = _guard(lambda: _finetune(cfg, ft))
    summary = {
        "run_id": report["run_id"],
        "classes": len(report["classes"]),
        "train_rows_per_source": report["train_rows_per_source"],
        "training": report["training"]["epochs"][-1],
        "total_seconds": report["total_seconds"],
    }
    typer.echo(json.dumps(summary))
    typer.echo(f"weights written to {cfg.output.rstrip('/')}/{report['weights']}")


def _finetune(cfg: PipelineConfig, ft: Any) -> dict[str, Any]:
    from fruits import preflight

    preflight.check(cfg, remote=None)
    try:
        import torch  # noqa: F401
        from efficientnet_lite_pytorch import EfficientNet  # noqa: F401
    except ImportError:
        raise ValueError("fruits finetune needs PyTorch: pip install 'fruits[export]'") from None
    from fruits.finetune import finetune as fit
    from fruits.pipeline import session_for

    return fit(cfg, ft, session_for(cfg))


def _print_summary(result: RunResult) -> None:
    """The run's headline numbers as one JSON line, then where its outputs are."""
    r = result.report
    typer.echo(json.dumps({k: r.get(k) for k in SUMMARY_KEYS}))
    if r.get("published", True):
        typer.echo(f"outputs written to {result.output}")
    else:
        typer.echo(f"nothing new: {result.output} left as it was")


def _run(cfg: PipelineConfig) -> RunResult:
    from fruits import preflight

    # before importing pyspark (seconds) and starting a session (more): a typo costs neither
    preflight.check(cfg, remote=preflight.remote_url(cfg))
    from fruits.pipeline import run_pipeline

    return run_pipeline(cfg)


@app.command(name="refit", cls=PlainHelpCommand)
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


@app.command(cls=PlainHelpCommand)
def evaluate(
    run: Annotated[str, typer.Option(help="Output folder of `fruits run` (local path).")],
    input: Annotated[
        list[str],
        typer.Option(help="Folder of labelled photos (class = parent folder); repeatable."),
    ],
    label_map: Annotated[
        Optional[list[str]],
        typer.Option(help="JSON mapping folder labels to classes (as in `run`); repeatable."),
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
    and the 20 most confused pairs; the same per source and the worst source."""
    _setup_logging(False)
    from fruits.evaluate import evaluate_run
    from fruits.predictor import ServingError

    try:
        result = evaluate_run(
            run, input, label_map=_one_or_many(label_map), negatives=negatives, plot=plot
        )
    except (ServingError, ValueError, OSError) as exc:  # ValueError: label map, no photos
        typer.echo(f"error: {_one_line(exc)}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2))


@app.command(cls=PlainHelpCommand)
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
    contributions: Annotated[
        Optional[str],
        typer.Option(
            help="Local folder for photos users give with consent (POST /v1/contributions);"
            " default: off.",
            metavar="DIR",
        ),
    ] = None,
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
        run=run,
        max_bytes=int(max_mb * 1024 * 1024),
        threads=threads,
        max_batch=max_batch,
        contributions=contributions,
    )
    try:
        check_run(run)  # fail here with one line, not inside uvicorn's start-up
    except (ServingError, OSError, ValueError, KeyError) as exc:
        typer.echo(f"error: cannot serve {run}: {exc}", err=True)
        raise typer.Exit(2) from None
    start(settings, host=host, port=port)


contributions_app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Photos users gave with consent (`fruits serve --contributions DIR`).",
)
app.add_typer(contributions_app, name="contributions")


@contributions_app.command(name="review", cls=PlainHelpCommand)
def contributions_review(
    folder: Annotated[
        str,
        typer.Argument(help="The folder given to `fruits serve --contributions`.", metavar="DIR"),
    ],
    accept: Annotated[
        Optional[list[str]],
        typer.Option(help="Confirm this pending contribution (repeatable).", metavar="ID"),
    ] = None,
    accept_all: Annotated[
        bool, typer.Option("--accept-all", help="Confirm every pending contribution.")
    ] = False,
    reject: Annotated[
        Optional[list[str]],
        typer.Option(help="Delete this pending contribution (repeatable).", metavar="ID"),
    ] = None,
    label: Annotated[
        Optional[str],
        typer.Option(help="With --accept: confirm under this label instead.", metavar="CLASS"),
    ] = None,
) -> None:
    """List pending contributions, or confirm / reject them. A confirmed photo moves to
    FOLDER/confirmed/Training/<label>/, which `fruits run --input FOLDER/confirmed` trains on."""
    from fruits.contributions import ContributionError, ContributionStore

    if not Path(folder).is_dir():
        typer.echo(f"error: {folder} is not a folder", err=True)
        raise typer.Exit(2)
    store = ContributionStore(folder)
    pending = store.pending()
    ids = list(accept or [])
    if accept_all:
        ids += [r["id"] for r in pending if r.get("id") not in ids]
    if label is not None and not accept:
        typer.echo("error: --label needs --accept ID", err=True)
        raise typer.Exit(2)
    try:
        for cid in reject or []:
            store.reject(cid)
            typer.echo(f"rejected {cid}")
        for cid in ids:
            target = store.accept(cid, label if cid in (accept or []) else None)
            typer.echo(f"accepted {cid} -> {target}")
    except ContributionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if ids or reject:
        return
    for r in pending:
        votes = len(r.get("votes", []))
        answered = f", model said {r['answer']}" if r.get("answer") else ""
        typer.echo(f"{r['id']}  {r['label']}  ({votes} vote(s){answered}; {r.get('time', '')})")
    typer.echo(f"{len(pending)} pending; confirmed photos: {store.confirmed_dir}")


# Top-level modules of each extra: a command that needs a missing one says what to install.
EXTRAS = {
    "pyspark": "spark",
    "py4j": "spark",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "azure": "azure",
    "adlfs": "azure",
    "tqdm": "azure",
    "mlflow": "mlflow",
}


def missing_extra(exc: ImportError) -> str | None:
    """`<module> is missing: pip install 'fruits[<extra>]'` when `exc` is a missing extra."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    return f"{top} is missing: pip install 'fruits[{extra}]'" if extra else None


# One-line failures (exit 2), by name: importing their modules would import pyspark, seconds
# on a busy machine, and fail where pyspark is not installed.
KNOWN_FAILURES = {"ImageFailure", "InputError", "JavaMissingError"}


def _known(exc: BaseException) -> bool:
    return isinstance(exc, (ValueError, OSError)) or any(
        c.__name__ in KNOWN_FAILURES and c.__module__.startswith("fruits.")
        for c in type(exc).__mro__
    )


def _guard(fn: Callable[[], T]) -> T:
    """Known failures become one line on stderr and exit code 2, not a stack trace."""
    try:
        return fn()
    except ImportError as exc:
        need = missing_extra(exc)
        if need is None:
            _unexpected(exc)
        typer.echo(f"error: {need}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # never a raw (possibly secret-bearing) traceback
        if not _known(exc):
            _unexpected(exc)
        from fruits.azure import redact

        typer.echo(f"error: {_one_line(redact(exc))}", err=True)
        raise typer.Exit(2) from None


def _unexpected(exc: BaseException) -> NoReturn:
    """An unforeseen failure: its type and first line, exit 1; -v logs the traceback."""
    from fruits.azure import redact, redact_traceback

    logging.getLogger("fruits").debug("%s", redact_traceback(exc))
    typer.echo(
        f"error: {type(exc).__name__}: {_one_line(redact(exc))} (-v shows the traceback)",
        err=True,
    )
    raise typer.Exit(1) from None


def _one_line(text: object) -> str:
    """The first line of a message: Java traces stay out of the user's terminal."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


@app.command(cls=PlainHelpCommand)
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


@app.command(cls=PlainHelpCommand)
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


def _finish_transfer(summary: TransferSummary) -> None:
    """Print the summary; any failed file makes the exit code 1."""
    for line in summary.lines():
        typer.echo(line, err=line.startswith("FAILED"))
    if not summary.ok:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
