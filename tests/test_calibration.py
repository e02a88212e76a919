"""classify.calibrate on a real SparkSession: the temperature and the "not sure" threshold come
from the val split only, per source, whatever spelling the storage plan read each input under.
References are written here in numpy (softmax, weighted NLL by grid search, quantiles)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fruits.classify import calibrate

CLASSES = ["Apple Golden 1", "Apple Red 1", "Banana 1"]  # species: Apple, Apple, Banana
SPECIES = np.array([[1, 0], [1, 0], [0, 1]], dtype=float)  # class -> (Apple, Banana)
STUDIO, STUDIO_PLANNED = "/Volumes/cat/sch/vol/studio", "dbfs:/Volumes/cat/sch/vol/studio"
PHONE, PHONE_PLANNED = "az://photos/phone", "abfss://photos@acct.dfs.core.windows.net/phone"


def _softmax(logits: np.ndarray, t: float) -> np.ndarray:
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _logits(rng, n: int, sure: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, n)
    logits = rng.normal(0.0, noise, (n, 3))
    logits[np.arange(n), y] += sure
    return logits, y


def _data(seed: int = 0):
    """val: 300 confident studio frames, 60 noisy phone photos; test: the other way round and
    mislabelled, so anything fitted on test lands elsewhere."""
    rng = np.random.default_rng(seed)
    parts = {}
    for split, source, n, sure, noise in (
        ("val", STUDIO_PLANNED, 300, 6.0, 1.0),
        ("val", PHONE_PLANNED, 60, 2.0, 1.5),
        ("test", STUDIO_PLANNED, 80, 0.5, 3.0),
        ("test", PHONE_PLANNED, 80, 8.0, 0.5),
    ):
        logits, y = _logits(rng, n, sure, noise)
        if split == "test" or source == PHONE_PLANNED:  # over-confident: often wrong
            wrong = rng.uniform(size=n) < (0.6 if split == "test" else 0.3)
            y = np.where(wrong, rng.integers(0, 3, n), y)
        parts[(split, source)] = (logits, y)
    rows = []
    for (split, source), (logits, y) in parts.items():
        for i, (lg, c) in enumerate(zip(logits, y, strict=True)):
            label = CLASSES[c]
            rows.append((f"{source}/{label}/r_{i}_100.jpg", label, split, [float(v) for v in lg]))
    return parts, rows


def _reference(parts) -> tuple[float, float]:
    """Temperature: the weighted val NLL's minimum on a grid (each source weighs 1 in total),
    never below 1; threshold: the lower of the sources' 5th percentiles of the best species'
    probability on val, within [0.25, 0.9]."""
    val = [parts[("val", STUDIO_PLANNED)], parts[("val", PHONE_PLANNED)]]
    grid = np.exp(np.linspace(0.0, np.log(20.0), 20001))
    nll = np.zeros_like(grid)
    for logits, y in val:
        for j, t in enumerate(grid):
            nll[j] -= np.log(_softmax(logits, t)[np.arange(len(y)), y]).mean()
    t = float(grid[int(np.argmin(nll))])
    levels = [np.quantile((_softmax(lg, t) @ SPECIES).max(axis=1), 0.05) for lg, _ in val]
    return t, float(np.clip(min(levels), 0.25, 0.9)), levels


@pytest.fixture(scope="module")
def case(spark):
    parts, rows = _data()
    images = spark.createDataFrame(
        rows, "path string, label string, split string, pca array<double>"
    )
    arrays = SimpleNamespace(coef=np.eye(3), intercept=np.zeros(3))  # logits = pca
    cal = calibrate(
        arrays,
        CLASSES,
        images,
        sources=[STUDIO, PHONE],
        label_map=None,
        planned=[STUDIO_PLANNED, PHONE_PLANNED],
    )
    return parts, cal


def test_temperature_and_threshold_are_fitted_on_val_per_source(case):
    parts, cal = case
    t, threshold, levels = _reference(parts)
    assert t > 1.05  # the phone photos need a real temperature
    assert 0.25 < min(levels) < max(levels) - 0.05 < 0.9  # the sources' levels differ
    assert cal.temperature == pytest.approx(t, rel=2e-3)
    assert cal.threshold == pytest.approx(threshold, abs=2e-3)


def test_every_source_keeps_its_figures_under_the_users_spelling(case):
    parts, cal = case
    assert set(cal.metrics) == {"val", "test"}
    for split in ("val", "test"):
        assert set(cal.metrics[split]) == {STUDIO, PHONE}
        for source, planned in ((STUDIO, STUDIO_PLANNED), (PHONE, PHONE_PLANNED)):
            logits, y = parts[(split, planned)]
            probs = _softmax(logits, cal.temperature)
            sp = probs @ SPECIES
            right = sp.argmax(axis=1) == SPECIES[y].argmax(axis=1)
            refused = sp.max(axis=1) < cal.threshold
            m = cal.metrics[split][source]
            assert m["photos"] == len(y)
            assert m["species_top1"] == pytest.approx(right.mean(), abs=1e-4)
            assert m["refused_positives"] == pytest.approx(refused.mean(), abs=1e-4)


def test_a_volume_matches_under_either_spelling_without_the_plan(spark):
    _, rows = _data(1)
    rows = [r for r in rows if r[0].startswith(STUDIO_PLANNED)]
    images = spark.createDataFrame(
        rows, "path string, label string, split string, pca array<double>"
    )
    arrays = SimpleNamespace(coef=np.eye(3), intercept=np.zeros(3))
    cal = calibrate(arrays, CLASSES, images, sources=[STUDIO], label_map=None)
    assert set(cal.metrics["val"]) == {STUDIO}
