"""Export the fitted Spark chain for the Spark-free `Predictor` (predictor.py).

The pipeline calls `export_serving` right after the classifier is fitted; it writes
`models/serving.npz` (the arrays) and `models/serving.json` (classes and image settings) next to
`models/backbone.onnx`. Reading the fitted stages needs their Spark objects, so this half lives
apart from predictor.py, which a web process imports without Spark.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fruits.predictor import ARRAYS_FILE, FORMAT_VERSION, META_FILE, ServingArrays, read_json

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import SparkSession

    from fruits.config import FeaturizerConfig

__all__ = ["arrays_from_spark", "export_saved_run", "export_serving"]


def arrays_from_spark(reducer: PipelineModel, classifier: PipelineModel) -> ServingArrays:
    """Read the fitted stages: reducer = [StandardScalerModel, PCAModel], classifier =
    [StringIndexerModel, LogisticRegressionModel] (see reduce.py and classify.py)."""
    from fruits.reduce import reducer_arrays

    mean, scale, pc = reducer_arrays(reducer)
    lr = classifier.stages[-1]
    return ServingArrays(
        mean=mean,
        scale=scale,
        pc=pc,
        coef=np.asarray(lr.coefficientMatrix.toArray(), dtype=np.float64),
        intercept=np.asarray(lr.interceptVector.toArray(), dtype=np.float64),
    )


def export_serving(
    reducer: PipelineModel,
    classifier: PipelineModel,
    directory: str | Path,
    *,
    featurizer: FeaturizerConfig,
    run_id: str | None = None,
    recognition: dict[str, Any] | None = None,
) -> Path:
    """Write serving.npz + serving.json into a run's local models folder; `recognition`:
    temperature, threshold and species table (classify.calibrate)."""
    from fruits.classify import class_labels

    classes = class_labels(classifier)
    arrays = arrays_from_spark(reducer, classifier)
    arrays.validate(classes)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    np.savez(
        d / ARRAYS_FILE,
        mean=arrays.mean,
        scale=arrays.scale,
        pc=arrays.pc,
        coef=arrays.coef,
        intercept=arrays.intercept,
    )
    meta = {
        "format": FORMAT_VERSION,
        "run_id": run_id,
        "classes": classes,
        "image_size": featurizer.image_size,
        "max_pixels": featurizer.max_pixels,
        "views": featurizer.views,
        "feature_dim": int(arrays.pc.shape[0]),
        "pca_k": int(arrays.pc.shape[1]),
        "recognition": recognition,
    }
    (d / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return d / ARRAYS_FILE


def export_saved_run(spark: SparkSession, run: str | Path) -> Path:
    """Export a finished local run whose models predate serving.npz (needs Spark, once)."""
    from pyspark.ml import PipelineModel

    from fruits.config import FeaturizerConfig

    root = Path(run)
    report = read_json(root / "report.json")
    fcfg = (report.get("config") or {}).get("featurizer") or {}
    cfg = FeaturizerConfig(
        image_size=int(fcfg.get("image_size", FeaturizerConfig.image_size)),
        max_pixels=int(fcfg.get("max_pixels", FeaturizerConfig.max_pixels)),
    )
    reducer = PipelineModel.load(str(root / "models" / "scaler_pca"))
    classifier = PipelineModel.load(str(root / "models" / "classifier"))
    return export_serving(
        reducer, classifier, root / "models", featurizer=cfg, run_id=report.get("run_id")
    )
