"""Leave-one-source-out calibration (issue 21) on a real SparkSession: each source is scored by a
classifier that never saw it, the temperature and threshold come from those scores, and each
source's figures use a temperature fitted on the *other* sources only. References: scikit-learn's
logistic regression for the held-out margins, a numpy grid search for the temperature."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fruits.classify import HeldOut, calibrate_held_out, out_of_source

A, B, C = "/data/studio", "/data/shop", "/data/orchard"


def _rows(rng):
    """Three sources, 2-d features; lemons only in the orchard."""
    rows = []
    centres = {"Apple Red 1": (2.0, 0.0), "Banana 1": (-2.0, 0.0), "Pear 1": (0.0, 2.5),
               "Lemon 1": (0.0, -2.5)}  # fmt: skip
    for src, shift, labels in ((A, 0.0, ["Apple Red 1", "Banana 1", "Pear 1"]),
                               (B, 0.7, ["Apple Red 1", "Banana 1", "Pear 1"]),
                               (C, -0.5, ["Apple Red 1", "Pear 1", "Lemon 1"])):  # fmt: skip
        for i in range(60):
            label = labels[i % 3]
            x = np.add(centres[label], shift) + rng.normal(0, 1.2, 2)
            split = "test" if i >= 51 else "train"
            rows.append((f"file:{src}/{label}/{i}.jpg", label, split, [float(v) for v in x]))
    return rows


@pytest.fixture(scope="module")
def held(spark):
    rows = _rows(np.random.default_rng(0))
    images = spark.createDataFrame(
        rows, "path string, label string, split string, pca array<double>"
    )
    return rows, out_of_source(images, [{A}, {B}, {C}])


def test_each_source_is_scored_by_a_classifier_that_never_saw_it(held):
    rows, out = held
    assert [h.source for h in out] == [0, 1, 2]
    by_source = {h.source: h for h in out}
    # the orchard alone has lemons: the classifier that left it out has never heard of them
    assert "Lemon 1" not in by_source[2].classes and "Lemon 1" in by_source[0].classes
    for g, root in enumerate((A, B, C)):
        h = by_source[g]
        own = [r for r in rows if r[0].startswith(f"file:{root}/") and r[2] != "test"]
        assert sorted(h.paths) == sorted(r[0] for r in own)  # its own photos, test split kept out
        train = [r for r in rows if not r[0].startswith(f"file:{root}/") and r[2] == "train"]
        y = [r[1] for r in train]
        ref = LogisticRegression(C=1.0 / (1e-3 * len(y)), max_iter=5000, tol=1e-10)
        ref.fit(np.array([r[3] for r in train]), y)
        assert list(ref.classes_) == h.classes
        order = {p: i for i, p in enumerate(h.paths)}
        held_x = np.array([r[3] for r in sorted(own, key=lambda r: order[r[0]])])
        got = _softmax(h.logits[:, : len(h.classes)], 1.0)
        assert np.abs(got - ref.predict_proba(held_x)).max() < 0.02


def _softmax(z, t):
    z = z / t
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _grid_t(groups):
    grid = np.exp(np.linspace(0.0, np.log(20.0), 4001))
    nll = [sum(-np.log(_softmax(lg, t)[np.arange(len(y)), y]).mean() for lg, y in groups)
           for t in grid]  # fmt: skip
    return float(grid[int(np.argmin(nll))])


def test_a_sources_figures_use_a_temperature_fitted_on_the_other_sources_only():
    rng = np.random.default_rng(1)
    classes = ["Apple Red 1", "Banana 1"]
    parts, groups = [], {}
    for g, (sure, n) in enumerate(((9.0, 200), (1.5, 80), (3.0, 120))):
        y = rng.integers(0, 2, n)
        lg = rng.normal(0, 1.0, (n, 2))
        lg[np.arange(n), y] += sure
        wrong = rng.uniform(size=n) < 0.2  # over-confident: a fifth of the labels disagree
        y = np.where(wrong, 1 - y, y)
        labels = [classes[c] for c in y]
        parts.append(HeldOut(g, classes, [f"/s{g}/{lab}/{i}.jpg" for i, lab in enumerate(labels)],
                             labels, lg))  # fmt: skip
        groups[g] = (lg, y)
    sources = ["s0", "s1", "s2"]
    t, thr, figures = calibrate_held_out(parts, sources, None)
    assert t == pytest.approx(max(1.0, _grid_t(list(groups.values()))), rel=0.01)
    for g in range(3):
        others = [groups[o] for o in range(3) if o != g]
        assert figures[sources[g]]["temperature"] == pytest.approx(
            max(1.0, _grid_t(others)), rel=0.01
        )
    assert 0.25 <= thr <= 0.9
    assert {f["photos"] for f in figures.values()} == {200, 80, 120}


def test_photos_of_a_species_no_other_source_teaches_are_counted_apart():
    """A studio class only its own source has cannot be named by a classifier fitted without
    it: such photos neither pull the threshold down nor count as misses."""
    classes = ["Apple Red 1", "Banana 1"]
    rng = np.random.default_rng(2)
    parts = []
    for g in range(2):
        labels = ["Apple Red 1", "Banana 1"] * 20 + ["Lemon 1"] * (5 * g)
        logits = rng.normal(0, 1.0, (len(labels), 2))
        for i, lab in enumerate(labels):
            if lab in classes:
                logits[i, classes.index(lab)] += 4.0
        paths = [f"/s{g}/{lab}/{i}.jpg" for i, lab in enumerate(labels)]
        parts.append(HeldOut(g, classes, paths, labels, logits))
    _, _, figures = calibrate_held_out(parts, ["s0", "s1"], None)
    assert figures["s1"]["photos"] == 40 and figures["s1"]["photos_of_untaught_species"] == 5
    assert figures["s0"]["photos_of_untaught_species"] == 0
    assert figures["s1"]["species_top1"] > 0.9  # the lemons are not misses


def test_training_only_rows_never_come_from_the_source_left_out(spark, held):
    """Composites (augment.py) join every held-out fit except those of the source their frame
    or their background photo came from. Planted: 90 "Lemon 1" rows on the apples' centre,
    made from source A's frames (and B's backgrounds for half): the fit leaving A out must
    score A exactly as without them; the fit leaving C out has learnt them."""
    rows, plain = held
    extra_rows = [
        (f"file:{A}/Apple Red 1/{i}.jpg#composite", "Lemon 1", "train", [2.0, 0.0],
         0, 1 if i % 2 else -1)
        for i in range(90)
    ]  # fmt: skip
    images = spark.createDataFrame(
        rows, "path string, label string, split string, pca array<double>"
    )
    extra = spark.createDataFrame(
        extra_rows,
        "path string, label string, split string, pca array<double>, _source int, _bg_source int",
    )
    out = {h.source: h for h in out_of_source(images, [{A}, {B}, {C}], extra=extra)}
    before = {h.source: h for h in plain}
    # A left out: none of the planted rows (all made from A's frames)
    assert out[0].classes == before[0].classes and out[0].paths == before[0].paths
    np.testing.assert_allclose(out[0].logits, before[0].logits, atol=0.01)  # L-BFGS noise

    # B left out: the 45 rows on textures still train it (B's backgrounds go), so it knows
    # lemons and takes B's apples for them; C left out: all 90 train it
    def lemon_over_apple(h: HeldOut) -> float:
        apples = [i for i, p in enumerate(h.paths) if "/Apple Red 1/" in p]
        lemon, apple = h.classes.index("Lemon 1"), h.classes.index("Apple Red 1")
        return float((h.logits[apples, lemon] - h.logits[apples, apple]).mean())

    assert lemon_over_apple(out[1]) > lemon_over_apple(before[1]) + 2.0
    assert "Lemon 1" in out[2].classes  # C alone had lemons; the planted rows teach them
    # made from C's frames on B's background photos: the fit leaving B out never sees them
    on_b = spark.createDataFrame(
        [(p.replace(A, C), lab, sp, x, 2, 1) for p, lab, sp, x, _, _ in extra_rows],
        "path string, label string, split string, pca array<double>, _source int, _bg_source int",
    )
    out_b = {h.source: h for h in out_of_source(images, [{A}, {B}, {C}], extra=on_b)}
    np.testing.assert_allclose(out_b[1].logits, before[1].logits, atol=0.01)
    assert lemon_over_apple(out_b[0]) > lemon_over_apple(before[0]) + 2.0  # A's fit has them
