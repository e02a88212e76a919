"""The run's chain outside Spark: one ONNX graph and an MLflow model, each answering as the
run's own serving does (fruits.chain, fruits.pyfunc)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

from fruits.predictor import Predictor

onnx = pytest.importorskip("onnx", reason="the mlflow extra (in dev)")


@pytest.fixture(scope="module")
def run_dir(sample_run) -> Path:
    return Path(unquote(urlparse(sample_run.output).path))


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor.load(run_dir, threads=2)


@pytest.fixture(scope="module")
def test_files(sample_dir) -> list[Path]:
    return sorted((sample_dir / "Test").glob("*/*.jpg"))


def test_one_onnx_graph_predicts_what_serving_predicts(run_dir, predictor, test_files):
    import onnxruntime as ort

    from fruits.chain import chain_onnx
    from fruits.images import decode_image

    graph = chain_onnx(run_dir)
    model = onnx.load_from_string(graph)
    assert [i.name for i in model.graph.input] == ["image"]
    assert json.loads(model.doc_string)["classes"] == predictor.classes
    session = ort.InferenceSession(graph)
    pixels = np.stack(
        [
            decode_image(f.read_bytes(), size=predictor.image_size, max_pixels=predictor.max_pixels)
            for f in test_files
        ]
    )
    probability, features = session.run(["probability", "features"], {"image": pixels})
    served = predictor.probabilities_from_pixels(pixels)
    assert len(test_files) >= 80
    assert (probability.argmax(axis=1) == served.argmax(axis=1)).all()
    np.testing.assert_allclose(probability, served, atol=1e-4)
    np.testing.assert_allclose(features, predictor.featurizer(pixels), atol=1e-5)


def test_mlflow_model_reloaded_answers_as_serving(
    run_dir, predictor, test_files, tmp_path, monkeypatch
):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (in dev)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())  # skinny: file store
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "fruits-chain-test")
    from fruits.chain import CHAIN_FILE, load_predictor, log_model

    with mlflow.start_run():
        info = log_model(run_dir, registered_name="fruits_classifier")
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    contents = [f.read_bytes() for f in test_files] + [b"not an image"]
    got = loaded.predict(pd.DataFrame({"content": contents}))
    assert len(got) == len(contents)
    assert got["error"].iloc[-1] == "not an image: format not recognised"
    assert got["species"].iloc[-1] is None and got["error"].iloc[:-1].isna().all()
    for row, data in zip(got.iloc[:-1].itertuples(), contents[:-1], strict=True):
        want = predictor.predict(data)
        assert (row.species, row.verdict, row.variety) == (want.species, want.verdict, want.variety)
        assert row.species_probability == pytest.approx(want.species_probability, abs=1e-6)
    # Registered (a Unity Catalog name on Databricks), and servable by `fruits serve --model`.
    again = load_predictor("models:/fruits_classifier/1")
    assert again.classes == predictor.classes
    assert again.predict(contents[0]).species == predictor.predict(contents[0]).species
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert (local / "artifacts" / "run" / "models" / CHAIN_FILE).stat().st_size > 1 << 20


def test_tracking_logs_the_model_with_the_run(run_dir, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (in dev)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("FRUITS_MLFLOW_MODEL_NAME", raising=False)
    from fruits import tracking

    report = json.loads((run_dir / "report.json").read_text())
    run_id = tracking.log_run(report, str(run_dir))
    assert run_id is not None
    logged = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert logged.metadata.get_input_schema().input_names() == ["content"]


def test_serve_refuses_an_unknown_logged_model_in_one_line(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra (in dev)")
    pytest.importorskip("fastapi", reason="the serve extra (in dev)")
    from typer.testing import CliRunner

    from fruits.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    result = CliRunner().invoke(app, ["serve", "--run", "models:/no_such_model/1"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot fetch models:/no_such_model/1")
