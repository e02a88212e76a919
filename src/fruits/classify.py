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

X = "_x"
Y = "_y"


@dataclass(frozen=True)
class ClassifierConfig:
    """Defaults chosen on fruits-360-dev (see README, Accuracy)."""

    max_iter: int = 200
    reg_param: float = 1e-3
    elastic_net: float = 0.0


@dataclass
class Evaluation:
    """Test-split metrics; `confusion[i][j]` counts true class i predicted as class j."""

    labels: list[str]
    confusion: list[list[int]]
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "per_class": self.per_class}


def fit_classifier(
    train: DataFrame, cfg: ClassifierConfig | None = None, *, features: str = "pca"
) -> PipelineModel:
    """Label indexing + logistic regression as one Spark ML pipeline, saved with the run."""
    cfg = cfg or ClassifierConfig()
    data = train.select(array_to_vector(F.col(features)).alias(X), F.col("label"))
    indexer = StringIndexer(inputCol="label", outputCol=Y, handleInvalid="keep",
                            stringOrderType="alphabetAsc")  # fmt: skip
    lr = LogisticRegression(
        featuresCol=X, labelCol=Y, family="multinomial", maxIter=cfg.max_iter,
        regParam=cfg.reg_param, elasticNetParam=cfg.elastic_net, standardization=False,
    )  # fmt: skip
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
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    per_class = {
        n: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
            "support": int(support[i])}
        for i, n in enumerate(names) if present[i]
    }  # fmt: skip
    total = cm.sum()
    return Evaluation(
        labels=names,
        confusion=cm.tolist(),
        accuracy=float(tp.sum() / total) if total else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_class=per_class,
    )
