"""A run exported again from its saved Spark models (`export_saved_run`) answers like the run
itself: same calibration (temperature, "not sure" threshold, species), same views and sizes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fruits.export import export_saved_run
from fruits.predictor import ARRAYS_FILE, META_FILE, Predictor


@pytest.fixture(scope="module")
def run_dir(sample_run) -> Path:
    return Path(sample_run.output)


def _reexport(spark, run_dir: Path, tmp_path: Path, edit=None) -> Path:
    copy = tmp_path / "old-run"
    shutil.copytree(run_dir, copy)
    (copy / "models" / ARRAYS_FILE).unlink()
    (copy / "models" / META_FILE).unlink()
    if edit is not None:
        report = json.loads((copy / "report.json").read_text())
        edit(report)
        (copy / "report.json").write_text(json.dumps(report))
    export_saved_run(spark, copy)
    return copy


def test_an_exported_run_keeps_the_runs_calibration_and_answers_alike(spark, run_dir, tmp_path):
    copy = _reexport(spark, run_dir, tmp_path)
    old = json.loads((run_dir / "models" / META_FILE).read_text())
    new = json.loads((copy / "models" / META_FILE).read_text())
    report = json.loads((run_dir / "report.json").read_text())
    assert old["recognition"]["threshold"] == report["recognition"]["threshold"] > 0
    for key in ("classes", "image_size", "max_pixels", "views", "recognition", "run_id"):
        assert new[key] == old[key], key

    a, b = Predictor.load(run_dir), Predictor.load(copy)
    n = len(a.classes)
    rng = np.random.default_rng(0)
    cases = [np.full(n, 1.0 / n)]  # nothing stands out: "not sure" under the run's threshold
    cases += [rng.dirichlet(np.full(n, alpha)) for alpha in (0.3, 1.0, 3.0) for _ in range(10)]
    cases += [np.where(np.arange(n) == i, 0.99, 0.01 / (n - 1)) for i in range(n)]  # sure
    verdicts = []
    for probs in cases:
        x, y = a.top(probs, 3), b.top(probs, 3)
        assert (x.labels, x.verdict, x.species, x.variety) == (
            y.labels,
            y.verdict,
            y.species,
            y.variety,
        )
        np.testing.assert_allclose(x.probabilities, y.probabilities, rtol=1e-12)
        verdicts.append(x.verdict)
    assert verdicts[0] == "unsure" and "known" in verdicts


def test_an_exported_run_keeps_the_views_it_was_featurised_with(spark, run_dir, tmp_path):
    def one_view(report):
        report["config"]["featurizer"]["views"] = 1

    copy = _reexport(spark, run_dir, tmp_path, one_view)
    assert json.loads((copy / "models" / META_FILE).read_text())["views"] == 1
