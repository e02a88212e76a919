"""The serving maths of `predictor` without Spark or a CNN (issue 18, mutation testing): the
arrays against scikit-learn fitted on the same numbers, and `Predictor.top` against the
calibrated softmax and species sums written out in numpy. A stand-in featurizer (pixel means)
replaces the ONNX network, which these rules do not depend on."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fruits.calibration import Calibration
from fruits.predictor import (
    Predictor,
    ServingArrays,
    ServingError,
    _read_object,
    check_run,
    read_json,
    read_run,
    reduce_features,
)
from fruits.recognition import NEGATIVE

RNG = np.random.default_rng(18)


def fitted(n: int = 60, d: int = 6, k: int = 3, classes: int = 3):
    """Scaler + PCA + multinomial logistic regression fitted by scikit-learn."""
    x = RNG.normal(size=(n, d)) * np.arange(1, d + 1) + np.arange(d)
    y = np.arange(n) % classes
    x[:, 0] += 3 * y  # learnable
    scaler = StandardScaler().fit(x)
    pca = PCA(n_components=k).fit(scaler.transform(x))
    z = pca.transform(scaler.transform(x))
    lr = LogisticRegression(C=10.0, max_iter=2000).fit(z, y)
    arrays = ServingArrays(
        mean=scaler.mean_,
        scale=1.0 / scaler.scale_,
        pc=pca.components_.T,
        coef=lr.coef_,
        intercept=lr.intercept_,
    )
    return x, scaler, pca, lr, arrays


def test_reduce_matches_scikit_learns_scaler_then_pca():
    x, scaler, pca, _, arrays = fitted()
    got = reduce_features(x, arrays.mean, arrays.scale, arrays.pc)
    assert got.dtype == np.float32
    # sklearn's PCA subtracts the mean of the scaled data: zero up to rounding
    want = pca.transform(scaler.transform(x.astype(np.float32).astype(np.float64)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    again = arrays.reduce(x)
    assert again.dtype == np.float64
    np.testing.assert_array_equal(again, got.astype(np.float64))


def test_reduce_rounds_the_features_to_float32_first_as_images_parquet_stores_them():
    x = np.array([[1.0 + 1e-9]])  # 1.0 once stored as float32
    assert np.float32(x[0, 0]) == 1.0
    got = reduce_features(x, np.array([1.0]), np.array([1e9]), np.ones((1, 1)))
    assert got.tolist() == [[0.0]]


def test_reduce_is_the_scaler_formula_by_hand():
    mean, scale = np.array([1.0, -2.0]), np.array([0.5, 0.0])  # 0: a constant feature
    pc = np.array([[1.0, 2.0], [3.0, -1.0]])
    x = np.array([[3.0, 5.0], [1.0, -2.0]])
    # row 0: ((3-1)*0.5, (5+2)*0) = (1, 0) -> (1*1 + 0*3, 1*2 + 0*-1) = (1, 2)
    assert reduce_features(x, mean, scale, pc).tolist() == [[1.0, 2.0], [0.0, 0.0]]


def test_probabilities_match_scikit_learns_logistic_regression():
    x, scaler, pca, lr, arrays = fitted()
    z = pca.transform(scaler.transform(x))
    got = arrays.probabilities(z)
    np.testing.assert_allclose(got, lr.predict_proba(z), rtol=1e-9, atol=1e-12)


def test_probabilities_stay_finite_for_huge_logits():
    arrays = ServingArrays(
        mean=np.zeros(1),
        scale=np.ones(1),
        pc=np.ones((1, 1)),
        coef=np.array([[1000.0], [999.0], [-1000.0]]),
        intercept=np.zeros(3),
    )
    got = arrays.probabilities(np.array([[1.0]]))
    e = np.exp([0.0, -1.0, -2000.0])
    np.testing.assert_allclose(got, [e / e.sum()], rtol=1e-12)


def test_probabilities_of_rows_of_very_different_scale_are_all_finite():
    # each row is shifted by its own maximum: one shift for the batch would underflow row 2
    arrays = ServingArrays(
        mean=np.zeros(1),
        scale=np.ones(1),
        pc=np.ones((1, 1)),
        coef=np.array([[1.0], [0.0]]),
        intercept=np.zeros(2),
    )
    got = arrays.probabilities(np.array([[1000.0], [1.0]]))
    e = np.exp([[1000.0 - 1000.0, 0.0 - 1000.0], [1.0 - 1.0, 0.0 - 1.0]])
    np.testing.assert_allclose(got, e / e.sum(axis=1, keepdims=True), rtol=1e-12)


def arrays_of(d: int = 4, k: int = 2, r: int = 3, **shapes: tuple[int, ...]) -> ServingArrays:
    sizes = {"mean": (d,), "scale": (d,), "pc": (d, k), "coef": (r, k), "intercept": (r,)}
    sizes.update(shapes)
    return ServingArrays(**{name: np.zeros(shape) for name, shape in sizes.items()})


@pytest.mark.parametrize("r", [3, 4])  # the classes, plus the indexer's "unknown" slot or not
def test_consistent_arrays_pass(r):
    arrays_of(r=r).validate(["a", "b", "c"])


@pytest.mark.parametrize(
    ("arrays", "classes"),
    [
        (arrays_of(r=2), ["a", "b", "c"]),
        (arrays_of(r=5), ["a", "b", "c"]),
        (arrays_of(mean=(3,)), ["a", "b", "c"]),
        (arrays_of(scale=(5,)), ["a", "b", "c"]),
        (arrays_of(coef=(3, 1)), ["a", "b", "c"]),
        (arrays_of(intercept=(4,)), ["a", "b", "c"]),
    ],
)
def test_inconsistent_arrays_are_one_line(arrays, classes):
    with pytest.raises(ServingError, match=r"^inconsistent serving arrays: pc \(4, 2\), mean"):
        arrays.validate(classes)


CLASSES = ["Apple Red 1", "Apple Golden 1", "Banana 1", NEGATIVE]
SPECIES = {"Apple Red 1": "Apple", "Apple Golden 1": "Apple", "Banana 1": "Banana"}
SPECIES[NEGATIVE] = NEGATIVE


class MeanPixels:
    """Stand-in CNN: 3 features per image, its channel means."""

    spec = SimpleNamespace(feature_dim=3)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(pixels, dtype=np.float32).mean(axis=(1, 2))


def predictor(temperature: float = 1.0, threshold: float = 0.0, r: int = 5) -> Predictor:
    arrays = arrays_of(d=3, k=2, r=r)
    cal = Calibration(temperature, threshold, SPECIES)
    return Predictor(MeanPixels(), arrays, CLASSES, image_size=8, max_pixels=100, calibration=cal)


def calibrated(probs: list[float], temperature: float) -> np.ndarray:
    """softmax(log p / T) over the known classes, by hand: p^(1/T), normalised."""
    q = np.asarray(probs[: len(CLASSES)]) ** (1.0 / temperature)
    return q / q.sum()


def test_top_answers_with_the_calibrated_probabilities_and_species_sums():
    probs = [0.30, 0.25, 0.35, 0.05, 0.05]  # the last: the indexer's unknown slot
    q = calibrated(probs, 2.0)
    got = predictor(temperature=2.0, threshold=0.5).top(np.array(probs), top_k=3)
    order = np.argsort(-q)[:3]
    assert (
        got.labels == [CLASSES[i] for i in order] == ["Banana 1", "Apple Red 1", "Apple Golden 1"]
    )
    np.testing.assert_allclose(got.probabilities, q[order], rtol=1e-12)
    assert got.species == "Apple"  # 0.30 + 0.25 beat 0.35 once summed
    assert got.species_probability == pytest.approx(q[0] + q[1], rel=1e-12)
    assert got.verdict == "known"
    assert got.variety is None  # Apple Red 1 at 0.28 is not sure enough to be named


def test_top_names_the_variety_from_half_its_probability_up():
    probs = [0.5, 0.3, 0.2, 0.0, 0.0]
    got = predictor().top(np.array(probs), top_k=1)
    assert got.labels == ["Apple Red 1"] and got.probabilities == [pytest.approx(0.5)]
    assert got.variety == "Apple Red 1"
    below = predictor().top(np.array([0.49, 0.31, 0.2, 0.0, 0.0]), top_k=1)
    assert below.variety is None and below.species == "Apple"


def test_top_is_unsure_below_the_threshold_and_for_not_a_fruit():
    probs = [0.30, 0.25, 0.35, 0.10, 0.0]
    q = calibrated(probs, 1.0)
    apple = q[0] + q[1]
    assert predictor(threshold=apple).top(np.array(probs), 2).verdict == "known"
    assert predictor(threshold=apple + 1e-9).top(np.array(probs), 2).verdict == "unsure"
    negative = predictor().top(np.array([0.1, 0.1, 0.1, 0.7, 0.0]), 2)
    assert negative.species == NEGATIVE and negative.verdict == "unsure"


@pytest.mark.parametrize(("top_k", "n"), [(0, 1), (-3, 1), (2, 2), (4, 4), (9, 4)])
def test_top_k_is_clamped_to_the_known_classes(top_k, n):
    probs = np.array([0.1, 0.2, 0.3, 0.15, 0.25])  # the unknown slot is never listed
    got = predictor().top(probs, top_k)
    assert len(got.labels) == n
    assert got.labels == ["Banana 1", "Apple Golden 1", NEGATIVE, "Apple Red 1"][:n]


def test_top_without_an_unknown_slot_and_with_a_zero_probability():
    got = predictor(r=4).top(np.array([0.0, 0.0, 1.0, 0.0]), 4)
    assert got.labels[0] == "Banana 1" and got.probabilities[0] == pytest.approx(1.0)
    assert all(np.isfinite(got.probabilities))


def test_ties_keep_the_class_order():
    classes = [f"C{i} 1" for i in range(40)]
    cal = Calibration(1.0, 0.0, {c: c.split()[0] for c in classes})
    p = Predictor(
        MeanPixels(), arrays_of(d=3, r=40), classes, image_size=8, max_pixels=10, calibration=cal
    )
    probs = np.full(40, 1 / 40)
    probs[[3, 17, 29]] = 2 / 40  # three best, tied; the rest tied below them
    probs /= probs.sum()
    got = p.top(probs, 10)
    assert got.labels == [classes[i] for i in (3, 17, 29, 0, 1, 2, 4, 5, 6, 7)]


def jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (9, 8), colour).save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_batched_predictions_equal_direct_ones_and_batching_stops_cleanly():
    arrays = ServingArrays(
        mean=np.full(3, 128.0),
        scale=np.full(3, 1 / 64),
        pc=RNG.normal(size=(3, 2)),
        coef=RNG.normal(size=(5, 2)) * 3,
        intercept=np.zeros(5),
    )
    cal = Calibration(1.0, 0.0, SPECIES)
    p = Predictor(MeanPixels(), arrays, CLASSES, image_size=8, max_pixels=100, calibration=cal)
    p.stop_batching()  # never started: nothing to stop
    photos = [jpeg((200, 30, 30)), jpeg((30, 200, 30)), jpeg((240, 220, 40))]
    direct = [p.predict(b, top_k=4) for b in photos]
    p.start_batching()
    assert p._batcher is not None and p._batcher.max_batch == 16  # the documented default
    p.stop_batching()
    p.start_batching(max_batch=2)
    batcher = p._batcher
    assert batcher is not None and batcher.max_batch == 2
    try:
        batched = [p.predict(b, top_k=4) for b in photos]
    finally:
        p.stop_batching()
    assert p._batcher is None and batcher.closed
    assert len({tuple(d.probabilities) for d in direct}) == 3  # the photos are told apart
    for a, b in zip(direct, batched, strict=True):
        assert a.labels == b.labels
        np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-12)


def test_a_predictor_refuses_arrays_the_backbone_cannot_feed():
    with pytest.raises(ServingError, match=r"^backbone gives 3 features but the PCA expects 4$"):
        Predictor(MeanPixels(), arrays_of(d=4, k=2, r=5), CLASSES, image_size=8, max_pixels=10)


def test_a_predictor_without_calibration_never_refuses_and_keeps_its_settings():
    p = Predictor(
        MeanPixels(), arrays_of(d=3, r=4), CLASSES, image_size=8, max_pixels=10, run_id="r1"
    )
    assert (p.calibration.temperature, p.calibration.threshold) == (1.0, 0.0)
    assert (p.image_size, p.max_pixels, p.run_id, p.views, p.backbone) == (8, 10, "r1", 1, {})
    assert p.classes == CLASSES


def test_probabilities_from_pixels_chain_the_featurizer_and_the_arrays():
    _, _, _, _, arrays = fitted(d=3, k=2)
    p = Predictor(MeanPixels(), arrays, ["a", "b", "c"], image_size=4, max_pixels=16)
    pixels = RNG.integers(0, 255, size=(5, 4, 4, 3), dtype=np.uint8)
    feats = pixels.astype(np.float64).mean(axis=(1, 2))
    z = ((feats.astype(np.float32).astype(np.float64) - arrays.mean) * arrays.scale) @ arrays.pc
    logits = z.astype(np.float32).astype(np.float64) @ arrays.coef.T + arrays.intercept
    want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p.probabilities_from_pixels(pixels), want, rtol=1e-6)


def test_json_helpers_name_the_file(tmp_path):
    assert read_json(tmp_path / "missing.json") == {}
    (tmp_path / "a.json").write_text(json.dumps({"x": 1}))
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert _read_object(tmp_path / "a.json") == {"x": 1}
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ServingError, match=r"list.json is not a JSON object$"):
        _read_object(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ServingError, match=r"bad.json is not valid JSON \(JSONDecodeError\)$"):
        _read_object(tmp_path / "bad.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ServingError, match=r"bin.json is not valid JSON \(UnicodeDecodeError\)$"):
        _read_object(tmp_path / "bin.json")


# --- a run folder (the stub run of bench/load.py: an ONNX graph of channel means) -------------

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stub_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("fruits_bench_load", ROOT / "bench" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_stub_run(tmp_path_factory.mktemp("stub") / "run")


@pytest.fixture
def run(stub_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(stub_run, copy)
    return copy


def rewrite(run: Path, name: str, **changes: object) -> None:
    path = run / "models" / name
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def save_arrays(run: Path, d: int, k: int, r: int = 5, dtype: object = float) -> None:
    np.savez(
        run / "models" / "serving.npz",
        mean=np.zeros(d, dtype=dtype),
        scale=np.ones(d, dtype=dtype),
        pc=np.ones((d, k), dtype=dtype),
        coef=np.ones((r, k), dtype=dtype),
        intercept=np.zeros(r, dtype=dtype),
    )


def test_a_pickled_serving_npz_is_never_unpickled(run):
    save_arrays(run, 3, 3, dtype=object)  # object arrays are stored as pickles
    with pytest.raises(ServingError) as err:
        read_run(run)
    assert str(err.value) == (
        f"{run / 'models' / 'serving.npz'} is corrupt or not a serving file (ValueError)"
    )


def test_the_pca_must_take_the_backbones_features(run):
    save_arrays(run, 3, 2)  # 3 features -> 2 components: fine
    assert check_run(run)["classes"]
    save_arrays(run, 2, 1)
    with pytest.raises(ServingError) as err:
        check_run(run)
    assert str(err.value) == "backbone gives 3 features but the PCA expects 2"


def test_an_unfinished_run_is_refused_in_one_line(run):
    (run / "_SUCCESS.json").unlink()
    with pytest.raises(ServingError) as err:
        check_run(run)
    assert str(err.value) == (
        f"{run / '_SUCCESS.json'} is missing: {run} is not a finished `fruits run` output "
        "(still running, or it failed)"
    )


def test_a_backbone_onnx_runtime_cannot_load_is_named(run):
    (run / "models" / "backbone.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ServingError) as err:
        check_run(run)
    assert re.fullmatch(
        re.escape(f"{run / 'models' / 'backbone.onnx'} is corrupt: ONNX Runtime cannot load it")
        + r" \((?!NoneType)\w+\)",
        str(err.value),
    ), str(err.value)


@pytest.mark.parametrize("name", ["serving.npz", "serving.json", "backbone.json"])
def test_a_missing_serving_file_is_named(run, name):
    (run / "models" / name).unlink()
    with pytest.raises(ServingError) as err:
        read_run(run)
    assert str(err.value) == (
        f"{run / 'models' / name} is missing: is {run} the output of `fruits run` with a "
        "Test split (the classifier is only trained when one exists)?"
    )


def test_run_folder_mistakes_are_one_line_each(run, tmp_path):
    with pytest.raises(ServingError) as err:
        read_run(tmp_path / "nowhere")
    assert str(err.value) == (
        f"{tmp_path / 'nowhere'} is not a folder (give the output folder of `fruits run`)"
    )
    rewrite(run, "serving.json", format=2)
    with pytest.raises(ServingError, match=r"^unsupported serving format 2$"):
        read_run(run)
    rewrite(run, "serving.json", format=1, classes="Apple")
    with pytest.raises(ServingError) as err:
        read_run(run)
    assert str(err.value) == f"{run / 'models' / 'serving.json'} has no list of classes"


def test_a_backbone_description_without_its_keys_is_named(run):
    rewrite(run, "backbone.json", engine=None, id=None)
    (run / "models" / "backbone.json").write_text(json.dumps({"engine": "onnx"}))
    with pytest.raises(ServingError) as err:
        read_run(run)
    assert str(err.value) == (
        f"{run / 'models' / 'backbone.json'} is not a backbone description (KeyError)"
    )


def test_an_onnx_backbone_without_its_graph_is_named(run):
    (run / "models" / "backbone.onnx").unlink()
    with pytest.raises(ServingError) as err:
        read_run(run)
    assert str(err.value) == f"{run / 'models' / 'backbone.onnx'} is missing"


def test_the_run_id_comes_from_the_report_when_serving_json_lacks_it(run):
    rewrite(run, "serving.json", run_id=None)
    (run / "report.json").write_text(json.dumps({"run_id": "abc123"}))
    assert read_run(run)[0]["run_id"] == "abc123"
    rewrite(run, "serving.json", run_id="kept")
    assert read_run(run)[0]["run_id"] == "kept"
