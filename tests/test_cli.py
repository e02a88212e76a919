"""The CLI as a user meets it, through Typer's test runner."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fruits.cli import app

runner = CliRunner()


@pytest.fixture()
def tiny_input(tmp_path, sample_dir):
    root = tmp_path / "in"
    for cls in ("Kiwi 1", "Orange 1"):
        for split, n in (("Training", 3), ("Test", 1)):
            dst = root / split / cls
            dst.mkdir(parents=True)
            for f in sorted((sample_dir / split / cls).iterdir())[:n]:
                shutil.copy(f, dst / f.name)
    return root


def test_run_prints_a_summary_and_where_it_wrote(spark, tiny_input, tmp_path):
    out = tmp_path / "result"
    res = runner.invoke(
        app, ["run", "--input", str(tiny_input), "--output", str(out), "--pca-k", "2"]
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    summary = json.loads(lines[-2])
    assert summary["images_ok"] == 8 and summary["images_quarantined"] == 0
    assert summary["classes"] == 2 and summary["pca_k"] == 2
    assert lines[-1] == f"outputs written to {out}"


def test_missing_input_is_one_line_and_exit_2(spark, tmp_path):
    res = runner.invoke(
        app, ["run", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]
    )
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: input not found: {tmp_path / 'missing'}"


def test_empty_input_is_one_line_and_exit_2(spark, tmp_path):
    (tmp_path / "empty").mkdir()
    res = runner.invoke(
        app, ["run", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]
    )
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error: no images under")
    assert not (tmp_path / "o").exists()


def test_missing_java_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    res = runner.invoke(app, ["run", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error: Java was not found")


def test_bad_option_value_is_rejected(tmp_path):
    res = runner.invoke(app, ["run", "--on-error", "ignore", "--output", str(tmp_path / "o")])
    assert res.exit_code == 2
    (line,) = res.stderr.strip().splitlines()  # one line, no box
    assert "Invalid value for '--on-error'" in line and "'quarantine', 'fail'" in line


def test_a_sas_token_in_a_weights_url_is_never_printed(spark, tiny_input, tmp_path):
    """The weights cannot be fetched (nothing listens there): one line, no signature."""
    url = "https://127.0.0.1:9/c/w.pt?sv=2024-05-04&sp=r&sig=TOPSECRETSIG%3D"
    res = runner.invoke(
        app,
        ["run", "--input", str(tiny_input), "--output", str(tmp_path / "o"),
         "--backbone", "mobilenet_v2", "--weights", url],
    )  # fmt: skip
    assert res.exit_code in (1, 2)
    assert "TOPSECRETSIG" not in res.output + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_evaluate_prints_the_recognition_metrics(sample_run, sample_dir):
    res = runner.invoke(
        app, ["evaluate", "--run", sample_run.output, "--input", str(sample_dir / "Test")]
    )
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["photos"] == 80 and result["species_top1"] >= 0.95
    assert result["refused_negatives"] is None  # no negatives given


def test_evaluate_on_an_empty_folder_is_one_line_and_exit_2(tmp_path):
    """It printed all-null metrics and exited 0, while `fruits run` refused the same folder."""
    (tmp_path / "empty").mkdir()
    res = runner.invoke(
        app, ["evaluate", "--run", str(tmp_path / "run"), "--input", str(tmp_path / "empty")]
    )
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"error: no images under {tmp_path / 'empty'} (extensions: jpg, jpeg, png)"
    )
    res = runner.invoke(
        app, ["evaluate", "--run", str(tmp_path / "run"), "--input", str(tmp_path / "missing")]
    )
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: input not found: {tmp_path / 'missing'}"


def test_evaluate_gives_reasons_for_files_it_cannot_read(sample_run, sample_dir, tmp_path):
    """A dangling link and a corrupt JPEG among good photos: metrics for the good ones, a
    reason for each bad one, exit 0."""
    root = tmp_path / "held-out"
    good = sorted((sample_dir / "Test" / "Kiwi 1").iterdir())[:3]
    (root / "Kiwi 1").mkdir(parents=True)
    for f in good:
        shutil.copy(f, root / "Kiwi 1" / f.name)
    (root / "Kiwi 1" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "Kiwi 1" / "corrupt.jpg").write_bytes(good[0].read_bytes()[:200])
    res = runner.invoke(app, ["evaluate", "--run", sample_run.output, "--input", str(root)])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["photos"] == 3 and result["species_top1"] == 1.0
    reasons = {Path(u["path"]).name: u["reason"] for u in result["unreadable"]}
    assert set(reasons) == {"gone.jpg", "corrupt.jpg"}
    assert reasons["gone.jpg"].startswith("unreadable: No such file")
    assert all(reasons.values())
