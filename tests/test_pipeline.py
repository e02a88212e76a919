"""The end-to-end run: real weights, real JPEGs, real local Spark."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from imagegen import bomb_png, truncated_jpeg, write
from pyspark.ml import PipelineModel

from fruits.config import PipelineConfig, ReduceConfig
from fruits.pipeline import ImageFailure, run_pipeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sample_run_reports_what_the_readme_promises(sample_run):
    r = sample_run.report
    assert (r["images_total"], r["images_ok"], r["images_quarantined"]) == (320, 320, 0)
    assert r["classes"] == 10
    assert r["feature_dim"] == 1280
    assert r["pca_explained_variance"] >= 0.95
    assert 1 <= r["pca_k"] < 240
    assert r["pca_fitted_on"] == "train"
    assert r["accuracy"] >= 0.99 and r["macro_f1"] >= 0.99  # 80 test images, real weights
    assert r["images_by_split"]["test"] == 80 and r["images_by_split"]["val"] > 0
    assert {"ingest", "featurize", "reduce", "report"} <= set(r["stage_seconds"])
    assert r["images_per_second"] > 0
    on_disk = json.loads((Path(sample_run.output) / "report.json").read_text())
    assert on_disk["pca_k"] == r["pca_k"] and on_disk["run_id"] == r["run_id"]


def test_outputs_read_back_with_pandas_and_pyarrow(sample_run):
    out = Path(sample_run.output)
    k = sample_run.report["pca_k"]
    table = pq.read_table(out / "images.parquet")
    assert {"path", "label", "split", "features", "pca"} <= set(table.column_names)
    images = table.to_pandas()
    assert len(images) == 320 and images["path"].is_unique
    assert {len(v) for v in images["features"]} == {1280}
    assert {len(v) for v in images["pca"]} == {k}
    assert str(table.schema.field("features").type) == "list<element: float>"
    assert sorted(images["split"].unique()) == ["guard", "test", "train", "val"]
    by_split = images.groupby("split").size().to_dict()
    assert by_split["test"] == 80 and by_split["train"] + by_split["val"] + by_split["guard"] == 240

    csv = pd.read_csv(out / "pca.csv")
    assert list(csv.columns) == ["path", "label", "split"] + [f"pc_{i}" for i in range(1, k + 1)]
    assert len(csv) == 320
    merged = csv.merge(images[["path", "pca"]], on="path")
    first = merged.iloc[0]
    assert first["pc_1"] == pytest.approx(first["pca"][0], rel=1e-5)

    quarantine = pd.read_csv(out / "quarantine.csv")
    assert list(quarantine.columns) == ["path", "reason"] and quarantine.empty

    for plot in ("explained_variance.png", "pca_scatter.png", "confusion_matrix.png"):
        assert (out / "plots" / plot).read_bytes()[:8] == PNG_MAGIC
    assert (out / "_SUCCESS.json").exists()
    assert not list(out.parent.glob(".out.*")), "no staging or old folder left behind"


def test_fitted_models_reload_and_reproduce_the_projection(sample_run, spark):
    out = sample_run.output
    model = PipelineModel.load(f"{out}/models/scaler_pca")
    assert model.stages[-1].getK() == sample_run.report["pca_k"]
    assert PipelineModel.load(f"{out}/models/classifier") is not None
    from fruits.reduce import load_reducer

    reducer = load_reducer(f"{out}/models/scaler_pca")
    images = spark.read.parquet(f"{out}/images.parquet").limit(5)
    again = reducer.transform(images.drop("pca")).toPandas().sort_values("path")
    before = images.toPandas().sort_values("path")
    for a, b in zip(again["pca"], before["pca"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.fixture()
def small_input(tmp_path, sample_dir):
    """Three classes, 4 train + 2 test images each, copied from the sample."""
    root = tmp_path / "in"
    for cls in ("Banana 1", "Lemon 1", "Strawberry 1"):
        for split, n in (("Training", 4), ("Test", 2)):
            src = sorted((sample_dir / split / cls).iterdir())[:n]
            dst = root / split / cls
            dst.mkdir(parents=True)
            for f in src:
                shutil.copy(f, dst / f.name)
    return root


def _config(input_dir: Path, output: Path, **kw) -> PipelineConfig:
    return PipelineConfig(input=str(input_dir), output=str(output), reduce=ReduceConfig(k=3), **kw)


def test_bad_files_are_quarantined_with_reasons_and_the_run_goes_on(spark, small_input, tmp_path):
    bad = {
        "corrupt.jpg": b"\xff\xd8\xff\xe0 garbage garbage garbage",
        "empty.jpg": b"",
        "notes.jpg": b"plain text pretending to be a JPEG\n",
        "half.jpg": truncated_jpeg(),
        "bomb.png": bomb_png(),
    }
    for name, data in bad.items():
        write(small_input / "Training" / "Lemon 1" / name, data)
    result = run_pipeline(_config(small_input, tmp_path / "out"), spark=spark)
    r = result.report
    assert (r["images_total"], r["images_ok"], r["images_quarantined"]) == (23, 18, 5)
    q = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    reasons = {Path(p).name: reason for p, reason in zip(q["path"], q["reason"], strict=True)}
    assert set(reasons) == set(bad)
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["notes.jpg"].startswith("not an image")
    assert reasons["half.jpg"].startswith("corrupt or truncated")
    assert reasons["bomb.png"].startswith("image too large: 30000x30000")
    images = pd.read_parquet(tmp_path / "out" / "images.parquet")
    assert len(images) == 18 and not set(images["path"].map(lambda p: Path(p).name)) & set(bad)


def test_rerun_replaces_the_output_cleanly(spark, small_input, tmp_path):
    out = tmp_path / "out"
    first = run_pipeline(_config(small_input, out), spark=spark)
    (out / "stray-file-from-an-older-run.txt").write_text("x")
    second = run_pipeline(_config(small_input, out), spark=spark)
    assert first.report["run_id"] != second.report["run_id"]
    assert json.loads((out / "report.json").read_text())["run_id"] == second.report["run_id"]
    assert not (out / "stray-file-from-an-older-run.txt").exists()
    assert len(pd.read_parquet(out / "images.parquet")) == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_on_error_fail_stops_with_the_file_and_keeps_the_previous_output(
    spark, small_input, tmp_path
):
    out = tmp_path / "out"
    run_pipeline(_config(small_input, out), spark=spark)
    before = json.loads((out / "report.json").read_text())["run_id"]
    write(small_input / "Test" / "Banana 1" / "broken.jpg", b"not an image")
    with pytest.raises(ImageFailure, match=r"broken\.jpg: not an image"):
        run_pipeline(_config(small_input, out, on_error="fail"), spark=spark)
    assert json.loads((out / "report.json").read_text())["run_id"] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"], "staging removed"


def test_every_file_whatever_its_name_ends_in_exactly_one_row(spark, small_input, tmp_path):
    """Spark's listing hides `_x`/`.x` names and Hadoop's Path rejects `a:b`: none may vanish."""
    jpg = sorted((small_input / "Training" / "Banana 1").iterdir())[0].read_bytes()
    for name in (
        "_x.jpg",
        ".x.jpg",
        "12:30.jpg",
        "crème brûlée.jpg",
        "with space.JPG",
        "日本.jpeg",
    ):
        write(small_input / "Training" / "Banana 1" / name, jpg)
    write(small_input / "Training" / "_batch" / "a.jpg", jpg)
    write(small_input / "Training" / ".hidden" / "b.jpg", jpg)
    write(small_input / "Training" / "Lemon 1" / "_broken.jpg", b"not an image")
    result = run_pipeline(_config(small_input, tmp_path / "out", classify=False), spark=spark)
    listed = {f"file:{p}" for p in small_input.rglob("*") if p.is_file()}
    images = pd.read_parquet(tmp_path / "out" / "images.parquet")
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert len(images) + len(quarantine) == len(listed) == result.report["images_total"]
    assert set(images["path"]) | set(quarantine["path"]) == listed
    assert list(quarantine["path"]) == [f"file:{small_input}/Training/Lemon 1/_broken.jpg"]
    assert quarantine["reason"][0].startswith("not an image")
