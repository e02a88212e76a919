"""The end-to-end run as a short story: ingest -> featurize -> quarantine -> reduce -> outputs
-> classify -> report -> publish.

Each step is a function of its own module that owns its columns. A stage takes the run's
narrow, read-only face (`stage.Run`: settings, session, store, folders) and returns what it
learns (the label map comes back in `Ingested`, the classifier's figures as an `Evaluation`);
none writes onto the run. `RunContext` (run_context.py) owns the folders, the output rules, the
lease and the publish; `incremental.previous` returns what an earlier output lets this run skip
(`Increment.full` for a full run), so no stage branches on the run's mode. To add a stage: a
function `(run: Run, df: DataFrame, ...) -> DataFrame` (or what it learns) in a module, called
here inside `run.stage("name")`. Modules import only lower floors (tests/test_architecture.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fruits import augment, classify, incremental, outputs, preflight, quarantine, report, tracking
from fruits.classify import source_column, spellings
from fruits.common import InputError, count_by_split
from fruits.config import PipelineConfig
from fruits.features import ImageFailure, featurize
from fruits.ingest import read_sources
from fruits.reduce import fit_reducer
from fruits.run_context import RunContext
from fruits.spark import default_conf, get_spark
from fruits.splits import train_part

__all__ = ["ImageFailure", "RunResult", "run_pipeline", "session_for", "train_part"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    output: str
    report: dict[str, Any]


def session_for(cfg: PipelineConfig) -> SparkSession:
    """The run's session: `--remote` (or $SPARK_REMOTE) is Spark Connect, else classic."""
    remote = preflight.remote_url(cfg)
    if remote and cfg.master:
        raise ValueError("--remote and --master exclude each other: give one")
    return get_spark(
        master=cfg.master,
        remote=remote,
        defaults=default_conf(
            arrow_max_records=cfg.arrow_max_records,
            arrow_max_bytes=cfg.arrow_max_bytes,
            files_per_partition=cfg.files_per_partition,
        ),
        overrides=cfg.spark_conf,
        log_level=cfg.spark_log_level,
    )


def run_pipeline(cfg: PipelineConfig, spark: SparkSession | None = None) -> RunResult:
    """Run the whole chain; the output folder appears only once everything is written.
    What needs no Spark is checked first (`preflight`): a typo costs no session start."""
    preflight.check(cfg, remote=None if spark is not None else preflight.remote_url(cfg))
    spark = spark or session_for(cfg)
    with RunContext(cfg, spark) as run:
        with run.stage("ingest"):
            listed = read_sources(run)
            prev = incremental.previous(run, listed)
        if prev.nothing_to_do:
            log.info("incremental: nothing new, changed or deleted; output left as it was")
            return RunResult(run.output, prev.unchanged_report(run.run_id, listed.total))

        with run.stage("featurize"):
            artifact, feats = featurize(run, prev.todo, total=prev.processed)
            ok = prev.with_kept_features(feats.where(F.col("reason").isNull()).drop("reason"))
        with run.stage("quarantine"):
            bad = quarantine.write(run, feats, prev, listed)

        labels = ok.groupBy("split", "label").count().collect()
        splits = count_by_split(labels)
        if sum(splits.values()) < 2:
            raise InputError(f"only {sum(splits.values())} usable image(s): nothing to fit")

        with run.stage("reduce"):
            work = run.uri("_work")
            reducer = prev.reducer or fit_reducer(train_part(ok, splits), cfg.reduce, work=work)
            images = outputs.write_images(run, reducer, ok)
        with run.stage("write_csv"):
            outputs.write_pca_csv(run, images, reducer.k, rows=sum(splits.values()))
        outputs.save_backbone(run, artifact)

        evaluation = None
        augmented: augment.Augmented | None = None
        judged = splits.get("test") or splits.get("val")
        if cfg.classify and judged and len({r["label"] for r in labels}) >= 2:
            if cfg.augments and not prev.classifier_path:  # a refit only: composites train
                with run.stage("augment"):
                    roles = [role for _, role in cfg.sources]
                    source = source_column(spellings(run))
                    augmented = augment.composites(run, listed.files, source, roles, artifact)
            with run.stage("classify"):
                rows = augmented.rows if augmented else None
                evaluation = classify.stage(
                    run, reducer, images, splits, prev, listed.label_map, rows
                )

        with run.stage("report"):
            built = report.build(
                run,
                artifact=artifact,
                reducer=reducer,
                images=images,
                labels=labels,
                quarantined=bad,
                evaluation=evaluation,
                prev=prev,
                images_total=listed.total,
                augmented=augmented.summary() if augmented else None,
            )
        run.publish(built)
        tracking.log_run(built, str(run.local))  # MLflow, when MLFLOW_TRACKING_URI is set
        return RunResult(run.output, built)
