"""MLflow tracking of a finished run: its settings, headline metrics, report, plots and model
(`chain.log_model`: the pyfunc model with the chain as one ONNX graph).

On when `MLFLOW_TRACKING_URI` is set (Databricks sets it on its clusters; `file:./mlruns` or a
server URL elsewhere), off otherwise. `MLFLOW_EXPERIMENT_NAME` picks the experiment, as MLflow
reads it. mlflow is imported only when tracking is on (`pip install 'fruits[mlflow]'`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fruits.azure import redact

log = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_TRACKING_URI"
# Register each run's model under this name (Unity Catalog: catalog.schema.model); unset: the
# model is logged with the run but not registered.
MODEL_NAME_ENV = "FRUITS_MLFLOW_MODEL_NAME"
METRICS = ("accuracy", "macro_f1", "pca_k", "pca_explained_variance", "images_per_second")
MAX_PARAM_CHARS = 500  # the smallest limit MLflow servers have enforced on a param value
# MLflow's own HTTP defaults (7 retries, backoff factor 2, 120 s per request) make an unreachable
# server fail after about 4 minutes (measured: 248 s), after the run's outputs are published.
# Ours, used only where the user set none: a dead server costs seconds, a slow one still works.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
PROBE_SECONDS = 5.0  # a TCP connect to the tracking server before anything is logged


class TrackingUnreachable(RuntimeError):
    """The tracking server does not answer: the run is not logged (its outputs stand)."""


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
        params[name] = redact(text)[:MAX_PARAM_CHARS]  # a URL's password or token stays here
    return params


def run_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a report; a metric the run did not produce (no test split: no
    accuracy) is left out rather than logged as 0."""
    return {
        key: float(report[key])
        for key in METRICS
        if isinstance(report.get(key), (int, float)) and not isinstance(report[key], bool)
    }


@contextlib.contextmanager
def http_defaults(env: dict[str, str] | None = None) -> Iterator[None]:
    """`HTTP_DEFAULTS` in the environment for the block, where the user set none; restored after
    (a library caller's process keeps its own settings)."""
    environ = os.environ if env is None else env
    added = [k for k in HTTP_DEFAULTS if k not in environ]
    for key in added:
        environ[key] = HTTP_DEFAULTS[key]
    try:
        yield
    finally:
        for key in added:
            environ.pop(key, None)


def probe(uri: str, timeout: float = PROBE_SECONDS) -> None:
    """Raise `TrackingUnreachable` when an http(s) tracking server refuses or ignores a TCP
    connection within `timeout` seconds; other URIs (`file:`, `databricks`) pass unchecked."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        raise TrackingUnreachable(
            f"{parts.hostname}:{port} does not answer ({exc.strerror or type(exc).__name__})"
        ) from None


def log_run(report: dict[str, Any], output_dir: str) -> str | None:
    """Log one pipeline run to MLflow; returns the MLflow run id, or None when tracking is off.

    `output_dir` is a local folder holding the run's `report.json` (written from `report` when
    absent) and `plots/`. The pipeline's outputs are already published when this is called, so a
    tracking failure is logged as one warning and does not fail the run: an http(s) server is
    probed first (`PROBE_SECONDS`) and MLflow's retries are bounded (`HTTP_DEFAULTS`). Whether
    the model was logged is recorded in `report["mlflow_model"]` (and MLflow's copy of
    report.json, and the `fruits.model_logged` tag); the published report.json predates it.
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
    uri = os.environ[TRACKING_ENV]
    try:
        probe(uri)
        with http_defaults():
            run_id = _log(mlflow, report, folder)
    except Exception as exc:  # the run's outputs stand; only its tracking record is missing
        log.warning(
            "MLflow tracking skipped, the run's outputs stand (%s at %s): %s",
            type(exc).__name__,
            redact(uri),
            redact(_first_line(exc)),
        )
        return None
    log.info("logged to MLflow: run %s at %s", run_id, redact(mlflow.get_tracking_uri()))
    return run_id


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _log(mlflow: Any, report: dict[str, Any], folder: Path) -> str:
    with mlflow.start_run(run_name=report.get("run_id")) as active:
        mlflow.log_params(flatten_params(report.get("config") or {}))
        mlflow.log_metrics(run_metrics(report))
        tags = {
            "fruits.run_id": report.get("run_id"),
            "fruits.output": report.get("output"),
            "fruits.version": (report.get("versions") or {}).get("fruits"),
            "fruits.backbone_id": (report.get("featurizer") or {}).get("id"),
        }
        mlflow.set_tags({k: redact(v) for k, v in tags.items() if v is not None})
        model = _log_model(folder) if (folder / "models" / "serving.npz").is_file() else None
        if model is not None:
            mlflow.set_tags(
                {
                    "fruits.model_logged": str(model["logged"]).lower(),
                    **({"fruits.model_not_logged": model["reason"]} if model["reason"] else {}),
                }
            )
            report["mlflow_model"] = model  # the caller's report (and MLflow's copy) say so
        if model is None and (folder / "report.json").is_file():
            mlflow.log_artifact(str(folder / "report.json"))
        else:
            mlflow.log_dict(report, "report.json")
        if (folder / "plots").is_dir():
            mlflow.log_artifacts(str(folder / "plots"), artifact_path="plots")
        run_id: str = active.info.run_id
    return run_id


def _log_model(folder: Path) -> dict[str, Any]:
    """Log the run's model; a failure is loud (one warning line naming the reason) and recorded,
    never silent: `{"logged": bool, "reason": str | None}`."""
    try:
        from fruits.chain import log_model

        log_model(folder, registered_name=os.environ.get(MODEL_NAME_ENV) or None)
    except Exception as exc:
        reason = redact(f"{type(exc).__name__}: {_first_line(exc)}")[:MAX_PARAM_CHARS]
        log.warning("MLflow: the model was NOT logged with the run: %s", reason)
        return {"logged": False, "reason": reason}
    return {"logged": True, "reason": None}
