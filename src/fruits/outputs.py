"""Outputs: the reduced image table, the CSV, the saved models and serving files.

Owns `images.parquet` (`OUTPUT_COLUMNS`), `pca.csv` (one file, or a folder of CSV parts above
`single_csv_max_rows`), `models/`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits.csv_output import CsvForm, write_csv

if TYPE_CHECKING:
    from fruits.artifact import ModelArtifact
    from fruits.reduce import Reducer
    from fruits.stage import Run

log = logging.getLogger(__name__)

# length, modification_time and content_hash are the incremental runs' manifest (incremental.py)
OUTPUT_COLUMNS = (
    "path",
    "label",
    "split",
    "features",
    "pca",
    "length",
    "modification_time",
    "content_hash",
)


def write_images(run: Run, reducer: Reducer, ok: DataFrame) -> DataFrame:
    """Project every usable image, write `images.parquet` and the fitted scaler + PCA."""
    projected = reducer.transform(ok).select(*OUTPUT_COLUMNS)
    # One file per ~128 MB read partition of the staged features (maxPartitionBytes), so the
    # file count grows with bytes, never with the image count; or a fixed count.
    if run.cfg.output_files:
        projected = projected.coalesce(run.cfg.output_files)
    projected.write.parquet(run.uri("images.parquet"))
    reducer.model.write().overwrite().save(run.uri("models", "scaler_pca"))
    log.info("reduce: k=%d keeps %.2f%% of the variance", reducer.k, 100 * reducer.cumulative)
    return run.spark.read.parquet(run.uri("images.parquet"))


def write_pca_csv(run: Run, images: DataFrame, k: int, *, rows: int) -> CsvForm:
    """`pca.csv`: `path, label, split, pc_1 … pc_k`; `rows` (the usable images, already counted
    by the caller) picks one file or a folder of parts without another Spark job."""
    pcs = [F.element_at("pca", i + 1).alias(f"pc_{i + 1}") for i in range(k)]
    return write_csv(
        run.store,
        images.select("path", "label", "split", *pcs),
        run.uri("pca.csv"),
        rows=rows,
        max_rows=run.cfg.single_csv_max_rows,
    )


def save_backbone(run: Run, artifact: ModelArtifact) -> None:
    """The exact CNN graph the run used, for serving."""
    from fruits.artifact import save_artifact

    save_artifact(artifact, run.local / "models")
    (run.local / "plots").mkdir(exist_ok=True)
