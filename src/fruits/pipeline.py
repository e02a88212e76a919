"""The end-to-end run: ingest -> featurize -> reduce -> classify -> outputs, staged then published.

Each stage is a DataFrame -> DataFrame step from its own module; this module only orders them,
materialises the expensive CNN output once (Parquet in the staging folder), times the stages and
writes the report.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits import __version__
from fruits.azure import redact_conf
from fruits.config import PipelineConfig
from fruits.features import UNREADABLE, build_artifact, featurize_udf, save_artifact
from fruits.fsspec_store import plan_storage
from fruits.ingest import InputError
from fruits.reduce import fit_reducer
from fruits.report import plot_confusion, plot_explained_variance, plot_scatter, write_json
from fruits.spark import default_conf, get_spark
from fruits.storage import HadoopStore, Store, join, new_run_id, publish, staging_uri

log = logging.getLogger(__name__)

IMAGE_FAILURE_TAG = "FruitsImageFailure:"
SCATTER_SAMPLE = 5000
# length + modification_time identify a file's version, for incremental runs.
KEY_COLUMNS = ("path", "label", "split", "length", "modification_time")
OUTPUT_COLUMNS = ("path", "label", "split", "features", "pca", "length", "modification_time")


class ImageFailure(RuntimeError):
    """`--on-error fail` met a bad file: the run stops with that file and its reason."""


@dataclass
class RunResult:
    output: str
    report: dict[str, Any]


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        log.info("stage %s: started", name)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
            log.info("stage %s: done in %.1fs", name, self.seconds[name])


def resolve_uri(uri: str, spark: SparkSession) -> str:
    """Local relative paths become absolute when Spark runs locally, so messages are exact."""
    has_scheme = ":" in uri.split("/", 1)[0]
    if not has_scheme and spark.sparkContext.master.startswith("local"):
        return os.path.abspath(uri)
    return uri


def session_for(cfg: PipelineConfig) -> SparkSession:
    return get_spark(
        master=cfg.master,
        defaults=default_conf(
            arrow_max_records=cfg.arrow_max_records,
            arrow_max_bytes=cfg.arrow_max_bytes,
            files_per_partition=cfg.files_per_partition,
        ),
        overrides=cfg.spark_conf,
    )


def run_pipeline(cfg: PipelineConfig, spark: SparkSession | None = None) -> RunResult:
    """Run the whole chain; the output folder appears only once everything is written."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    timer = StageTimer()
    spark = spark or session_for(cfg)
    store: Store = HadoopStore(spark)
    input_uri = resolve_uri(cfg.input, spark)
    output = resolve_uri(cfg.output, spark)
    io = plan_storage(  # Hadoop where the JVM reads the scheme, else fsspec (fsspec_store.py)
        spark, cfg.storage, input_uri, output, files_per_partition=cfg.files_per_partition
    )
    io.check_input(spark)
    run_id = new_run_id()
    staging = staging_uri(io.work_output, run_id)
    local = Path(tempfile.mkdtemp(prefix=f"fruits-{run_id}-"))
    report: dict[str, Any] = {"run_id": run_id, "input": input_uri, "output": output}
    group = f"fruits-{run_id}"  # this run's Spark jobs, to count retried tasks at the end
    spark.sparkContext.setJobGroup(group, f"fruits run {run_id}")
    try:
        with timer("ingest"):
            ingested = io.read_images(
                spark, extensions=cfg.extensions, max_file_bytes=cfg.max_file_bytes
            )
            listed = ingested.files.select("path").union(ingested.too_large.select("path"))
            images_total = listed.count()
            if images_total == 0:
                raise InputError(
                    f"no images under {input_uri} (extensions: {', '.join(cfg.extensions)})"
                )
            log.info("ingest: %d image files listed", images_total)
            plan = None
            if cfg.incremental:  # only new or changed files go on (incremental.py)
                from fruits.incremental import plan_increment

                plan = plan_increment(spark, store, cfg, output, ingested)
            if plan is not None and plan.nothing_to_do:
                log.info("incremental: nothing new, changed or deleted; output left as it was")
                return RunResult(output=output, report=plan.unchanged_report(run_id, images_total))
            files = plan.todo if plan is not None else ingested.files
            too_large = plan.todo_refused if plan is not None else ingested.too_large

        with timer("featurize"):
            artifact = build_artifact(cfg.featurizer)
            threads = cfg.featurizer.threads_per_task or int(
                spark.conf.get("spark.task.cpus", "1") or 1
            )
            udf = featurize_udf(
                spark.sparkContext.broadcast(artifact), artifact.fingerprint, cfg.featurizer,
                threads=threads, fail_fast=cfg.on_error == "fail",
            )  # fmt: skip
            work = join(staging, "_work", "featurized.parquet")
            featurized = files.select(*KEY_COLUMNS, udf("path", "content").alias("r")).select(
                *KEY_COLUMNS, "r.features", F.col("r.error").alias("reason")
            )
            spark.sparkContext.setJobDescription(f"fruits {run_id}: featurize")
            _write_featurized(featurized, work)
            spark.sparkContext.setJobDescription(None)
            feats = spark.read.parquet(work)
            ok = feats.where(F.col("reason").isNull()).drop("reason")
            if plan is not None:
                ok = ok.unionByName(plan.kept_features)

        with timer("quarantine"):
            unreadable = (
                files.select("path", "length", "modification_time")
                .join(feats.select("path"), "path", "left_anti")
                .withColumn("reason", F.lit(UNREADABLE))
            )
            quarantine = (  # length + modification_time: incremental runs skip known bad files
                feats.where(F.col("reason").isNotNull())
                .select("path", "reason", "length", "modification_time")
                .unionByName(too_large, allowMissingColumns=True)
                .unionByName(unreadable)
            )
            if plan is not None:
                quarantine = quarantine.unionByName(plan.kept_quarantine)
            quarantine = quarantine.coalesce(1)
            quarantine.write.parquet(join(staging, "quarantine.parquet"))
            quarantine = spark.read.parquet(join(staging, "quarantine.parquet"))
            n_bad = quarantine.count()
            if n_bad and cfg.on_error == "fail":
                first = quarantine.first()
                assert first is not None
                raise ImageFailure(f"{first['path']}: {first['reason']}")
            _single_csv(store, quarantine.select("path", "reason"), join(staging, "quarantine.csv"))
            log.info("quarantine: %d file(s)", n_bad)

        splits = {r["split"]: r["count"] for r in ok.groupBy("split").count().collect()}
        images_ok = int(sum(splits.values()))
        if images_ok < 2:
            raise InputError(f"only {images_ok} usable image(s) under {input_uri}: nothing to fit")
        classes = ok.select("label").distinct().count()

        with timer("reduce"):
            train = ok.where(F.col("split") == "train") if splits.get("train") else ok
            reducer = plan.reducer if plan and plan.reducer else fit_reducer(train, cfg.reduce)
            projected = reducer.transform(ok).select(*OUTPUT_COLUMNS)
            # One file per ~128 MB read partition of the staged features (maxPartitionBytes),
            # so the file count grows with bytes, never with the image count; or a fixed count.
            if cfg.output_files:
                projected = projected.coalesce(cfg.output_files)
            projected.write.parquet(join(staging, "images.parquet"))
            reducer.model.write().overwrite().save(join(staging, "models", "scaler_pca"))
            images = spark.read.parquet(join(staging, "images.parquet"))
            log.info(
                "reduce: k=%d keeps %.2f%% of the variance", reducer.k, 100 * reducer.cumulative
            )

        with timer("write_csv"):
            pcs = [F.element_at("pca", i + 1).alias(f"pc_{i + 1}") for i in range(reducer.k)]
            _single_csv(
                store, images.select("path", "label", "split", *pcs), join(staging, "pca.csv")
            )

        models_dir = local / "models"
        save_artifact(artifact, models_dir)
        plots = local / "plots"
        plots.mkdir()
        evaluation = None
        if cfg.classify and splits.get("test") and classes >= 2:
            with timer("classify"):
                from fruits.classify import evaluate, fit_classifier

                if plan is not None and plan.classifier_path:  # incremental: no refit
                    from fruits.incremental import load_classifier

                    model = load_classifier(plan.classifier_path)
                else:
                    model = fit_classifier(
                        images.where(F.col("split") == "train") if splits.get("train") else images
                    )
                model.write().overwrite().save(join(staging, "models", "classifier"))
                from fruits.serving import export_serving

                export_serving(
                    reducer.model, model, models_dir, featurizer=cfg.featurizer, run_id=run_id
                )
                evaluation = evaluate(model, images.where(F.col("split") == "test"))
                plot_confusion(
                    evaluation.labels, evaluation.confusion, plots / "confusion_matrix.png"
                )
                log.info(
                    "classify: test accuracy %.4f, macro-F1 %.4f",
                    evaluation.accuracy,
                    evaluation.macro_f1,
                )

        with timer("report"):
            plot_explained_variance(
                reducer.explained_variance, reducer.k,
                None if cfg.reduce.k else cfg.reduce.variance, plots / "explained_variance.png",
            )  # fmt: skip
            _scatter(images, images_ok, plots / "pca_scatter.png")
            total = time.perf_counter() - t0
            report.update(
                {
                    "images_total": images_total,
                    "images_ok": images_ok,
                    "images_quarantined": n_bad,
                    "images_by_split": splits,
                    "classes": classes,
                    "feature_dim": artifact.spec.feature_dim,
                    "pca_k": reducer.k,
                    "pca_explained_variance": round(reducer.cumulative, 6),
                    "pca_explained_variance_per_component": [
                        round(v, 8) for v in reducer.explained_variance
                    ],
                    "pca_variance_target": None if cfg.reduce.k else cfg.reduce.variance,
                    "pca_fitted_on": "train" if splits.get("train") else "all",
                    "accuracy": evaluation.accuracy if evaluation else None,
                    "macro_f1": evaluation.macro_f1 if evaluation else None,
                    "classification": evaluation.summary() if evaluation else None,
                    "stage_seconds": timer.seconds,
                    "images_processed": plan.processed if plan is not None else images_total,
                    "incremental": plan.describe() if plan is not None else None,
                    "task_retries": task_retries(spark, group),
                    "total_seconds": round(total, 3),
                    "images_per_second": round(images_total / total, 2),
                    "featurize_images_per_second": round(
                        images_total / max(timer.seconds["featurize"], 1e-9), 2
                    ),
                    "featurizer": {
                        **artifact.describe(),
                        "image_size": cfg.featurizer.image_size,
                        "precision": cfg.featurizer.precision,
                        "channels_last": cfg.featurizer.channels_last,
                        "batch_size": cfg.featurizer.batch_size,
                        "threads_per_task": threads,
                        "max_pixels": cfg.featurizer.max_pixels,
                        "jpeg_draft": True,  # large JPEGs decode at a reduced scale (images.py)
                    },
                    "spark": {
                        "version": spark.version,
                        "master": spark.sparkContext.master,
                        "default_parallelism": spark.sparkContext.defaultParallelism,
                        "arrow_max_records_per_batch": spark.conf.get(
                            "spark.sql.execution.arrow.maxRecordsPerBatch"
                        ),
                        **{  # the other levers of docs/performance.md, as Spark saw them
                            key: spark.conf.get(key, None)
                            for key in (
                                "spark.sql.execution.arrow.maxBytesPerBatch",
                                "spark.sql.files.openCostInBytes",
                                "spark.sql.files.maxPartitionBytes",
                                "spark.sql.sources.parallelPartitionDiscovery.parallelism",
                                "spark.task.cpus",
                                "spark.task.resource.gpu.amount",
                            )
                        },
                    },
                    "config": redact_conf(cfg.to_dict()),  # no --conf secret in the report
                    "versions": {"fruits": __version__, "python": platform.python_version()},
                    "started_at": started.isoformat(),
                    "finished_at": datetime.now(UTC).isoformat(),
                }
            )
            write_json(report, local / "report.json")
            # models/ already holds Spark's saved models: put files into it one by one (a Hadoop
            # copy of the whole folder would land in models/models/)
            models = [f"models/{p.name}" for p in sorted(models_dir.iterdir())]
            for item in (*models, "plots", "report.json"):
                store.put(local / item, join(staging, item))
            store.delete(join(staging, "_work"))
            write_json(
                {"run_id": run_id, "finished_at": report["finished_at"]}, local / "_SUCCESS.json"
            )
            store.put(local / "_SUCCESS.json", join(staging, "_SUCCESS.json"))

        publish(store, staging, io.work_output, run_id)
        io.finish(run_id)  # fsspec output: upload the published run; no-op with Hadoop
        log.info("run %s published to %s", run_id, output)
        return RunResult(output=output, report=report)
    except BaseException:
        _quietly(lambda: store.delete(staging))
        raise
    finally:
        shutil.rmtree(local, ignore_errors=True)
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        io.cleanup()


def _write_featurized(featurized: DataFrame, uri: str) -> None:
    """Materialise the CNN output once; `--on-error fail` surfaces here as a one-line error."""
    try:
        featurized.write.parquet(uri)
    except Exception as exc:
        text = str(exc)
        # The Python traceback quotes the raising source line too; take the message itself.
        found = re.search(re.escape(IMAGE_FAILURE_TAG) + r" (?!\{)(.+)", text)
        if found:
            raise ImageFailure(found.group(1).strip()) from None
        raise


def _single_csv(store: Store, df: DataFrame, uri: str) -> None:
    """One plain CSV file with a header (a Spark CSV folder, renamed to a file)."""
    tmp = uri + ".parts"
    df.coalesce(1).write.option("header", "true").csv(tmp)
    parts = [p for p in store.list(tmp) if p.rstrip("/").rpartition("/")[2].startswith("part-")]
    if len(parts) != 1:
        raise RuntimeError(f"expected one CSV part in {tmp}, found {len(parts)}")
    store.rename(parts[0], uri)
    store.delete(tmp)


def _scatter(images: DataFrame, n: int, path: Path) -> None:
    import numpy as np

    fraction = min(1.0, SCATTER_SAMPLE / max(n, 1))
    rows = (
        images.sample(fraction=fraction, seed=7)
        .select("label", F.slice("pca", 1, 2).alias("xy"))
        .collect()
    )
    pts = np.asarray([r["xy"] + [0.0] * (2 - len(r["xy"])) for r in rows], dtype=float).reshape(
        -1, 2
    )
    plot_scatter(pts, [r["label"] for r in rows], path)


def _quietly(fn: Any) -> None:
    try:
        fn()
    except Exception:
        log.debug("clean-up failed", exc_info=True)


def task_retries(spark: SparkSession, group: str) -> dict[str, int]:
    """Failed task attempts and re-run stages of this run's jobs (a lost executor, a task that
    crashed), read from Spark's status tracker at the driver: no listener to register. Spark
    keeps the last attempt of each stage, so `failed_tasks` is a lower bound when a whole stage
    was re-run; `stage_retries` counts those re-runs."""
    tracker = spark.sparkContext.statusTracker()
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
