"""The run's chain outside Spark: one ONNX graph and an MLflow model, each answering as the
run's own serving does (fruits.chain, fruits.pyfunc)."""

from __future__ import annotations

import json
import os
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


def _mlflow_store(tmp_path, monkeypatch, experiment: str):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (in dev)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    monkeypatch.delenv("FRUITS_MLFLOW_MODEL_NAME", raising=False)
    return mlflow


def test_chain_onnx_carries_what_its_answer_needs(run_dir, predictor):
    """Metadata props: classes in order, the "unknown" slot, size, temperature, threshold and
    species map, read back with ONNX Runtime alone, equal to the run's serving.json."""
    import onnxruntime as ort

    from fruits.chain import chain_onnx

    session = ort.InferenceSession(chain_onnx(run_dir))
    props = session.get_modelmeta().custom_metadata_map
    serving = json.loads((run_dir / "models" / "serving.json").read_text())
    coef = np.load(run_dir / "models" / "serving.npz")["coef"]
    assert json.loads(props["fruits.classes"]) == serving["classes"] == predictor.classes
    assert int(props["fruits.outputs"]) == coef.shape[0]
    assert json.loads(props["fruits.unknown_slot"]) == (
        coef.shape[0] == len(serving["classes"]) + 1
    )
    assert int(props["fruits.image_size"]) == serving["image_size"]
    recognition = serving["recognition"]
    assert float(props["fruits.temperature"]) == recognition["temperature"]
    assert float(props["fruits.threshold"]) == recognition["threshold"]
    assert json.loads(props["fruits.species"]) == recognition["species"]
    assert "bilinear" in props["fruits.resize"]


def _as_torch_run(run_dir: Path, dest: Path) -> Path:
    """The run as an `--engine torch` run with the installed weights writes it: backbone.json
    says engine torch, and there is no backbone file (empty payload)."""
    import shutil

    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("*.parquet", "pca.csv*"))
    meta = json.loads((dest / "models" / "backbone.json").read_text())
    (dest / "models" / "backbone.json").write_text(json.dumps({**meta, "engine": "torch"}))
    (dest / "models" / "backbone.onnx").unlink()
    return dest


def test_torch_engine_run_logs_a_model_too(run_dir, predictor, test_files, tmp_path, monkeypatch):
    """B6: a torch-engine run's chain failed (its backbone is no ONNX graph) and the failure was
    swallowed. Its model now serves the same network as ONNX, with the same answers."""
    mlflow = _mlflow_store(tmp_path, monkeypatch, "fruits-torch-run")
    from fruits import tracking

    torch_run = _as_torch_run(run_dir, tmp_path / "torch-run")
    report = json.loads((torch_run / "report.json").read_text())
    run_id = tracking.log_run(report, str(torch_run))
    assert report["mlflow_model"] == {"logged": True, "reason": None}
    run = mlflow.tracking.MlflowClient().get_run(run_id)
    assert run.data.tags["fruits.model_logged"] == "true"
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    contents = [f.read_bytes() for f in test_files[::8]]
    got = loaded.predict(pd.DataFrame({"content": contents}))
    for row, data in zip(got.itertuples(), contents, strict=True):
        want = predictor.predict(data)
        assert (row.species, row.verdict, row.variety) == (want.species, want.verdict, want.variety)
        assert row.species_probability == pytest.approx(want.species_probability, abs=1e-5)


def test_a_model_that_cannot_be_logged_says_so(run_dir, tmp_path, monkeypatch, caplog):
    """B5: with MLflow 2's `log_model(artifact_path, ...)`, `name=` is a TypeError that was
    swallowed: the model silently missing. Now one warning naming the reason, a tag, and the
    report's `mlflow_model` say the model was not logged; the run itself is logged."""
    import logging

    mlflow = _mlflow_store(tmp_path, monkeypatch, "fruits-no-model")

    def mlflow2_log_model(artifact_path, python_model=None, artifacts=None, signature=None):
        raise AssertionError("not reached: MLflow 2 has no `name`")

    monkeypatch.setattr(mlflow.pyfunc, "log_model", mlflow2_log_model)
    from fruits import tracking

    report = json.loads((run_dir / "report.json").read_text())
    with caplog.at_level(logging.WARNING, logger="fruits"):
        run_id = tracking.log_run(report, str(run_dir))
    assert run_id is not None
    (warning,) = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("fruits")
    ]
    assert "model was NOT logged" in warning and "unexpected keyword argument" in warning
    assert report["mlflow_model"]["logged"] is False
    run = mlflow.tracking.MlflowClient().get_run(run_id)
    assert run.data.tags["fruits.model_logged"] == "false"
    assert "unexpected keyword argument" in run.data.tags["fruits.model_not_logged"]
    logged_report = mlflow.artifacts.load_dict(f"runs:/{run_id}/report.json")
    assert logged_report["mlflow_model"]["logged"] is False


def test_model_is_logged_without_onnx_and_says_so(run_dir, tmp_path, monkeypatch, caplog):
    """Where the onnx package is missing the model is still logged (it serves through ONNX
    Runtime), without chain.onnx, and a warning says so."""
    import logging
    import sys

    mlflow = _mlflow_store(tmp_path, monkeypatch, "fruits-no-onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    from fruits.chain import CHAIN_FILE, log_model

    with caplog.at_level(logging.WARNING, logger="fruits"), mlflow.start_run():
        info = log_model(run_dir)
    assert any(CHAIN_FILE in r.getMessage() for r in caplog.records)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert not (local / "artifacts" / "run" / "models" / CHAIN_FILE).exists()
    assert (local / "artifacts" / "run" / "models" / "backbone.onnx").is_file()


@pytest.mark.slow
def test_logged_model_runs_in_a_fresh_virtualenv(
    run_dir, predictor, test_files, tmp_path, monkeypatch
):
    """Issue 19.3: the model's requirements install into a new virtualenv (no system site
    packages, no checkout on sys.path) and the model answers there as serving does here."""
    import subprocess
    import sys

    mlflow = _mlflow_store(tmp_path, monkeypatch, "fruits-fresh-venv")
    from fruits.chain import log_model

    with mlflow.start_run():
        info = log_model(run_dir)
    model = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    requirements = (model / "requirements.txt").read_text()
    assert "fruits" not in requirements.lower()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "-r", str(model / "requirements.txt")],
        check=True,
        timeout=900,
        env=env,
        capture_output=True,
    )
    photos = [str(f) for f in test_files[::10]]
    script = (
        "import json, sys\n"
        "import pandas as pd\n"
        "import mlflow.pyfunc\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "import fruits\n"
        "assert fruits.__file__.startswith(sys.argv[1]), fruits.__file__\n"
        "content = [open(p, 'rb').read() for p in sys.argv[2:]] + [b'junk']\n"
        "out = model.predict(pd.DataFrame({'content': content}))\n"
        "print(json.dumps(out.to_dict(orient='records')))\n"
    )
    done = subprocess.run(
        [python, "-c", script, str(model), *photos],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert (
        rows[-1]["error"] == "not an image: format not recognised" and rows[-1]["species"] is None
    )
    for row, photo in zip(rows[:-1], photos, strict=True):
        want = predictor.predict(Path(photo).read_bytes())
        assert (row["species"], row["verdict"], row["variety"]) == (
            want.species,
            want.verdict,
            want.variety,
        )
        assert row["species_probability"] == pytest.approx(want.species_probability, abs=1e-6)


@pytest.mark.slow
def test_mlflow_models_serve_answers_one_request(
    run_dir, predictor, test_files, tmp_path, monkeypatch
):
    """`mlflow models serve --env-manager local`, the scoring server Databricks Model Serving
    runs, answers a JSON request (photos as base64) as `fruits serve` would."""
    import base64
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    mlflow = _mlflow_store(tmp_path, monkeypatch, "fruits-models-serve")
    from fruits.chain import log_model

    with mlflow.start_run():
        info = log_model(run_dir)
    model = mlflow.artifacts.download_artifacts(info.model_uri)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    serve = ["models", "serve", "-m", model, "--env-manager", "local", "-p", str(port)]
    server = subprocess.Popen(
        [f"{bin_dir}/mlflow", *serve, "-h", "127.0.0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow models serve exited"
                time.sleep(1)
        photo = test_files[0].read_bytes()
        body = {
            "dataframe_split": {
                "columns": ["content"],
                "data": [[base64.b64encode(photo).decode()], [base64.b64encode(b"junk").decode()]],
            }
        }
        request = urllib.request.Request(
            f"{base}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read().decode()
        answers = json.loads(text.replace("NaN", "null"))["predictions"]
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)  # mlflow and the uvicorn it started
        server.wait(timeout=60)
    want = predictor.predict(photo)
    assert (answers[0]["species"], answers[0]["verdict"]) == (want.species, want.verdict)
    assert answers[0]["species_probability"] == pytest.approx(want.species_probability, abs=1e-6)
    assert answers[1]["error"] == "not an image: format not recognised"
