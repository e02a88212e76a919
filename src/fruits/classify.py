"""Classify: multinomial logistic regression on the PCA features, judged on the test split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import StringIndexer
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits.calibration import Calibration
from fruits.config import ClassifierConfig
from fruits.ingest import local_path

X = "_x"
Y = "_y"


@dataclass
class Evaluation:
    """Test-split metrics; `confusion[i][j]` counts true class i predicted as class j.

    `macro_f1` is scikit-learn's default (`f1_score(average="macro")`): the mean over every
    class that is true or predicted at least once, so a class the model answers but the split
    never holds counts 0. `macro_f1_true_classes` averages only the classes the split holds
    (what earlier reports called macro-F1: 0.878 against the default's 0.702 on one run)."""

    labels: list[str]
    confusion: list[list[int]]
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    split: str = "test"
    recognition: dict[str, Any] | None = None
    macro_f1_true_classes: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "macro_f1_labels": "true or predicted (scikit-learn's default)",
            "macro_f1_true_classes": self.macro_f1_true_classes,
            "per_class": self.per_class,
        }


def fit_classifier(
    train: DataFrame, cfg: ClassifierConfig | None = None, *, features: str = "pca"
) -> PipelineModel:
    """Label indexing + logistic regression as one Spark ML pipeline, saved with the run."""
    cfg = cfg or ClassifierConfig()
    data = train.select(array_to_vector(F.col(features)).alias(X), F.col("label"))
    indexer = StringIndexer(
        inputCol="label", outputCol=Y, handleInvalid="keep", stringOrderType="alphabetAsc"
    )
    lr = LogisticRegression(
        featuresCol=X,
        labelCol=Y,
        family="multinomial",
        maxIter=cfg.max_iter,
        regParam=cfg.reg_param,
        elasticNetParam=cfg.elastic_net,
        standardization=False,
    )
    return Pipeline(stages=[indexer, lr]).fit(data)


def class_labels(model: PipelineModel) -> list[str]:
    return list(model.stages[0].labels)


def predict(model: PipelineModel, df: DataFrame, *, features: str = "pca") -> DataFrame:
    """Adds `predicted_label` and `probability` (array<double>, in `class_labels` order)."""
    from pyspark.ml.functions import vector_to_array

    labels = class_labels(model)
    scored = model.transform(df.withColumn(X, array_to_vector(F.col(features))))
    mapping = F.array(*[F.lit(x) for x in labels])
    return scored.select(
        *df.columns,
        F.element_at(mapping, F.col("prediction").cast("int") + 1).alias("predicted_label"),
        vector_to_array("probability").alias("probability"),
    )


def evaluate(model: PipelineModel, test: DataFrame, *, features: str = "pca") -> Evaluation:
    """Metrics from a confusion matrix aggregated by Spark (classes x classes rows only)."""
    labels = class_labels(model)
    counts = (
        predict(model, test, features=features)
        .groupBy("label", "predicted_label")
        .count()
        .collect()
    )
    names = sorted(set(labels) | {r["label"] for r in counts})
    index = {n: i for i, n in enumerate(names)}
    cm = np.zeros((len(names), len(names)), dtype=np.int64)
    for r in counts:
        cm[index[r["label"]], index[r["predicted_label"]]] += r["count"]
    return evaluation_from_confusion(names, cm)


def evaluation_from_confusion(names: list[str], cm: np.ndarray) -> Evaluation:
    """Accuracy, per-class figures and both macro-F1s (see `Evaluation`) from counts."""
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    seen = present | (predicted > 0)  # scikit-learn's labels: true or predicted
    per_class = {
        n: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, n in enumerate(names)
        if seen[i]
    }
    total = cm.sum()
    return Evaluation(
        labels=names,
        confusion=cm.tolist(),
        accuracy=float(tp.sum() / total) if total else 0.0,
        macro_f1=float(f1[seen].mean()) if seen.any() else 0.0,
        per_class=per_class,
        macro_f1_true_classes=float(f1[present].mean()) if present.any() else 0.0,
    )


def calibrate(
    arrays: Any,
    classes: list[str],
    images: DataFrame,
    *,
    sources: list[str],
    label_map: Any,
    planned: list[str] | None = None,
) -> Calibration:
    """Fit the temperature and the "not sure" threshold on the `val` split, then score the
    `val` and `test` splits per source with `recognition.metrics`.

    `sources`: the inputs as the user named them (report keys); `planned`: the same inputs as
    the storage plan reads them (`dbfs:/Volumes/...`, `abfss://...`), the spelling Spark lists
    image paths in, so `/Volumes`, `az://` and `https://` inputs keep their own figures and
    threshold instead of matching nothing and collapsing into one pool.

    The val and test rows (not the train rows) are collected to the driver: a tenth of the
    training data plus the test split, as k floats each (k <= a few hundred).
    """
    from fruits.recognition import (
        NEGATIVE,
        answer,
        choose_threshold,
        fit_temperature,
        metrics,
        softmax,
        species_table,
    )

    rows = (
        images.where(F.col("split").isin("val", "test"))
        .select("path", "label", "split", "pca")
        .collect()
    )
    species = species_table(classes, label_map)
    index = {c: i for i, c in enumerate(classes)}
    n = len(classes)
    pca = np.asarray([r["pca"] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    logits = (pca @ arrays.coef.T + arrays.intercept)[:, :n] if len(rows) else np.zeros((0, n))
    is_val = np.array([r["split"] == "val" and r["label"] in index for r in rows], dtype=bool)
    y = np.array([index.get(r["label"], 0) for r in rows], dtype=np.int64)
    # either spelling of each source: the user's and the planned one
    spellings = [{s, p} for s, p in zip(sources, planned or sources, strict=True)]
    where = [
        next((n for n, sp in enumerate(spellings) if _under_any(r["path"], sp)), -1) for r in rows
    ]
    group = np.array(where, dtype=np.int64)
    sizes = {g: int((is_val & (group == g)).sum()) for g in set(group[is_val].tolist())}
    weight = np.array([1.0 / max(sizes.get(g, 1), 1) for g in group])
    temperature = (
        fit_temperature(logits[is_val], y[is_val], weight[is_val]) if is_val.any() else 1.0
    )
    probs = softmax(logits, temperature) if len(rows) else logits
    open_answers = answer(probs, classes, species, 0.0)
    positive = np.array([r["label"] != NEGATIVE for r in rows], dtype=bool)
    threshold = choose_threshold(
        open_answers.species_probability[is_val], positive[is_val], group[is_val]
    )
    said = answer(probs, classes, species, threshold)
    by_part: dict[str, dict[str, Any]] = {}
    for split in ("val", "test"):
        for at, source in enumerate(sources):
            sel = [i for i, r in enumerate(rows) if r["split"] == split and where[i] == at]
            if not sel:
                continue
            truth = [_truth(rows[i]["path"], rows[i]["label"], label_map) for i in sel]
            part = _subset(said, sel)
            by_part.setdefault(split, {})[source] = metrics(
                part,
                [t[0] for t in truth],
                [t[1] for t in truth],
                [rows[i]["label"] == NEGATIVE for i in sel],
                species,
            )
    return Calibration(temperature, threshold, species, by_part)


def _under(path: str, source: str) -> bool:
    """Is `path` (as Spark lists it, `file:/...` for local files) below `source`? A volume
    matches under either spelling (`/Volumes/...`, `dbfs:/Volumes/...`)."""
    from fruits.storage.plan import volume_path

    def norm(uri: str) -> str:
        return volume_path(uri) or local_path(uri) or uri

    return norm(path).startswith(norm(source).rstrip("/") + "/")


def _under_any(path: str, spellings: set[str]) -> bool:
    return any(_under(path, s) for s in spellings)


def _truth(path: str, label: str, label_map: Any) -> tuple[set[str], set[str]]:
    """(classes right at variety level, classes right at species level) for one photo."""
    folder = path.rstrip("/").split("/")[-2]
    if label_map is not None and folder in label_map.target:
        return set(label_map.strict.get(folder, ())), set(label_map.lenient.get(folder, ()))
    return {label}, {label}


def _subset(ans: Any, sel: list[int]) -> Any:
    from fruits.recognition import Answers

    return Answers(
        [ans.label[i] for i in sel],
        [ans.species[i] for i in sel],
        ans.species_probability[sel],
        ans.known[sel],
        [ans.top5_species[i] for i in sel],
    )
