"""Incremental runs on a real local Spark with the real CNN, on a small copy of the sample.

The tests form one scenario on one input folder (an output stores absolute input paths, so
each step builds on the previous one): first run, add 10, nothing new, change one, delete one,
refit. They run in file order.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fruits.cli import app
from fruits.config import FeaturizerConfig, PipelineConfig
from fruits.incremental import escape_glob, read_paths
from fruits.ingest import read_images
from fruits.pipeline import run_pipeline

CLASSES = ("Banana 1", "Kiwi 1", "Lemon 1")


def images(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output / "images.parquet").set_index("path")


def published_run(output: Path) -> str:
    return json.loads((output / "_SUCCESS.json").read_text())["run_id"]


@pytest.fixture(scope="module")
def state(tmp_path_factory, sample_dir):
    """Input: 3 classes x (6 train + 2 test) + one empty file; 10 more images held back."""
    root = tmp_path_factory.mktemp("incremental")
    inp, out = root / "in", root / "out"
    spare = []
    for label in CLASSES:
        for split, keep in (("Training", 6), ("Test", 2)):
            files = sorted((sample_dir / split / label).iterdir())
            (inp / split / label).mkdir(parents=True)
            for f in files[:keep]:
                shutil.copy(f, inp / split / label / f.name)
            spare += [(f, inp / split / label / f.name) for f in files[keep : keep + 2]]
    (inp / "Training" / CLASSES[0] / "empty.jpg").write_bytes(b"")
    cfg = PipelineConfig(input=str(inp), output=str(out), incremental=True)
    return {"cfg": cfg, "in": inp, "out": out, "spare": spare[:10]}


@pytest.mark.slow
def test_first_incremental_run_without_output_processes_everything(spark, state):
    t0 = time.perf_counter()
    report = run_pipeline(state["cfg"], spark=spark).report
    state["full_seconds"] = time.perf_counter() - t0
    assert report["incremental"] is None  # nothing to build on: a full run
    assert report["images_processed"] == 25
    assert report["images_ok"] == 24 and report["images_quarantined"] == 1


@pytest.mark.slow
def test_adding_10_images_processes_10_and_leaves_existing_rows_untouched(spark, state):
    out = state["out"]
    before = images(out)
    k_before = json.loads((out / "report.json").read_text())["pca_k"]
    for src, dst in state["spare"]:
        shutil.copy(src, dst)
    report = run_pipeline(state["cfg"], spark=spark).report
    inc = report["incremental"]
    assert (report["images_processed"], inc["new"], inc["changed"], inc["deleted"]) == (
        10,
        10,
        0,
        0,
    )
    assert inc["unchanged"] == 25 and inc["refit"] is False
    after = images(out)
    assert len(after) == 34 and after.index.is_unique
    assert set(after.index) == set(before.index) | {f"file:{d}" for _, d in state["spare"]}
    assert report["pca_k"] == k_before  # the saved PCA was reused
    for path, row in before.iterrows():  # bit-for-bit: same features, same projection
        assert list(after.loc[path, "features"]) == list(row["features"])
        assert list(after.loc[path, "pca"]) == list(row["pca"])
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    assert list(quarantine["path"]) == [f"file:{state['in']}/Training/{CLASSES[0]}/empty.jpg"]


@pytest.mark.slow
def test_nothing_new_processes_nothing_fast_and_leaves_the_output_alone(spark, state):
    out = state["out"]
    run_id = published_run(out)
    t0 = time.perf_counter()
    result = CliRunner().invoke(
        app, ["run", "--input", str(state["in"]), "--output", str(out), "--incremental"]
    )
    seconds = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[0])
    assert summary["images_processed"] == 0 and summary["images_total"] == 35
    assert "left as it was" in result.output
    assert published_run(out) == run_id  # no new publish
    assert seconds < 0.5 * state["full_seconds"], (seconds, state["full_seconds"])


@pytest.mark.slow
def test_a_changed_file_is_processed_again(spark, state):
    out = state["out"]
    target = (
        state["in"]
        / "Training"
        / CLASSES[1]
        / sorted(os.listdir(state["in"] / "Training" / CLASSES[1]))[0]
    )
    key = f"file:{target}"
    before = images(out)
    other = next(p for p in sorted((state["in"] / "Training" / CLASSES[2]).iterdir()))
    target.write_bytes(other.read_bytes())  # new content under the same name
    os.utime(target, (time.time() + 5, time.time() + 5))
    report = run_pipeline(state["cfg"], spark=spark).report
    inc = report["incremental"]
    assert (report["images_processed"], inc["new"], inc["changed"]) == (1, 0, 1)
    after = images(out)
    assert len(after) == 34 and after.index.is_unique
    assert list(after.loc[key, "features"]) != list(before.loc[key, "features"])
    assert after.loc[key, "length"] == target.stat().st_size


@pytest.mark.slow
def test_a_deleted_file_is_reported_and_its_row_removed(spark, state):
    out = state["out"]
    gone = state["spare"][0][1]
    gone.unlink()
    report = run_pipeline(state["cfg"], spark=spark).report
    inc = report["incremental"]
    assert (report["images_processed"], inc["deleted"]) == (0, 1)
    assert inc["deleted_paths"] == [f"file:{gone}"]
    assert json.loads((out / "report.json").read_text())["incremental"]["deleted"] == 1
    after = images(out)
    assert len(after) == 33 and f"file:{gone}" not in after.index


@pytest.mark.slow
def test_refit_refits_on_every_image_without_recomputing_features(spark, state):
    out = state["out"]
    before = images(out)
    result = CliRunner().invoke(app, ["refit", "--input", str(state["in"]), "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["incremental"]["refit"] is True and report["images_processed"] == 0
    after = images(out)
    assert len(after) == 33
    for path, row in before.iterrows():  # stored features reused as they were
        assert list(after.loc[path, "features"]) == list(row["features"])


@pytest.mark.slow
def test_incremental_refuses_another_featurizer(spark, state):
    cfg = PipelineConfig(
        input=str(state["in"]), output=str(state["out"]), incremental=True,
        featurizer=FeaturizerConfig(image_size=192),
    )  # fmt: skip
    with pytest.raises(ValueError, match="run without --incremental"):
        run_pipeline(cfg, spark=spark)


def test_read_paths_opens_exactly_the_named_files_even_with_glob_characters(spark, tmp_path):
    """New files are opened by an explicit path list; `[1]`, `{a}`, `*`, `?` stay literal."""
    folder = tmp_path / "Training" / "Kiwi"
    folder.mkdir(parents=True)
    for name in ("odd [1] {a}*?.jpg", "odd 1 a.jpg", "other.jpg"):
        (folder / name).write_bytes(b"\xff\xd8 not really a jpeg " + name.encode())
    listed = read_images(spark, str(tmp_path)).files
    wanted = [f"file:{folder}/odd [1] {{a}}*?.jpg", f"file:{folder}/odd 1 a.jpg"]
    got = read_paths(spark, wanted, listed.columns, 10**6)
    assert got.columns == listed.columns
    rows = {r["path"]: r for r in got.collect()}
    assert sorted(rows) == sorted(wanted)
    assert rows[wanted[0]]["label"] == "Kiwi" and rows[wanted[0]]["split"] == "train"
    assert bytes(rows[wanted[0]]["content"]).endswith(b"odd [1] {a}*?.jpg")
    assert escape_glob("a[1]{b}*?.jpg") == "a\\[1\\]\\{b\\}\\*\\?.jpg"
