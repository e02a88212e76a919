"""Incremental runs on a real local Spark with the real CNN, on a small copy of the sample.

Every test starts from the same published output, built once by the `published` fixture and
restored into place by `state` (the output stores absolute input paths, so input and output
are put back at the same paths, file times included): any test runs alone, in any order, and
none depends on what another left behind. No assertion depends on how fast the machine is.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from typer.testing import CliRunner

from fruits.cli import app
from fruits.config import FeaturizerConfig, PipelineConfig
from fruits.ingest import labelled
from fruits.pipeline import run_pipeline
from fruits.sources.hadoop import HadoopSource, escape_glob, read_paths

CLASSES = ("Banana 1", "Kiwi 1", "Lemon 1")
ROOT = Path(__file__).resolve().parents[1]


def images(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output / "images.parquet").set_index("path")


def published_run(output: Path) -> str:
    return json.loads((output / "_SUCCESS.json").read_text())["run_id"]


def serving_classes(output: Path) -> list[str]:
    return json.loads((output / "models" / "serving.json").read_text())["classes"]


@pytest.fixture(scope="module")
def published(tmp_path_factory, sample_dir, spark) -> dict[str, Any]:
    """Input: 3 classes x (6 train + 2 test) + one empty file, its first (full) run published,
    and a pristine copy of both; 10 more images held back."""
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
    report = run_pipeline(cfg, spark=spark).report
    shutil.copytree(inp, root / "pristine-in")  # copy2: file times kept to the nanosecond
    shutil.copytree(out, root / "pristine-out")
    return {"cfg": cfg, "in": inp, "out": out, "root": root, "spare": spare[:10], "first": report}


@pytest.fixture
def state(published) -> dict[str, Any]:
    """The published first run, put back in place for this test alone."""
    root = published["root"]
    for name in ("in", "out"):
        shutil.rmtree(root / name, ignore_errors=True)
        shutil.copytree(root / f"pristine-{name}", root / name)
    for leftover in glob.glob(str(root / ".out*")):  # lease or staging of a killed run
        (shutil.rmtree if os.path.isdir(leftover) else os.remove)(leftover)
    return published


def run_cli(*args: str) -> Any:
    result = CliRunner().invoke(app, ["run", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_first_incremental_run_without_output_processes_everything(state):
    report = state["first"]
    assert report["incremental"] is None  # nothing to build on: a full run
    assert report["images_processed"] == 25
    assert report["images_ok"] == 24 and report["images_quarantined"] == 1
    # the rate counts featurised images only, not the quarantined empty file
    assert report["images_featurized"] == 24
    rate = 24 / report["total_seconds"]  # rounded to 2 decimals in the report
    assert report["images_per_second"] == pytest.approx(rate, rel=0.01, abs=0.005)
    stored = images(state["out"])
    assert stored["content_hash"].str.match(r"^sha1:[0-9a-f]{40}$").all()
    target = next(iter(stored.index))
    digest = hashlib.sha1(Path(target[len("file:") :]).read_bytes()).hexdigest()
    assert stored.loc[target, "content_hash"] == f"sha1:{digest}"  # the bytes on disk


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
    assert report["images_featurized"] == 10  # not the 24 rows kept from the first run
    assert inc["classifier"] == "reused (no refit)"
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
def test_nothing_new_processes_nothing_and_leaves_the_output_alone(state):
    out = state["out"]
    run_id = published_run(out)
    marker = (out / "_SUCCESS.json").read_bytes()
    result = run_cli("--input", str(state["in"]), "--output", str(out), "--incremental")
    summary = json.loads(result.output.splitlines()[0])
    assert summary["images_processed"] == 0 and summary["images_total"] == 25
    assert "left as it was" in result.output
    assert published_run(out) == run_id and (out / "_SUCCESS.json").read_bytes() == marker


@pytest.mark.slow
def test_a_changed_file_is_processed_again(spark, state):
    out = state["out"]
    folder = state["in"] / "Training" / CLASSES[1]
    target = folder / sorted(os.listdir(folder))[0]
    key = f"file:{target}"
    before = images(out)
    other = next(p for p in sorted((state["in"] / "Training" / CLASSES[2]).iterdir()))
    target.write_bytes(other.read_bytes())  # new content under the same name
    os.utime(target, (time.time() + 5, time.time() + 5))
    report = run_pipeline(state["cfg"], spark=spark).report
    inc = report["incremental"]
    assert (report["images_processed"], inc["new"], inc["changed"]) == (1, 0, 1)
    after = images(out)
    assert len(after) == 24 and after.index.is_unique
    assert list(after.loc[key, "features"]) != list(before.loc[key, "features"])
    assert after.loc[key, "length"] == target.stat().st_size


def same_size_rewrite(target: Path, donor_folder: Path) -> Path:
    """Rewrite `target` with another image's pixels at exactly its size, and restore its
    modification time: what `cp -p`/`rsync -t`/a backup restore can produce. JPEG decoders
    stop at the end-of-image marker, so zero padding after a smaller image keeps it valid."""
    st = target.stat()
    donor = next(p for p in sorted(donor_folder.iterdir()) if 0 < p.stat().st_size < st.st_size)
    payload = donor.read_bytes()
    target.write_bytes(payload + b"\0" * (st.st_size - len(payload)))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    return donor


@pytest.mark.slow
def test_same_size_rewrite_with_restored_mtime_is_caught_by_verify_content(state):
    out, inp = state["out"], state["in"]
    folder = inp / "Training" / CLASSES[1]
    target = folder / sorted(os.listdir(folder))[0]
    key = f"file:{target}"
    before = images(out)
    donor = same_size_rewrite(target, inp / "Training" / CLASSES[2])

    # size + mtime alone cannot see it (the limit --verify-content exists for)
    blind = run_cli("--input", str(inp), "--output", str(out), "--incremental")
    assert json.loads(blind.output.splitlines()[0])["images_processed"] == 0

    run_cli("--input", str(inp), "--output", str(out), "--incremental", "--verify-content")
    report = json.loads((out / "report.json").read_text())
    inc = report["incremental"]
    assert (report["images_processed"], inc["new"], inc["changed"], inc["unchanged"]) == (
        1,
        0,
        1,
        24,
    )
    assert "content hash" in inc["compared_by"]
    after = images(out)
    assert len(after) == 24 and after.index.is_unique
    new_features = np.asarray(after.loc[key, "features"])
    assert not np.allclose(new_features, before.loc[key, "features"])
    # the row now describes the donor's pixels (same image, same features)
    np.testing.assert_allclose(new_features, after.loc[f"file:{donor}", "features"], atol=1e-5)
    assert after.loc[key, "content_hash"] != before.loc[key, "content_hash"]

    again = run_cli("--input", str(inp), "--output", str(out), "--incremental", "--verify-content")
    assert json.loads(again.output.splitlines()[0])["images_processed"] == 0  # hashes agree now


@pytest.mark.slow
def test_a_renamed_class_folder_refits_the_classifier(spark, state):
    out, inp = state["out"], state["in"]
    assert serving_classes(out) == sorted(CLASSES)
    for split in ("Training", "Test"):
        (inp / split / CLASSES[1]).rename(inp / split / "Kiwi renamed")
    report = run_pipeline(state["cfg"], spark=spark).report
    inc = report["incremental"]
    assert (inc["new"], inc["deleted"]) == (8, 8)
    assert inc["classifier"].startswith("refitted: the data's classes changed")
    assert "Kiwi renamed" in inc["classifier"]
    stored = json.loads((out / "report.json").read_text())["incremental"]
    assert stored["classifier"] == inc["classifier"]
    expected = sorted([CLASSES[0], "Kiwi renamed", CLASSES[2]])
    assert sorted(images(out)["label"].unique()) == expected
    assert serving_classes(out) == expected  # serving answers with the data's classes

    from pyspark.ml import PipelineModel

    from fruits.export import class_labels

    assert class_labels(PipelineModel.load(str(out / "models" / "classifier"))) == expected


@pytest.mark.slow
def test_a_deleted_file_is_reported_and_its_row_removed(spark, state):
    out = state["out"]
    gone = (
        state["in"] / "Test" / CLASSES[2] / sorted(os.listdir(state["in"] / "Test" / CLASSES[2]))[0]
    )
    gone.unlink()
    report = run_pipeline(state["cfg"], spark=spark).report
    inc = report["incremental"]
    assert (report["images_processed"], inc["deleted"]) == (0, 1)
    assert inc["deleted_paths"] == [f"file:{gone}"]
    assert json.loads((out / "report.json").read_text())["incremental"]["deleted"] == 1
    after = images(out)
    assert len(after) == 23 and f"file:{gone}" not in after.index


def assert_same_up_to_sign(ours: np.ndarray, ref: np.ndarray, atol: float) -> None:
    signs = np.sign(np.sum(ours * ref, axis=0))
    np.testing.assert_allclose(ours * signs, ref, atol=atol)


@pytest.mark.slow
def test_refit_equals_an_independent_sklearn_fit_on_the_stored_features(state):
    """After 10 images are added, `fruits refit` gives the projection scikit-learn computes
    from the stored features of the train rows; the PCA it replaced does not."""
    out = state["out"]
    before = images(out)
    for src, dst in state["spare"]:
        shutil.copy(src, dst)
    result = CliRunner().invoke(app, ["refit", "--input", str(state["in"]), "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["images_processed"] == 10 and report["pca_fitted_on"] == "train"
    after = images(out)
    assert len(after) == 34
    for path, row in before.iterrows():  # stored features reused as they were
        assert list(after.loc[path, "features"]) == list(row["features"])

    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    k = report["pca_k"]
    train = after[after["split"] == "train"]
    x_train = np.stack(train["features"].to_numpy()).astype(np.float64)
    x_all = np.stack(after["features"].to_numpy()).astype(np.float64)
    scaler = StandardScaler().fit(x_train)
    pca = PCA(n_components=k, svd_solver="full").fit(scaler.transform(x_train))
    # Spark's scaler divides by the sample std (ddof=1), scikit-learn's by the population std.
    n = len(x_train)
    ref = pca.transform(scaler.transform(x_all)) * np.sqrt((n - 1) / n)
    ours = np.stack(after["pca"].to_numpy()).astype(np.float64)
    scale = float(np.abs(ref).max())
    assert_same_up_to_sign(ours / scale, ref / scale, atol=1e-3)
    np.testing.assert_allclose(
        report["pca_explained_variance_per_component"][:k], pca.explained_variance_ratio_,
        atol=1e-5,
    )  # fmt: skip
    # the PCA it replaced gives other values for the same rows: the refit did happen
    old = np.stack(before["pca"].to_numpy())
    same_rows = np.stack(after.loc[before.index, "pca"].to_numpy())
    assert old.shape != same_rows.shape or not np.allclose(
        np.abs(old), np.abs(same_rows), atol=1e-3
    )


@pytest.mark.slow
def test_incremental_refuses_another_featurizer(spark, state):
    cfg = PipelineConfig(
        input=str(state["in"]), output=str(state["out"]), incremental=True,
        featurizer=FeaturizerConfig(image_size=192),
    )  # fmt: skip
    with pytest.raises(ValueError, match="run without --incremental"):
        run_pipeline(cfg, spark=spark)


@pytest.mark.slow
def test_a_killed_incremental_run_leaves_the_previous_output_intact(state):
    """SIGKILL the driver (its whole process group: Python and the JVM) once the featurize job
    has started writing; the published output must be exactly the previous one, still readable,
    and the next run must do the same work again and publish."""
    out, inp, root = state["out"], state["in"], state["root"]
    marker = (out / "_SUCCESS.json").read_bytes()
    report = (out / "report.json").read_bytes()
    before = images(out)
    for src, dst in state["spare"]:
        shutil.copy(src, dst)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    cmd = [sys.executable, "-m", "fruits", "run", "--input", str(inp), "--output", str(out),
           "--incremental", "--master", "local[1]"]  # fmt: skip
    log = open(root / "killed-driver.log", "wb")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    featurizing = str(root / ".out.staging-*" / "_work" / "featurized.parquet")
    try:
        deadline = time.monotonic() + 600  # a bound for a hung run, not a speed assertion
        while not glob.glob(featurizing):
            assert proc.poll() is None, (root / "killed-driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the featurize stage never started"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this test started
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    assert (out / "_SUCCESS.json").read_bytes() == marker
    assert (out / "report.json").read_bytes() == report
    after = images(out)  # still readable, and the very same rows
    assert sorted(after.index) == sorted(before.index)
    for path, row in before.iterrows():
        assert list(after.loc[path, "features"]) == list(row["features"])

    rerun = run_cli("--input", str(inp), "--output", str(out), "--incremental")
    assert json.loads(rerun.output.splitlines()[0])["images_processed"] == 10
    assert len(images(out)) == 34 and not glob.glob(str(root / ".out.staging-*"))


def test_read_paths_opens_exactly_the_named_files_even_with_glob_characters(spark, tmp_path):
    """New files are opened by an explicit path list; `[1]`, `{a}`, `*`, `?` stay literal."""
    folder = tmp_path / "Training" / "Kiwi"
    folder.mkdir(parents=True)
    for name in ("odd [1] {a}*?.jpg", "odd 1 a.jpg", "other.jpg"):
        (folder / name).write_bytes(b"\xff\xd8 not really a jpeg " + name.encode())
    listed = labelled(HadoopSource(str(tmp_path)).read(spark)).files
    # What ingest.read_sources did to the listing (a label map, the validation split) must hold
    # for the files read again: only the bytes come from the new read.
    listed = listed.withColumn("label", F.lit("Kiwi Gold")).withColumn("split", F.lit("val"))
    wanted = [f"file:{folder}/odd [1] {{a}}*?.jpg", f"file:{folder}/odd 1 a.jpg"]
    got = read_paths(spark, wanted, listed)
    assert got.columns == listed.columns
    rows = {r["path"]: r for r in got.collect()}
    assert sorted(rows) == sorted(wanted)
    assert rows[wanted[0]]["label"] == "Kiwi Gold" and rows[wanted[0]]["split"] == "val"
    assert bytes(rows[wanted[0]]["content"]).endswith(b"odd [1] {a}*?.jpg")
    assert escape_glob("a[1]{b}*?.jpg") == "a\\[1\\]\\{b\\}\\*\\?.jpg"


@pytest.mark.slow
def test_a_new_label_map_relabels_the_kept_rows_and_the_report_agrees(spark, state, tmp_path):
    """No file changed, only the label map: every stored row must carry the mapped label (the
    kept rows too), and the report's classes are the output's."""
    mapping = {CLASSES[1]: CLASSES[0]}  # Kiwi folder now trains Banana
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    cfg = PipelineConfig(
        input=str(state["in"]), output=str(state["out"]), incremental=True,
        label_map=str(tmp_path / "map.json"),
    )  # fmt: skip
    report = run_pipeline(cfg, spark=spark).report
    inc = report["incremental"]
    assert (report["images_processed"], inc["unchanged"]) == (0, 25)
    assert "gone: ['Kiwi 1']" in inc["classifier"]
    after = images(state["out"])
    folder = {p: Path(p[len("file:") :]).parent.name for p in after.index}
    expected = {p: mapping.get(f, f) for p, f in folder.items()}  # a plain dict lookup
    assert after["label"].to_dict() == expected
    assert report["classes"] == after["label"].nunique() == 2
    assert serving_classes(state["out"]) == sorted({CLASSES[0], CLASSES[2]})


@pytest.mark.slow
def test_a_same_size_rewrite_with_a_new_mtime_is_processed_again(spark, state):
    """Size alone cannot see this change; the modification time must (no --verify-content)."""
    out, inp = state["out"], state["in"]
    folder = inp / "Training" / CLASSES[1]
    target = folder / sorted(os.listdir(folder))[0]
    before = images(out)
    same_size_rewrite(target, inp / "Training" / CLASSES[2])
    later = target.stat().st_mtime_ns + 7_000_000_000
    os.utime(target, ns=(later, later))  # same name and size, later mtime
    report = run_pipeline(state["cfg"], spark=spark).report
    inc = report["incremental"]
    assert (report["images_processed"], inc["changed"], inc["unchanged"]) == (1, 1, 24)
    assert report["images_featurized"] == 1
    after = images(out)
    key = f"file:{target}"
    assert not np.allclose(after.loc[key, "features"], before.loc[key, "features"])
    assert after.loc[key, "modification_time"] != before.loc[key, "modification_time"]
