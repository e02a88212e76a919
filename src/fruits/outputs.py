"""Outputs: the reduced image table, the CSV, the saved models and serving files.

Owns `images.parquet` (`OUTPUT_COLUMNS`), `pca.csv` (one file, or a folder of CSV parts above
`single_csv_max_rows`), `models/`.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from fruits.storage import Store

log = logging.getLogger(__name__)

CsvForm = Literal["file", "folder"]  # how a CSV output was written: one file or a part folder

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


def count_by_split(rows: list[Any]) -> dict[str, int]:
    """{split: images} from (split, label, count) rows."""
    splits: dict[str, int] = {}
    for r in rows:
        splits[r["split"]] = splits.get(r["split"], 0) + int(r["count"])
    return splits


def write_images(run: Any, reducer: Any, ok: DataFrame) -> DataFrame:
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


def write_pca_csv(run: Any, images: DataFrame, k: int, *, rows: int) -> CsvForm:
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


def save_backbone(run: Any, artifact: Any) -> None:
    """The exact CNN graph the run used, for serving."""
    from fruits.features import save_artifact

    save_artifact(artifact, run.local / "models")
    (run.local / "plots").mkdir(exist_ok=True)


def classify(run: Any, reducer: Any, images: DataFrame, splits: dict[str, int], prev: Any) -> Any:
    """Fit (or, incrementally, reuse) the classifier, calibrate it on the val split, save it
    and its serving arrays, and evaluate it on the test split (else the val split)."""
    from fruits.classify import calibrate, class_labels, evaluate, fit_classifier, reads_scaled
    from fruits.export import arrays_from_spark, export_serving
    from fruits.report import plot_confusion

    scaler = reducer.model.stages[0]  # the run's fitted StandardScalerModel
    if prev.classifier_path:  # incremental: no refit
        from fruits.incremental import load_classifier

        model = load_classifier(prev.classifier_path)
        if not reads_scaled(model, len(scaler.mean)):  # a run from before: it reads the PCA
            scaler = None
    else:
        from fruits.pipeline import train_part  # the one rule, shared with the reducer's fit

        model = fit_classifier(train_part(images, splits), scaler=scaler)
    model.write().overwrite().save(run.uri("models", "classifier"))
    classes = class_labels(model)
    planned = [uri for _, uri in run.io.inputs]  # the spelling Spark lists paths in
    held = None
    labelled = sum(role == "labelled" for _, role in run.cfg.sources)
    # two labelled sources at least: each held-out fruit source is then judged by a classifier
    # that still knows fruit (the sample plus negatives alone keeps the val split's fit)
    if run.cfg.held_out_calibration and labelled >= 2 and not prev.classifier_path:
        from fruits.classify import out_of_source

        spellings = [{s, p} for s, p in zip(run.inputs, planned, strict=True)]
        held = out_of_source(images, spellings, scaler=scaler) or None
    calibration = calibrate(
        arrays_from_spark(reducer.model, model),
        classes,
        images,
        sources=run.inputs,
        label_map=getattr(run, "label_map", None),
        planned=planned,
        held=held,
    )
    export_serving(
        reducer.model,
        model,
        run.local / "models",
        featurizer=run.cfg.featurizer,
        run_id=run.run_id,
        recognition=calibration.serving(),
    )
    judged = "test" if splits.get("test") else "val"
    evaluation = evaluate(model, images.where(F.col("split") == judged), scaler=scaler)
    evaluation.split = judged
    evaluation.recognition = {
        "temperature": calibration.temperature,
        "threshold": calibration.threshold,
        **calibration.metrics,
    }
    plot = run.local / "plots" / "confusion_matrix.png"
    plot_confusion(evaluation.labels, evaluation.confusion, plot)
    log.info(
        "classify: %s accuracy %.4f, macro-F1 %.4f",
        judged,
        evaluation.accuracy,
        evaluation.macro_f1,
    )
    return evaluation


def csv_form(rows: int, max_rows: int) -> CsvForm:
    """`file` up to `max_rows` rows (0: no limit), else `folder`: the one rule `write_csv` and
    the report both read, so the report says what was written without listing the output."""
    return "file" if max_rows == 0 or rows <= max_rows else "folder"


def write_csv(store: Store, df: DataFrame, uri: str, *, rows: int, max_rows: int) -> CsvForm:
    """A CSV with a header at `uri`: one plain file while `rows` <= `max_rows` (or `max_rows`
    is 0), which is what a person opens; above it, Spark's CSV folder, one part per partition
    written in parallel, each part with its own header, because one file means `coalesce(1)`:
    one task writing every row (docs/scaling.md). Returns the form written."""
    form = csv_form(rows, max_rows)
    df = neutralise_formulas(df)
    if form == "file":
        single_csv(store, df, uri)
    else:
        csv_writer(df).csv(uri)
    log.info("csv: %s written as a %s (%d rows, limit %d)", uri, form, rows, max_rows)
    return form


# Cells a spreadsheet would run as a formula (OWASP "CSV injection"): `=`, `+`, `-`, `@`, and a
# leading tab or carriage return that some programs strip before looking.
FORMULA_START = "^[=+\\-@\t\r]"


def neutralise_formulas(df: DataFrame) -> DataFrame:
    """Text cells starting like a formula get a leading `'`, so a spreadsheet shows the text
    instead of running it (a folder named `=HYPERLINK(...)` becomes a label). CSV only: the
    Parquet outputs keep the raw values, which is what programs read."""
    cols = []
    for field in df.schema.fields:
        col = F.col(field.name)
        if isinstance(field.dataType, StringType):
            col = F.when(col.rlike(FORMULA_START), F.concat(F.lit("'"), col)).otherwise(col)
        cols.append(col.alias(field.name))
    return df.select(*cols)


def csv_writer(df: DataFrame) -> Any:
    """Spark's CSV writer set for RFC 4180: a header, fields quoted with `"` and a `"` inside
    one doubled (Spark's default escapes it with a backslash, which Python's `csv`, pandas and
    spreadsheets read as two broken fields)."""
    return (
        df.write.option("header", "true")
        .option("quote", '"')
        .option("escape", '"')
        .option("encoding", "UTF-8")
    )


def single_csv(store: Store, df: DataFrame, uri: str) -> None:
    """One plain CSV file with a header (a Spark CSV folder, renamed to a file)."""
    tmp = uri + ".parts"
    csv_writer(df.coalesce(1)).csv(tmp)
    parts = [p for p in store.list(tmp) if p.rstrip("/").rpartition("/")[2].startswith("part-")]
    if len(parts) != 1:
        raise RuntimeError(f"expected one CSV part in {tmp}, found {len(parts)}")
    store.rename(parts[0], uri)
    store.delete(tmp)
