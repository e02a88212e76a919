"""Run report: `report.json` and the PNG plots a person looks at after a run."""

from __future__ import annotations

import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fruits.common import count_by_split, write_json
from fruits.plots import plot_explained_variance, plot_scatter

if TYPE_CHECKING:
    from fruits.stage import Run

__all__ = ["build", "write_json"]  # write_json: common.py, kept importable here

SCATTER_SAMPLE = 5000  # points in the PCA scatter plot, whatever the data size
SPARK_LEVERS = (  # the levers of docs/performance.md, as Spark saw them
    "spark.sql.execution.arrow.maxRecordsPerBatch",
    "spark.sql.execution.arrow.maxBytesPerBatch",
    "spark.sql.files.openCostInBytes",
    "spark.sql.files.maxPartitionBytes",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism",
    "spark.task.cpus",
    "spark.task.resource.gpu.amount",
)


def build(
    run: Run,
    *,
    artifact: Any,
    reducer: Any,
    images: Any,
    labels: list[Any],
    quarantined: int,
    evaluation: Any,
    prev: Any,
    images_total: int | None,  # None: the listing could not count the files it refused
    augmented: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Draw the plots into the run's local folder and return the report dict."""
    from fruits import __version__
    from fruits.azure import redact_conf
    from fruits.csv_output import csv_form

    cfg = run.cfg
    target = None if cfg.reduce.k else cfg.reduce.variance
    splits = count_by_split(labels)
    images_ok = sum(splits.values())
    draw_plots(run.local / "plots", reducer, images, images_ok, target)
    featurized = featurized_count(images_ok, prev)
    total = time.perf_counter() - run.t0
    seconds = run.timer.seconds
    return {
        "run_id": run.run_id,
        "input": run.input,
        "inputs": run.inputs,
        "output": run.output,
        "images_total": images_total,
        "images_ok": images_ok,
        "images_quarantined": quarantined,
        "images_by_split": splits,
        "classes": len({r["label"] for r in labels}),
        # training-only composites (augment.py): counts, or None where none were made
        "augmented": augmented,
        "feature_dim": artifact.spec.feature_dim,
        "pca_k": reducer.k,
        "pca_explained_variance": round(reducer.cumulative, 6),
        "pca_explained_variance_per_component": [round(v, 8) for v in reducer.explained_variance],
        "pca_variance_target": target,
        "pca_max_k": None if cfg.reduce.k else cfg.reduce.max_k,
        "pca_fitted_on": "train" if splits.get("train") else "all but test",
        "pca_csv": csv_form(images_ok, cfg.single_csv_max_rows),  # "file" or "folder"
        **classification(evaluation),
        "stage_seconds": seconds,
        "images_processed": prev.processed,
        "incremental": prev.describe(),
        "task_retries": task_retries(run.spark, run.group),
        "total_seconds": round(total, 3),
        # featurised this run only: quarantined files and rows kept from the previous output
        # took no CNN pass, so counting them (as `images_total` did) flattered the rate
        "images_featurized": featurized,
        "images_per_second": round(featurized / total, 2),
        "featurize_images_per_second": round(
            prev.processed / max(seconds.get("featurize", 0.0), 1e-9), 2
        ),
        "featurizer": featurizer_settings(run, artifact),
        "spark": spark_settings(run.spark),
        "config": redact_conf(cfg.to_dict()),  # no --conf secret in the report
        "versions": {"fruits": __version__, "python": platform.python_version()},
        "started_at": run.started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
    }


def featurized_count(images_ok: int, prev: Any) -> int:
    """Usable images this run featurised: the output's rows minus those an incremental run
    kept from the previous output (one count of them; a full run keeps none)."""
    kept = getattr(prev, "kept_features", None)
    return images_ok if kept is None else max(0, images_ok - kept.count())


def draw_plots(
    plots: Path, reducer: Any, images: Any, images_ok: int, target: float | None
) -> None:
    """The explained-variance curve and the PCA scatter, into `plots`."""
    plots.mkdir(exist_ok=True)
    plot_explained_variance(
        reducer.explained_variance, reducer.k, target, plots / "explained_variance.png"
    )
    scatter(images, images_ok, plots / "pca_scatter.png")


def classification(evaluation: Any) -> dict[str, Any]:
    """The classifier's figures; None each when no classifier was trained."""
    return {
        "accuracy": evaluation.accuracy if evaluation else None,
        "macro_f1": evaluation.macro_f1 if evaluation else None,
        "classification": evaluation.summary() if evaluation else None,
        "recognition": evaluation.recognition if evaluation else None,
    }


def featurizer_settings(run: Run, artifact: Any) -> dict[str, Any]:
    """The CNN the run used and how it ran it."""
    from fruits.features import threads_per_task

    fcfg = run.cfg.featurizer
    return {
        **artifact.describe(),
        "image_size": fcfg.image_size,
        "precision": fcfg.precision,
        "channels_last": fcfg.channels_last,
        "batch_size": fcfg.batch_size,
        "threads_per_task": threads_per_task(fcfg, run.spark),
        "max_pixels": fcfg.max_pixels,
        "jpeg_draft": True,  # large JPEGs decode at a reduced scale (images.py)
    }


def spark_settings(spark: Any) -> dict[str, Any]:
    """Spark's version, master and the levers of docs/performance.md, as it saw them."""
    from fruits.spark import Session

    session = Session(spark)
    return {
        "version": spark.version,
        "master": session.master(),
        "default_parallelism": session.default_parallelism(),
        **{key: spark.conf.get(key, None) for key in SPARK_LEVERS},
    }


def scatter(images: Any, n: int, path: Path) -> None:
    """The first two components of a bounded sample of the images."""
    from pyspark.sql import functions as F

    fraction = min(1.0, SCATTER_SAMPLE / max(n, 1))
    rows = (
        images.sample(fraction=fraction, seed=7)
        .select("label", F.slice("pca", 1, 2).alias("xy"))
        .collect()
    )
    pts = np.asarray([r["xy"] + [0.0] * (2 - len(r["xy"])) for r in rows], dtype=float)
    plot_scatter(pts.reshape(-1, 2), [r["label"] for r in rows], path)


def task_retries(spark: Any, group: str) -> dict[str, int] | None:
    """Failed task attempts and re-run stages of this run's jobs (a lost executor, a task that
    crashed), read from Spark's status tracker at the driver: no listener to register. Spark
    keeps the last attempt of each stage, so `failed_tasks` is a lower bound when a whole stage
    was re-run; `stage_retries` counts those re-runs. None through Spark Connect (no tracker
    on the client: the server's UI has them)."""
    from fruits.spark import Session

    tracker = Session(spark).status_tracker()
    if tracker is None:
        return None
    jobs = tracker.getJobIdsForGroup(group)
    stages: set[int] = set()
    for job in jobs:
        info = tracker.getJobInfo(job)
        if info is not None:
            stages.update(info.stageIds)
    failed = retried = 0
    for stage in stages:
        st = tracker.getStageInfo(stage)
        if st is not None:
            failed += st.numFailedTasks
            retried += st.currentAttemptId
    return {"jobs": len(jobs), "failed_tasks": failed, "stage_retries": retried}
