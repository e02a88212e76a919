"""Serving parity: the exported arrays + the pipeline's own image code give Spark's answers."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest
from pyspark.ml import PipelineModel
from pyspark.sql import functions as F

from fruits.classify import ClassifierConfig, fit_classifier, predict
from fruits.config import FeaturizerConfig, ReduceConfig
from fruits.export import arrays_from_spark, export_saved_run, export_serving
from fruits.images import ImageError
from fruits.predictor import (
    ARRAYS_FILE,
    META_FILE,
    BatcherClosed,
    MicroBatcher,
    Predictor,
    ServingArrays,
    ServingError,
    check_run,
)
from fruits.reduce import fit_reducer

PROB_TOL = 1e-5


def local_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


@pytest.fixture(scope="module")
def run_dir(sample_run) -> Path:
    return Path(sample_run.output)


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor.load(run_dir, threads=2)


@pytest.fixture(scope="module")
def spark_scored(spark, run_dir) -> pd.DataFrame:
    """Spark's own predictions for the test split, from the run's saved classifier."""
    images = spark.read.parquet(str(run_dir / "images.parquet")).where(F.col("split") == "test")
    model = PipelineModel.load(str(run_dir / "models" / "classifier"))
    scaler = PipelineModel.load(str(run_dir / "models" / "scaler_pca")).stages[0]
    rows = (
        predict(model, images, scaler=scaler)
        .select("path", "label", "features", "pca", "predicted_label", "probability")
        .collect()
    )
    return pd.DataFrame([r.asDict() for r in rows]).sort_values("path", ignore_index=True)


def test_run_folder_holds_the_exported_chain(run_dir, predictor):
    meta = json.loads((run_dir / "models" / META_FILE).read_text())
    assert meta["classes"] == sorted(meta["classes"])
    assert len(meta["classes"]) == 10
    assert meta["image_size"] == FeaturizerConfig.image_size
    assert (
        check_run(run_dir)["run_id"] == json.loads((run_dir / "report.json").read_text())["run_id"]
    )
    with np.load(run_dir / "models" / ARRAYS_FILE) as npz:
        assert set(npz.files) == {"mean", "scale", "pc", "coef", "intercept", "reads"}
        assert npz["pc"].shape[0] == 1280
        # the classifier reads the 1280 scaled features, not the PCA (leave-one-source-out study)
        assert str(npz["reads"]) == "scaled" and npz["coef"].shape[1] == 1280
    assert predictor.classes == meta["classes"]


def test_arrays_reproduce_spark_from_the_stored_features(predictor, spark_scored):
    """Pure maths: scaler, PCA (rounded to float32 like the stored column) and softmax."""
    feats = np.stack(spark_scored["features"].map(np.asarray))
    pca = predictor.arrays.reduce(feats)
    np.testing.assert_allclose(
        pca, np.stack(spark_scored["pca"].map(np.asarray)), rtol=1e-6, atol=1e-6
    )
    probs = predictor.arrays.probabilities(predictor.arrays.classifier_input(feats))
    np.testing.assert_allclose(probs, np.stack(spark_scored["probability"]), atol=1e-9)


@pytest.fixture(scope="module")
def parquet_rows(run_dir) -> pd.DataFrame:
    """The run's stored rows (pandas + pyarrow, no Spark): path, split, label, features."""
    df = pd.read_parquet(run_dir / "images.parquet", columns=["path", "split", "label", "features"])
    return df[df["features"].notna()].sort_values("path", ignore_index=True)


@pytest.fixture(scope="module")
def sklearn_reference(run_dir, parquet_rows):
    """An INDEPENDENT reduction: scikit-learn's StandardScaler + PCA fitted on the run's train
    features, with as many components as the run kept. Spark's scaler divides by the sample
    std (n - 1), scikit-learn's by the population std (n): every coordinate differs by the
    constant sqrt((n - 1) / n), applied here. Component signs are arbitrary in both: each
    reference component is flipped to agree with serving's on the train rows."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    train = np.stack(parquet_rows.loc[parquet_rows["split"] == "train", "features"])
    train = train.astype(np.float32).astype(np.float64)
    n = len(train)
    with np.load(run_dir / "models" / ARRAYS_FILE) as npz:
        k = npz["pc"].shape[1]
    scaler = StandardScaler().fit(train)
    pca = PCA(n_components=k, svd_solver="full").fit(scaler.transform(train))
    factor = np.sqrt((n - 1) / n)

    def project(features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32).astype(np.float64)
        return pca.transform(scaler.transform(x)) * factor

    def standardise(features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32).astype(np.float64)
        return scaler.transform(x) * factor

    return project, train, standardise


def test_serving_projection_matches_an_independent_sklearn_fit(
    predictor, sklearn_reference, parquet_rows
):
    """Catches a scaler without its mean, a wrong scale and components in the wrong order:
    the stored `pca` column comes from the same function as serving, so only an outside fit
    can."""
    project, train, _ = sklearn_reference
    test = np.stack(parquet_rows.loc[parquet_rows["split"] == "test", "features"])
    assert len(train) >= 100 and len(test) == 80
    served_train = predictor.arrays.reduce(train)
    signs = np.sign(np.sum(project(train) * served_train, axis=0))
    signs[signs == 0] = 1
    for rows in (train, test):
        served = predictor.arrays.reduce(rows)
        reference = project(rows) * signs
        scale = np.abs(reference).max()
        np.testing.assert_allclose(served, reference, rtol=0, atol=1e-4 * scale)
    # the leading components carry the most variance, in order
    variances = served_train.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-6 * variances[0])


def _reference_answers(
    arrays_file: Path,
    inputs: np.ndarray,
    classes: list[str],
    species_of: dict[str, str],
    temperature: float,
    threshold: float,
) -> list[dict]:
    """By hand: logits of the run's logistic regression, the known classes' logits divided by
    T, softmax, summed per species; "known" when the best species' probability reaches the
    threshold, "unsure" below it."""
    with np.load(arrays_file) as npz:
        coef, intercept = npz["coef"], npz["intercept"]
    out = []
    for row in inputs:
        logits = coef @ row + intercept
        z = logits[: len(classes)] / temperature
        e = np.exp(z - z.max())
        p = e / e.sum()
        species: dict[str, float] = {}
        for label, prob in zip(classes, p, strict=True):
            species[species_of[label]] = species.get(species_of[label], 0.0) + prob
        best = max(species, key=species.__getitem__)
        out.append(
            {
                "probs": p,
                "species": best,
                "species_probability": species[best],
                "verdict": "known" if species[best] >= threshold else "unsure",
            }
        )
    return out


def test_served_answers_match_a_hand_written_calibrated_softmax(
    run_dir, predictor, sklearn_reference, parquet_rows
):
    """Image bytes through `Predictor.predict` with a temperature of 2.5 and a threshold that
    splits the test photos into "known" and "unsure", against the reference above fed with
    the independent projection of the stored features (the bytes -> features step is checked
    against Spark by the parity test)."""
    from fruits.calibration import Calibration

    _, _, standardise = sklearn_reference
    test = parquet_rows[parquet_rows["split"] == "test"]
    # the classifier's input, scaled by scikit-learn (the run's classifier reads it, not the PCA)
    reference_input = standardise(np.stack(test["features"]))
    classes = predictor.classes
    species_of = dict(predictor.calibration.species or {})
    temperature = 2.5
    answers = _reference_answers(
        run_dir / "models" / ARRAYS_FILE, reference_input, classes, species_of, temperature, 0.0
    )
    # a threshold in the widest gap near the median: about half the photos each side
    sp = np.sort([a["species_probability"] for a in answers])
    middle = range(len(sp) // 4, 3 * len(sp) // 4)
    i = max(middle, key=lambda j: sp[j + 1] - sp[j])
    threshold = float((sp[i] + sp[i + 1]) / 2)
    assert sp[i + 1] - sp[i] > 1e-3
    for a in answers:
        a["verdict"] = "known" if a["species_probability"] >= threshold else "unsure"
    assert {a["verdict"] for a in answers} == {"known", "unsure"}

    calibrated = Predictor(
        predictor.featurizer,
        predictor.arrays,
        classes,
        image_size=predictor.image_size,
        max_pixels=predictor.max_pixels,
        calibration=Calibration(temperature, threshold, species_of),
        views=predictor.views,
    )
    for path, want in zip(test["path"], answers, strict=True):
        got = calibrated.predict(local_path(path).read_bytes(), top_k=len(classes))
        order = np.argsort(-want["probs"], kind="stable")
        np.testing.assert_allclose(got.probabilities, want["probs"][order], atol=1e-4)
        assert got.species == want["species"], path
        assert got.species_probability == pytest.approx(want["species_probability"], abs=1e-4)
        assert got.verdict == want["verdict"], path


def test_served_predictions_equal_spark_from_the_image_bytes(predictor, spark_scored):
    """The issue's parity test: image bytes through the serving path, one request at a time."""
    assert len(spark_scored) == 80
    worst = 0.0
    for row in spark_scored.itertuples():
        data = local_path(row.path).read_bytes()
        probs = predictor.probabilities_from_pixels(predictor.pixels(data)[None])[0]
        spark_probs = np.asarray(row.probability)
        assert probs.shape == spark_probs.shape
        worst = max(worst, float(np.max(np.abs(probs - spark_probs))))
        assert predictor.predict(data, top_k=1).labels[0] == row.predicted_label, row.path
    assert worst <= PROB_TOL, f"largest probability difference {worst:.2e}"


def test_batch_path_matches_single_requests_and_reports_bad_images(predictor, spark_scored):
    paths = list(spark_scored["path"][:5])
    contents = [local_path(p).read_bytes() for p in paths]
    contents.insert(2, b"not an image at all")
    probs, errors = predictor.predict_proba(contents)
    assert errors[2] is not None and "not an image" in errors[2]
    assert np.isnan(probs[2]).all()
    good = np.delete(probs, 2, axis=0)
    np.testing.assert_allclose(good, np.stack(spark_scored["probability"][:5]), atol=PROB_TOL)


def test_predict_returns_sorted_top_k_and_refuses_bad_bytes(predictor, sample_dir):
    banana = next((sample_dir / "Test" / "Banana 1").glob("*.jpg")).read_bytes()
    pred = predictor.predict(banana, top_k=4)
    assert pred.labels[0] == "Banana 1"
    assert len(pred.labels) == 4 == len(set(pred.labels))
    assert pred.probabilities == sorted(pred.probabilities, reverse=True)
    assert len(predictor.predict(banana, top_k=999).labels) == 10
    for bad in (b"", b"GIF89a broken", banana[: len(banana) // 3]):
        with pytest.raises(ImageError):
            predictor.predict(bad)


def test_export_from_in_memory_models_matches_spark_on_synthetic_data(spark, tmp_path):
    """No CNN: small fitted chain, arrays vs Spark's transform on fresh rows."""
    rng = np.random.default_rng(4)
    centres = rng.normal(scale=6, size=(3, 8))
    labels = np.repeat(["b", "a", "c"], 40)
    x = centres[np.repeat([0, 1, 2], 40)] + rng.normal(size=(120, 8))
    x[:, 5] = 2.0  # a constant feature: std 0, Spark scales it to 0 instead of dividing
    pdf = pd.DataFrame({"label": labels, "features": list(x.astype(np.float32))})
    df = spark.createDataFrame(pdf)
    reducer = fit_reducer(df, ReduceConfig(k=3))
    reduced = reducer.transform(df)
    classifier = fit_classifier(reduced, ClassifierConfig(max_iter=50, reg_param=0.1))
    export_serving(reducer.model, classifier, tmp_path, featurizer=FeaturizerConfig(), run_id="r1")

    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["classes"] == ["a", "b", "c"] and meta["run_id"] == "r1" and meta["pca_k"] == 3
    with np.load(tmp_path / ARRAYS_FILE) as npz:
        arrays = ServingArrays(**{k: npz[k] for k in npz.files})
    assert arrays.scale[5] == 0.0

    scored = predict(classifier, reduced).select("features", "pca", "probability").collect()
    feats = np.asarray([r["features"] for r in scored])
    np.testing.assert_allclose(arrays.reduce(feats), [r["pca"] for r in scored], atol=1e-5)
    np.testing.assert_allclose(
        arrays.probabilities(arrays.reduce(feats)), [r["probability"] for r in scored], atol=1e-9
    )
    again = arrays_from_spark(reducer.model, classifier)
    np.testing.assert_array_equal(again.coef, arrays.coef)
    assert arrays.reads == again.reads == "pca"  # fitted on the pca column: an older run's way

    # today's way: the classifier reads the scaled features through the run's own scaler
    scaler = reducer.model.stages[0]
    on_scaled = fit_classifier(reduced, ClassifierConfig(max_iter=50, reg_param=0.1), scaler=scaler)
    export_serving(reducer.model, on_scaled, tmp_path / "s", featurizer=FeaturizerConfig())
    with np.load(tmp_path / "s" / ARRAYS_FILE) as npz:
        scaled = ServingArrays(**{k: npz[k] for k in npz.files})
    assert str(scaled.reads) == "scaled" and scaled.coef.shape[1] == 8
    got = predict(on_scaled, reduced, scaler=scaler).select("probability").collect()
    want = scaled.probabilities((feats - x.mean(0)) / x.std(0, ddof=1).clip(1e-12) * (x.std(0) > 0))
    np.testing.assert_allclose(want, [r["probability"] for r in got], atol=1e-6)


def test_export_saved_run_rebuilds_the_arrays_of_an_older_run(spark, run_dir, tmp_path):
    copy = tmp_path / "old-run"
    shutil.copytree(run_dir, copy)
    (copy / "models" / ARRAYS_FILE).unlink()
    (copy / "models" / META_FILE).unlink()
    with pytest.raises(ServingError, match="missing"):
        check_run(copy)
    export_saved_run(spark, copy)
    with (
        np.load(copy / "models" / ARRAYS_FILE) as new,
        np.load(run_dir / "models" / ARRAYS_FILE) as old,
    ):
        for name in old.files:
            np.testing.assert_array_equal(new[name], old[name])


def test_unservable_folders_fail_with_a_reason(tmp_path):
    with pytest.raises(ServingError, match="not a folder"):
        Predictor.load(tmp_path / "nope")
    (tmp_path / "models").mkdir()
    with pytest.raises(ServingError, match=r"_SUCCESS\.json is missing"):
        check_run(tmp_path)  # not a finished run: refused before its files are read
    (tmp_path / "_SUCCESS.json").write_text("{}")
    with pytest.raises(ServingError, match=r"serving\.npz is missing"):
        check_run(tmp_path)


def test_micro_batcher_splits_results_back_to_their_callers():
    calls: list[int] = []

    def fn(rows):
        calls.append(len(rows))
        if (rows < 0).any():
            raise ValueError("negative")
        return rows * 10

    gate, entered = threading.Event(), threading.Event()

    def held(rows):
        entered.set()
        gate.wait(5)
        return fn(rows)

    batcher = MicroBatcher(held, max_batch=8)
    try:
        with ThreadPoolExecutor(12) as pool:

            def wait_for(size: int) -> None:
                deadline = time.monotonic() + 10
                while batcher._queue.qsize() != size and time.monotonic() < deadline:
                    time.sleep(0.01)

            futures = [pool.submit(batcher, np.full((1, 2), 0))]
            entered.wait(10)  # the worker took the first call alone and holds it at the gate
            futures += [pool.submit(batcher, np.full((1, 2), i)) for i in range(1, 12)]
            wait_for(11)  # the other 11 wait in line
            gate.set()
            results = [f.result(timeout=10) for f in futures]
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r, np.full((1, 2), 10 * i))
        assert calls == [1, 8, 3]  # the first alone, then whatever had queued, 8 at most
        with pytest.raises(ValueError, match="negative"):
            batcher(np.full((1, 2), -1))
        np.testing.assert_array_equal(batcher(np.ones((1, 2))), np.full((1, 2), 10))  # still alive
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher(np.ones((1, 2)))


def test_concurrent_batched_predictions_match_single_ones(predictor, spark_scored):
    contents = [local_path(p).read_bytes() for p in spark_scored["path"][:16]]
    single = [predictor.predict(c, top_k=3) for c in contents]
    predictor.start_batching(max_batch=8)
    try:
        with ThreadPoolExecutor(8) as pool:
            batched = list(pool.map(lambda c: predictor.predict(c, top_k=3), contents))
        with pytest.raises(ImageError):  # a bad image fails in its own thread, not the batch
            predictor.predict(b"nope")
    finally:
        predictor.stop_batching()
    for a, b in zip(single, batched, strict=True):
        assert a.labels == b.labels
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=PROB_TOL)


def test_a_call_racing_close_fails_instead_of_hanging():
    """B3: a caller that reaches the batcher while `close` is under way used to queue behind the
    end marker and wait forever; now it fails at once with `BatcherClosed`, and calls queued
    before the marker are still answered."""
    gate, entered = threading.Event(), threading.Event()

    def held(rows):
        entered.set()
        assert gate.wait(30)
        return rows + 1

    batcher = MicroBatcher(held, max_batch=8)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher, np.zeros((1, 2)))
        assert entered.wait(30)  # the worker holds the first call in `fn`
        queued = pool.submit(batcher, np.ones((1, 2)))
        _wait_until(lambda: batcher._queue.qsize() == 1)
        closing = pool.submit(batcher.close)
        _wait_until(lambda: batcher._queue.qsize() == 2)  # the end marker is in, behind `queued`
        late = threading.Thread(target=lambda: late_result.append(_outcome(batcher)), daemon=True)
        late_result: list = []
        late.start()
        late.join(30)
        assert not late.is_alive(), "a call after close() is waiting for a worker that is gone"
        assert isinstance(late_result[0], BatcherClosed)
        assert "shutting down" in str(late_result[0])
        gate.set()
        np.testing.assert_array_equal(first.result(timeout=30), np.ones((1, 2)))
        np.testing.assert_array_equal(queued.result(timeout=30), np.full((1, 2), 2.0))
        closing.result(timeout=30)
    assert batcher.closed
    with pytest.raises(BatcherClosed):
        batcher(np.ones((1, 2)))


def test_close_fails_calls_a_stuck_worker_never_took():
    gate, entered = threading.Event(), threading.Event()

    def stuck(rows):
        entered.set()
        gate.wait(60)
        return rows

    batcher = MicroBatcher(stuck, max_batch=1)
    with ThreadPoolExecutor(2) as pool:
        pool.submit(batcher, np.zeros((1, 1)))
        assert entered.wait(30)
        waiting = pool.submit(batcher, np.zeros((1, 1)))
        _wait_until(lambda: batcher._queue.qsize() == 1)
        batcher.close(timeout=0)  # the worker is still inside `fn`
        with pytest.raises(BatcherClosed, match="shut down"):
            waiting.result(timeout=30)
        gate.set()


def _outcome(batcher):
    try:
        return batcher(np.zeros((1, 2)))
    except BaseException as exc:
        return exc


def _wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
