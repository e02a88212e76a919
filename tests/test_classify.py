"""Classifier metrics on inputs small enough to check by hand, and the Spark model on
well-separated synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fruits.classify import (
    ClassifierConfig,
    evaluate,
    evaluation_from_confusion,
    fit_classifier,
    predict,
)
from fruits.export import class_labels


def test_metrics_from_a_hand_checked_confusion_matrix():
    # rows: true class, columns: predicted class. c never occurs (no support).
    cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    ev = evaluation_from_confusion(["a", "b", "c"], cm)
    assert ev.accuracy == pytest.approx(5 / 6)
    a, b = ev.per_class["a"], ev.per_class["b"]
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 0.75, 4)
    assert a["f1"] == pytest.approx(2 * 1.0 * 0.75 / 1.75)  # 6/7
    assert b["precision"] == pytest.approx(2 / 3)
    assert b["recall"] == 1.0
    assert b["f1"] == pytest.approx(0.8)
    assert "c" not in ev.per_class  # no support: left out of macro-F1
    assert ev.macro_f1 == pytest.approx((6 / 7 + 0.8) / 2)
    assert ev.confusion == cm.tolist()
    assert ev.summary()["accuracy"] == ev.accuracy


def test_a_class_never_predicted_counts_zero_f1_not_a_division_error():
    cm = np.array([[2, 0], [2, 0]])  # everything predicted as a
    ev = evaluation_from_confusion(["a", "b"], cm)
    assert ev.accuracy == 0.5
    assert ev.per_class["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert ev.per_class["a"]["precision"] == 0.5
    assert ev.macro_f1 == pytest.approx((2 * 0.5 * 1.0 / 1.5 + 0.0) / 2)


def test_perfect_and_empty_matrices():
    perfect = evaluation_from_confusion(["x", "y"], np.diag([5, 7]))
    assert (perfect.accuracy, perfect.macro_f1) == (1.0, 1.0)
    empty = evaluation_from_confusion(["x"], np.zeros((1, 1), dtype=int))
    assert (empty.accuracy, empty.macro_f1, empty.per_class) == (0.0, 0.0, {})


def _blobs(n_per_class: int, seed: int) -> pd.DataFrame:
    """Three labels, centres 20 standard deviations apart in 5 dimensions."""
    rng = np.random.default_rng(seed)
    centres = {"pear": 0.0, "apple": 20.0, "kiwi": -20.0}
    rows = []
    for label, c in centres.items():
        for _ in range(n_per_class):
            x = rng.normal(size=5) + np.array([c, -c, c / 2, 0, 0])
            rows.append((label, x.astype(np.float32)))
    return pd.DataFrame(rows, columns=["label", "pca"])


@pytest.fixture(scope="module")
def blobs_model(spark):
    train = spark.createDataFrame(_blobs(30, seed=1))
    return fit_classifier(train, ClassifierConfig(max_iter=100))


def test_classifier_separates_well_separated_classes(spark, blobs_model):
    assert class_labels(blobs_model) == ["apple", "kiwi", "pear"]  # alphabetical, stable
    test = spark.createDataFrame(_blobs(10, seed=2))
    ev = evaluate(blobs_model, test)
    assert ev.accuracy == 1.0
    assert ev.macro_f1 == 1.0
    assert {k: v["support"] for k, v in ev.per_class.items()} == {
        "apple": 10,
        "kiwi": 10,
        "pear": 10,
    }

    rows = predict(blobs_model, test).collect()
    for r in rows:
        assert r["predicted_label"] == r["label"]
        probs = r["probability"]
        assert sum(probs) == pytest.approx(1.0)
        # one slot per class, plus the label indexer's "unknown" slot (handleInvalid="keep"),
        # which no training row ever has
        assert len(probs) in (3, 4)
        assert sum(probs[3:]) < 1e-3
        assert max(probs) > 0.9


def test_a_test_label_unseen_in_training_is_counted_as_an_error(spark, blobs_model):
    pdf = _blobs(10, seed=3)
    pdf.loc[:1, "label"] = "zebra"  # two rows of an unknown class, features of "pear"
    ev = evaluate(blobs_model, spark.createDataFrame(pdf))
    assert ev.accuracy == pytest.approx(28 / 30)
    assert ev.per_class["zebra"]["recall"] == 0.0
    assert "zebra" in ev.labels


def test_macro_f1_is_scikit_learns_default_and_the_true_class_mean_is_named_apart():
    from sklearn.metrics import confusion_matrix, f1_score

    rng = np.random.default_rng(11)
    names = ["apple", "banana", "kiwi", "pear", "plum"]
    y_true = rng.choice(names[:3], 200)  # pear and plum never true...
    y_pred = np.where(rng.uniform(size=200) < 0.7, y_true, rng.choice(names[:4], 200))
    assert "pear" in set(y_pred) and "plum" not in set(y_pred)  # ...pear is predicted
    cm = confusion_matrix(y_true, y_pred, labels=names)
    ev = evaluation_from_confusion(names, cm)
    assert ev.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    true_only = f1_score(y_true, y_pred, average="macro", labels=names[:3])
    assert ev.macro_f1_true_classes == pytest.approx(true_only, abs=1e-12)
    assert ev.macro_f1 < ev.macro_f1_true_classes
    summary = ev.summary()
    assert summary["macro_f1"] == ev.macro_f1
    assert summary["macro_f1_true_classes"] == ev.macro_f1_true_classes
    assert "scikit-learn" in summary["macro_f1_labels"]
    assert ev.per_class["pear"]["support"] == 0 and "plum" not in ev.per_class
