"""MLflow tracking of a finished run: its settings, headline metrics, report, plots and model
(`chain.log_model`: the pyfunc model with the chain as one ONNX graph).

On when `MLFLOW_TRACKING_URI` is set (Databricks sets it on its clusters; `file:./mlruns` or a
server URL elsewhere), off otherwise. `MLFLOW_EXPERIMENT_NAME` picks the experiment, as MLflow
reads it. mlflow is imported only when tracking is on (`pip install 'fruits[mlflow]'`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_TRACKING_URI"
# Register each run's model under this name (Unity Catalog: catalog.schema.model); unset: the
# model is logged with the run but not registered.
MODEL_NAME_ENV = "FRUITS_MLFLOW_MODEL_NAME"
METRICS = ("accuracy", "macro_f1", "pca_k", "pca_explained_variance", "images_per_second")
MAX_PARAM_CHARS = 500  # the smallest limit MLflow servers have enforced on a param value


def enabled() -> bool:
    return bool(os.environ.get(TRACKING_ENV))


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"featurizer.engine": "auto", ...}; lists as JSON, values truncated."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            params.update(flatten_params(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        params[name] = text[:MAX_PARAM_CHARS]
    return params


def run_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a report; a metric the run did not produce (no test split: no
    accuracy) is left out rather than logged as 0."""
    return {
        key: float(report[key])
        for key in METRICS
        if isinstance(report.get(key), (int, float)) and not isinstance(report[key], bool)
    }


def log_run(report: dict[str, Any], output_dir: str) -> str | None:
    """Log one pipeline run to MLflow; returns the MLflow run id, or None when tracking is off.

    `output_dir` is a local folder holding the run's `report.json` (written from `report` when
    absent) and `plots/`. The pipeline's outputs are already published when this is called, so a
    tracking failure is logged as a warning and does not fail the run.
    """
    if not enabled():
        return None
    try:
        import mlflow
    except ImportError:
        log.warning(
            "%s is set but mlflow is not installed: pip install 'fruits[mlflow]'", TRACKING_ENV
        )
        return None
    folder = Path(output_dir)
    try:
        with mlflow.start_run(run_name=report.get("run_id")) as active:
            mlflow.log_params(flatten_params(report.get("config") or {}))
            mlflow.log_metrics(run_metrics(report))
            tags = {
                "fruits.run_id": report.get("run_id"),
                "fruits.output": report.get("output"),
                "fruits.version": (report.get("versions") or {}).get("fruits"),
                "fruits.backbone_id": (report.get("featurizer") or {}).get("id"),
            }
            mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})
            if (folder / "report.json").is_file():
                mlflow.log_artifact(str(folder / "report.json"))
            else:
                mlflow.log_dict(report, "report.json")
            if (folder / "plots").is_dir():
                mlflow.log_artifacts(str(folder / "plots"), artifact_path="plots")
            if (folder / "models" / "serving.npz").is_file():  # a classifier was trained
                from fruits.chain import log_model

                log_model(folder, registered_name=os.environ.get(MODEL_NAME_ENV) or None)
            run_id: str = active.info.run_id
    except Exception as exc:  # the run's outputs stand; only its tracking record is missing
        log.warning("MLflow tracking failed (%s): %s", type(exc).__name__, exc)
        return None
    log.info("logged to MLflow: run %s at %s", run_id, mlflow.get_tracking_uri())
    return run_id
