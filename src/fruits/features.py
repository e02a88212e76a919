"""The featurize stage of `fruits run`: the listing's encoded images -> pooled CNN features,
written once as Parquet.

It runs through the very Spark ML stage users put in their own `Pipeline`
(`ml.ImageFeaturizer.featurize_frame`: one `mapInArrow`, one network per Python worker), with
the run's layout (keys passed through, the content version, `features` as array<float>,
`reason`). The maths lives in engine.py (`Featurizer`, `featurize_contents`), which the API and
the MLflow model call too; the network in artifact.py; the Arrow batches in arrow.py. The
driver builds a `ModelArtifact` once and ships it (`spark.Session.ship`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fruits.arrow import KEY_COLUMNS, STAGE
from fruits.artifact import ModelArtifact, build_artifact
from fruits.config import FeaturizerConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from fruits.stage import Run

log = logging.getLogger(__name__)


class ImageFailure(RuntimeError):
    """`--on-error fail` met a bad file: the run stops with that file and its reason."""


def threads_per_task(cfg: FeaturizerConfig, spark: SparkSession) -> int:
    """ONNX Runtime threads in each Spark task: the setting, else the task's CPUs."""
    return cfg.threads_per_task or int(spark.conf.get("spark.task.cpus", "1") or 1)


def featurize(run: Run, files: DataFrame, *, total: int = 0) -> tuple[ModelArtifact, DataFrame]:
    """The featurize stage: (path, label, split, length, modification_time, content) ->
    the same keys + `content_hash` + `features` + `reason` (null when usable), materialised
    once as Parquet in the run's staging folder, because every later stage reads it and the CNN
    is the costly part. With `total` (images to featurize), progress is logged every 10 s.
    `content_hash` is a SHA-1 of the very bytes the CNN saw, kept for incremental runs
    (`--verify-content`); a listing's own version of the file (an Azure ETag) wins, so the
    next listing compares like with like.
    """
    import re

    from fruits.ml import IMAGE_FAILURE_TAG, ImageFeaturizer
    from fruits.progress import Progress
    from fruits.spark import Session

    cfg, spark = run.cfg, run.spark
    session = Session(spark)
    artifact = build_artifact(cfg.featurizer)
    stage = ImageFeaturizer.for_config(
        cfg.featurizer, handleInvalid="error" if cfg.on_error == "fail" else "keep"
    )
    extra = [c for c in ("_local", "content_hash") if c in files.columns]
    featurized = stage.featurize_frame(
        files.select(*KEY_COLUMNS, "content", *extra),
        cfg=cfg.featurizer,
        artifact=session.ship(artifact),  # through Connect the graph travels in the plan (~13 MB)
        artifact_id=artifact.fingerprint,
        threads=threads_per_task(cfg.featurizer, spark),
        layout=STAGE,
        vector=False,
    )
    work = run.uri("_work", "featurized.parquet")
    session.describe(f"fruits {run.run_id}: featurize")
    try:
        with Progress(session.status_tracker(), run.group, what="featurize", total=total):
            featurized.write.parquet(work)
    except Exception as exc:
        # The Python traceback quotes the raising source line too; take the message itself.
        found = re.search(re.escape(IMAGE_FAILURE_TAG) + r" (?!\{)(.+)", str(exc))
        if found:
            raise ImageFailure(found.group(1).strip()) from None
        raise
    finally:
        session.describe(None)
    return artifact, spark.read.parquet(work)
