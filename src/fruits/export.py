"""Export the fitted Spark chain for the Spark-free `Predictor` (predictor.py).

The pipeline calls `export_serving` right after the classifier is fitted; it writes
`models/serving.npz` (the arrays) and `models/serving.json` (classes and image settings) next to
`models/backbone.onnx`. Reading the fitted stages needs their Spark objects, so this half lives
apart from predictor.py, which a web process imports without Spark.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fruits.predictor import ARRAYS_FILE, FORMAT_VERSION, META_FILE, ServingArrays, read_json

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import LogisticRegressionModel
    from pyspark.ml.feature import StringIndexerModel
    from pyspark.sql import SparkSession

    from fruits.config import FeaturizerConfig

__all__ = [
    "arrays_from_spark",
    "class_labels",
    "export_saved_run",
    "export_serving",
    "reads_scaled",
    "saved_recognition",
]


def reads_scaled(classifier: PipelineModel, feature_dim: int) -> bool:
    """Does a saved classifier read the scaled features (its width is the CNN's) or the PCA?"""
    lr = cast("LogisticRegressionModel", classifier.stages[-1])
    return int(lr.numFeatures) == int(feature_dim)


def class_labels(model: PipelineModel) -> list[str]:
    """The classes of a saved [StringIndexerModel, LogisticRegressionModel], in index order."""
    return list(cast("StringIndexerModel", model.stages[0]).labels)


def arrays_from_spark(reducer: PipelineModel, classifier: PipelineModel) -> ServingArrays:
    """Read the fitted stages: reducer = [StandardScalerModel, PCAModel], classifier =
    [StringIndexerModel, LogisticRegressionModel] (see reduce.py and classify.py)."""
    from fruits.reduce import reducer_arrays

    mean, scale, pc = reducer_arrays(reducer)
    lr = cast("LogisticRegressionModel", classifier.stages[-1])
    return ServingArrays(
        mean=mean,
        scale=scale,
        pc=pc,
        coef=np.asarray(lr.coefficientMatrix.toArray(), dtype=np.float64),
        intercept=np.asarray(lr.interceptVector.toArray(), dtype=np.float64),
        reads="scaled" if reads_scaled(classifier, len(mean)) else "pca",
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
        reads=np.array(arrays.reads),
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
    """Export a finished local run whose models predate serving.npz (needs Spark, once).

    The run answers as it did: its own image settings and views (report.json `config`; a run
    whose config names no `views` predates multi-view features, so 1) and its own calibration
    (report.json `recognition`: temperature and "not sure" threshold; species from the run's
    label map where it is still readable). Without these the export said T = 1, threshold 0
    (never "not sure") and 8 views whatever the run used."""
    from pyspark.ml import PipelineModel

    from fruits.config import FeaturizerConfig

    root = Path(run)
    report = read_json(root / "report.json")
    config = report.get("config") or {}
    fcfg = config.get("featurizer") or {}
    cfg = FeaturizerConfig(
        image_size=int(fcfg.get("image_size", FeaturizerConfig.image_size)),
        max_pixels=int(fcfg.get("max_pixels", FeaturizerConfig.max_pixels)),
        views=int(fcfg.get("views", 1)),
    )
    reducer = PipelineModel.load(str(root / "models" / "scaler_pca"))
    classifier = PipelineModel.load(str(root / "models" / "classifier"))
    return export_serving(
        reducer,
        classifier,
        root / "models",
        featurizer=cfg,
        run_id=report.get("run_id"),
        recognition=saved_recognition(report, class_labels(classifier)),
    )


def saved_recognition(report: dict[str, Any], classes: list[str]) -> dict[str, Any] | None:
    """serving.json's `recognition` rebuilt from a run's report.json: None (T = 1, never
    unsure, as the run itself served) when the run kept no calibration."""
    from fruits.calibration import Calibration
    from fruits.recognition import LabelMapError, load_label_map, species_table

    kept = report.get("recognition") or (report.get("classification") or {}).get("recognition")
    if not kept or "temperature" not in kept:
        return None
    label_map = None
    path = (report.get("config") or {}).get("label_map")
    if path:
        try:
            label_map = load_label_map(path)
        except LabelMapError:  # moved or gone since the run: species from the facts table
            label_map = None
    species = species_table(classes, label_map)
    return Calibration(float(kept["temperature"]), float(kept["threshold"]), species).serving()
