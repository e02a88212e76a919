"""`fruits serve` on folders it must refuse: one line on stderr naming the problem, exit 2, and
no server started (no traceback from inside uvicorn's start-up)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fruits.cli import app
from fruits.predictor import ServingError, check_run

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _make_stub_run(folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location("fruits_bench_load", ROOT / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_stub_run(folder)


@pytest.fixture(scope="module")
def stub_run(tmp_path_factory) -> Path:
    return _make_stub_run(tmp_path_factory.mktemp("stub") / "run")


@pytest.fixture
def run_copy(stub_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(stub_run, copy)
    return copy


def _refused(run: Path) -> str:
    """`fruits serve --run run`: exit 2 and the one stderr line."""
    res = runner.invoke(app, ["serve", "--run", str(run), "--port", "1"])
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: cannot serve {run}: ")
    assert "Traceback" not in res.output
    return lines[0]


def test_an_intact_run_passes_the_check(stub_run):
    assert check_run(stub_run)["run_id"] == "stub"


def test_a_run_without_its_success_marker_is_refused(run_copy):
    (run_copy / "_SUCCESS.json").unlink()
    line = _refused(run_copy)
    assert "_SUCCESS.json is missing" in line and "not a finished" in line


def test_an_mlflow_models_copy_of_a_run_needs_no_marker(stub_run, tmp_path):
    """`fruits serve --run models:/...` serves `<model>/artifacts/run`, which holds only the
    run's models/ folder (chain.log_model): logged from a finished run, it has no marker."""
    model = tmp_path / "model"
    shutil.copytree(stub_run / "models", model / "artifacts" / "run" / "models")
    (model / "MLmodel").write_text("flavors: {}\n")
    assert check_run(model / "artifacts" / "run")["run_id"] == "stub"
    (model / "MLmodel").unlink()
    with pytest.raises(ServingError, match=r"_SUCCESS\.json is missing"):
        check_run(model / "artifacts" / "run")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b"not a zip at all"), id="garbage"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), id="cut"),
        pytest.param(lambda p: np.savez(p, mean=np.zeros(3)), id="arrays-missing"),
    ],
)
def test_a_corrupt_serving_npz_is_named(run_copy, damage):
    damage(run_copy / "models" / "serving.npz")
    line = _refused(run_copy)
    assert str(run_copy / "models" / "serving.npz") in line


@pytest.mark.parametrize(
    "payload",
    [b"\x08\x07garbage that is no protobuf", b""],
    ids=["garbage", "empty"],
)
def test_a_corrupt_backbone_onnx_is_named(run_copy, payload):
    onnx = run_copy / "models" / "backbone.onnx"
    onnx.write_bytes(payload)
    line = _refused(run_copy)
    assert str(onnx) in line


def test_a_cut_backbone_onnx_is_named(run_copy):
    onnx = run_copy / "models" / "backbone.onnx"
    onnx.write_bytes(onnx.read_bytes()[:40])
    assert str(onnx) in _refused(run_copy)


@pytest.mark.parametrize("name", ["serving.json", "backbone.json"])
def test_unreadable_json_is_named(run_copy, name):
    (run_copy / "models" / name).write_text("{not json")
    line = _refused(run_copy)
    assert str(run_copy / "models" / name) in line and "not valid JSON" in line


def test_check_run_raises_serving_error_for_the_api_too(run_copy):
    (run_copy / "models" / "serving.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ServingError, match=r"serving\.npz is corrupt"):
        check_run(run_copy)
