"""MLflow tracking against a local file store: params, metrics, report and plots; off without
MLFLOW_TRACKING_URI."""

from __future__ import annotations

import json
import logging
import os

import pytest

from fruits import tracking

REPORT = {
    "run_id": "20261125-120000-abc",
    "output": "/tmp/fruits-output",
    "accuracy": 0.9375,
    "macro_f1": 0.93,
    "pca_k": 42,
    "pca_explained_variance": 0.951,
    "images_per_second": 12.5,
    "featurizer": {"id": "ae295d22139d6bb3", "engine": "onnx"},
    "versions": {"fruits": "0.1.0"},
    "config": {
        "input": "abfss://fruits@acct.dfs.core.windows.net/fruits-360",
        "on_error": "quarantine",
        "extensions": ["jpg", "png"],
        "featurizer": {"backbone": "efficientnet_lite0", "weights": None, "image_size": 100},
        "reduce": {"variance": 0.95, "k": None},
        "spark_conf": {},
    },
}


def _output(tmp_path):
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "pca_scatter.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (out / "report.json").write_text(json.dumps(REPORT))
    return out


def test_off_without_a_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.log_run(REPORT, str(_output(tmp_path))) is None
    assert not (tmp_path / "mlruns").exists()


def test_params_are_flat_strings_and_missing_metrics_are_left_out():
    params = tracking.flatten_params(REPORT["config"])
    assert params["featurizer.backbone"] == "efficientnet_lite0"
    assert params["featurizer.weights"] == "null" and params["extensions"] == '["jpg", "png"]'
    assert params["spark_conf"] == "{}"
    metrics = tracking.run_metrics({**REPORT, "accuracy": None, "macro_f1": None})
    assert metrics == {"pca_k": 42.0, "pca_explained_variance": 0.951, "images_per_second": 12.5}


def test_logs_params_metrics_report_and_plots(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (in dev)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "fruits-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: file store needs opting in
    run_id = tracking.log_run(REPORT, str(_output(tmp_path)))
    assert run_id is not None

    client = mlflow.tracking.MlflowClient()
    run = client.get_run(run_id)
    assert run.data.metrics == tracking.run_metrics(REPORT)
    assert set(run.data.metrics) == set(tracking.METRICS)
    assert run.data.params["featurizer.image_size"] == "100"
    assert run.data.params["on_error"] == "quarantine"
    assert run.data.tags["fruits.backbone_id"] == "ae295d22139d6bb3"
    assert run.info.run_name == REPORT["run_id"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert top == {"report.json", "plots"}
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/pca_scatter.png"]
    assert client.get_experiment(run.info.experiment_id).name == "fruits-test"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    """Was: MLflow's 7 retries with backoff, 248 s before the warning. Now a TCP probe says so
    at once; the password in the URI is not printed."""
    pytest.importorskip("mlflow", reason="the mlflow extra (in dev)")
    uri = f"http://alice:S3cretPw99@127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.INFO, logger="fruits"):
        assert tracking.log_run(REPORT, str(_output(tmp_path))) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "does not answer" in warnings[0] and "alice:***@127.0.0.1" in warnings[0]
    assert "S3cretPw99" not in caplog.text
    assert not any(name in os.environ for name in tracking.HTTP_DEFAULTS)  # restored


def test_http_defaults_only_where_the_user_set_none():
    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "600"}
    with tracking.http_defaults(env):
        assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "600"
        assert (
            env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
            == tracking.HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        )
    assert env == {"MLFLOW_HTTP_REQUEST_TIMEOUT": "600"}


def test_params_and_tags_never_carry_url_secrets(tmp_path, monkeypatch):
    """Even a report whose config was not redacted (a library caller's) logs no token."""
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (in dev)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    leaky = {
        **REPORT,
        "output": "https://acct.blob.core.windows.net/c/out?token=TokT0k3n777",
        "config": {
            **REPORT["config"],
            "remote": "sc://db.example:443/;token=TokT0k3n777;user_id=u",
            "featurizer": {"weights": "https://bob:PwPw1234@h/w.pth", "image_size": 100},
        },
    }
    run_id = tracking.log_run(leaky, str(_output(tmp_path)))
    run = mlflow.tracking.MlflowClient().get_run(run_id)
    assert run.data.params["remote"] == "sc://db.example:443/;token=***;user_id=u"
    assert run.data.params["featurizer.weights"] == "https://bob:***@h/w.pth"
    text = json.dumps([run.data.params, run.data.tags])
    assert "TokT0k3n777" not in text and "PwPw1234" not in text
