"""The classifier fitted on the driver (issue 23): the same objective as Spark's multinomial
`LogisticRegression` (mean log-loss + regParam/2 ||W||^2, no standardization), the same
`PipelineModel` of Spark's own `StringIndexerModel` and `LogisticRegressionModel`. References:
Spark's own fit of the same rows, scikit-learn's `LogisticRegression` with C = 1/(n regParam),
and the objective's gradient written out here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegressionModel
from pyspark.ml.feature import StringIndexerModel
from pyspark.sql import functions as F

from fruits.classify import (
    DRIVER_MAX_VALUES,
    DRIVER_MAX_WORK,
    Y,
    driver_fits,
    fit_classifier,
    multinomial_lbfgs,
    predict,
    with_input,
)
from fruits.config import ClassifierConfig
from fruits.export import class_labels

LABELS = ["pear", "Apple Red 1", "kiwi", "banana", "Äpfel"]  # mixed case, one non-ASCII
CFG = ClassifierConfig(max_iter=500, reg_param=0.01)


def _rows(n=200, d=20, seed=0):
    """n rows of d features, 5 overlapping classes with unequal counts and feature scales."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (len(LABELS), d))
    scales = np.exp(rng.normal(0, 1.0, d))  # features of different scales (no standardization)
    y = rng.choice(len(LABELS), n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    x = (centres[y] + rng.normal(0, 1.5, (n, d))) * scales
    x[:, 3] = 2.5  # a constant feature: Spark's coefficient for it is 0
    return pd.DataFrame({"label": [LABELS[c] for c in y], "pca": list(x)})


@pytest.fixture(scope="module")
def data(spark):
    pdf = _rows()
    return pdf, spark.createDataFrame(pdf)


@pytest.fixture(scope="module")
def fits(data):
    _, df = data
    return (
        fit_classifier(df, CFG, on_driver=True),
        fit_classifier(df, CFG, on_driver=False),
    )


def _probs(model, df):
    out = predict(model, df).select("probability").collect()
    return np.asarray([r["probability"] for r in out])


def _lr(model) -> LogisticRegressionModel:
    return model.stages[-1]


def test_driver_fit_is_a_spark_pipeline_of_spark_models(fits):
    driver, spark_fit = fits
    assert isinstance(driver, PipelineModel)
    assert isinstance(driver.stages[0], StringIndexerModel)
    assert isinstance(driver.stages[1], LogisticRegressionModel)
    assert class_labels(driver) == class_labels(spark_fit) == sorted(LABELS)
    a, b = _lr(driver), _lr(spark_fit)
    assert a.numClasses == b.numClasses == len(LABELS) + 1  # the indexer's "unknown" slot
    assert a.numFeatures == b.numFeatures == 20
    for name in ("featuresCol", "labelCol", "predictionCol", "probabilityCol",
                 "rawPredictionCol", "family", "regParam", "elasticNetParam", "maxIter",
                 "standardization", "fitIntercept", "tol"):  # fmt: skip
        assert a.getOrDefault(name) == b.getOrDefault(name), name
    si_a, si_b = driver.stages[0], spark_fit.stages[0]
    for name in ("inputCol", "outputCol", "handleInvalid", "stringOrderType"):
        assert si_a.getOrDefault(name) == si_b.getOrDefault(name), name


def test_driver_fit_matches_sparks_own_fit(data, fits):
    _, df = data
    driver, spark_fit = fits
    got, want = _probs(driver, df), _probs(spark_fit, df)
    assert got.shape == want.shape == (200, 6)
    assert np.abs(got - want).max() < 1e-3
    a, b = _lr(driver), _lr(spark_fit)
    coef_a, coef_b = a.coefficientMatrix.toArray(), b.coefficientMatrix.toArray()
    k = len(LABELS)  # the real classes (the unknown slot's intercept only runs off to -inf)
    assert np.abs(coef_a[:k] - coef_b[:k]).max() < 1e-2 * np.abs(coef_b[:k]).max()
    assert np.all(coef_a[:, 3] == 0.0)  # the constant feature, as Spark leaves it
    assert abs(float(a.interceptVector.toArray().sum())) < 1e-9  # centred, as Spark's
    assert np.abs(coef_a.sum(axis=0)).max() < 1e-6  # the L2 optimum is centred too


def test_driver_fit_matches_scikit_learn_and_the_objectives_optimum(data, fits):
    sklearn = pytest.importorskip("sklearn.linear_model")
    pdf, df = data
    driver, _ = fits
    x = np.stack(pdf["pca"].to_numpy())
    n = len(x)
    ref = sklearn.LogisticRegression(C=1.0 / (n * CFG.reg_param), max_iter=20000, tol=1e-12)
    ref.fit(x, pdf["label"])
    assert list(ref.classes_) == class_labels(driver)
    got = _probs(driver, df)
    assert np.abs(got[:, : len(LABELS)] - ref.predict_proba(x)).max() < 1e-4
    # the gradient of Spark's objective at the driver's solution, written out
    lr = _lr(driver)
    w, b = lr.coefficientMatrix.toArray(), lr.interceptVector.toArray()
    y = np.array([class_labels(driver).index(s) for s in pdf["label"]])
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p - np.eye(w.shape[0])[y]
    grad_w = g.T @ x / n + CFG.reg_param * w
    scale = x.std(0, ddof=1)
    # in Spark's standardized units; Spark's own fit of these rows leaves 4.8e-4 and 7.7e-6
    assert np.abs(grad_w[:, scale > 0] * scale[scale > 0]).max() < 1e-4
    assert np.abs(g.mean(0)).max() < 1e-5


def _objective(model, pdf):
    """Spark's: mean log-loss + regParam/2 ||W||^2, intercepts not penalised."""
    x = np.stack(pdf["pca"].to_numpy())
    y = np.array([class_labels(model).index(s) for s in pdf["label"]])
    lr = _lr(model)
    w, b = lr.coefficientMatrix.toArray(), lr.interceptVector.toArray()
    z = x @ w.T + b
    top = z.max(1)
    loss = top + np.log(np.exp(z - top[:, None]).sum(1)) - z[np.arange(len(y)), y]
    return float(loss.mean() + 0.5 * CFG.reg_param * (w * w).sum())


def test_the_driver_reaches_sparks_objective_at_least_as_low(data, fits):
    pdf, _ = data
    driver, spark_fit = fits
    ours, sparks = _objective(driver, pdf), _objective(spark_fit, pdf)
    assert ours <= sparks + 1e-12
    assert sparks - ours < 1e-4 * sparks  # the same objective: the values agree


def test_the_objective_with_no_penalty_centres_the_coefficients():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] + rng.normal(0, 2.0, 60) > 0).astype(int) + (x[:, 1] > 1)
    coef, intercept = multinomial_lbfgs(x.copy(), y, 4, 0.0, 300)
    assert np.abs(coef.sum(axis=0)).max() < 1e-12
    assert abs(intercept.sum()) < 1e-12


def test_saved_and_loaded_the_driver_fit_predicts_the_same(data, fits, tmp_path):
    _, df = data
    driver, _ = fits
    driver.write().overwrite().save(str(tmp_path / "classifier"))
    loaded = PipelineModel.load(str(tmp_path / "classifier"))
    assert class_labels(loaded) == class_labels(driver)
    np.testing.assert_array_equal(_probs(loaded, df), _probs(driver, df))
    a, b = _lr(loaded), _lr(driver)
    np.testing.assert_array_equal(a.coefficientMatrix.toArray(), b.coefficientMatrix.toArray())
    assert a.getRegParam() == b.getRegParam() and a.getFamily() == "multinomial"


def test_an_unseen_label_at_transform_time_is_kept(spark, data, fits):
    pdf, _ = data
    driver, spark_fit = fits
    unseen = pdf.head(10).assign(label=["zebra"] * 5 + [None] * 5)
    df = spark.createDataFrame(unseen, "label string, pca array<double>")
    for model in (driver, spark_fit):
        out = model.transform(with_input(df, None)).select(Y, "prediction").collect()
        assert [r[Y] for r in out] == [float(len(LABELS))] * 10  # the "unknown" index
        assert all(r["prediction"] < len(LABELS) for r in out)  # never predicted


def test_the_chooser_fits_small_data_on_the_driver_and_large_with_spark():
    cfg = ClassifierConfig()
    assert driver_fits(215, 1280, 6, cfg)  # the bundled sample's training rows
    assert driver_fits(320, 256, 141, cfg)
    rows = DRIVER_MAX_WORK // (1280 * 101)
    assert driver_fits(rows, 1280, 100, cfg) and not driver_fits(rows + 1, 1280, 100, cfg)
    assert not driver_fits(1000, 1280, 100, cfg)  # where Spark was as fast (2 cores)
    assert not driver_fits(16_856, 1280, 141, cfg)  # the multi-source recipe: Spark's
    assert not driver_fits(DRIVER_MAX_VALUES // 1280 + 1, 1280, 0, cfg)  # memory, whatever else
    assert not driver_fits(320, 1280, 6, ClassifierConfig(elastic_net=0.5))  # OWL-QN: Spark's
    assert not driver_fits(0, 1280, 6, cfg)


def test_fit_classifier_chooses_by_itself(data, monkeypatch):
    """None (the default) fits on the driver here, and with Spark once the threshold is below
    the data: seen by whether the Spark fit's training summary is there."""
    import fruits.classify as classify

    _, df = data
    small = fit_classifier(df, ClassifierConfig(max_iter=50))
    assert not _lr(small).hasSummary  # built from arrays: no training summary
    assert _lr(fit_classifier(df, ClassifierConfig(max_iter=50, elastic_net=0.5))).hasSummary
    monkeypatch.setattr(classify, "DRIVER_MAX_WORK", 200 * 20 * 6 - 1)  # 5 labels + unknown
    big = fit_classifier(df, ClassifierConfig(max_iter=50))
    assert _lr(big).hasSummary  # Spark's LogisticRegression.fit
    monkeypatch.setattr(classify, "DRIVER_MAX_WORK", 200 * 20 * 6)
    assert not _lr(fit_classifier(df, ClassifierConfig(max_iter=50))).hasSummary


def test_the_driver_fit_reads_the_scaled_features_like_sparks(spark, data):
    """Through the run's scaler (`with_input`), as `classify.stage` fits."""
    from fruits.config import ReduceConfig
    from fruits.reduce import fit_reducer

    pdf, _ = data
    df = spark.createDataFrame(pdf.rename(columns={"pca": "features"})).withColumn(
        "features", F.col("features").cast("array<float>")
    )
    scaler = fit_reducer(df, ReduceConfig(k=3)).model.stages[0]
    cfg = ClassifierConfig(max_iter=500, reg_param=0.01)
    driver = fit_classifier(df, cfg, scaler=scaler, on_driver=True)
    spark_fit = fit_classifier(df, cfg, scaler=scaler, on_driver=False)
    assert _lr(driver).numFeatures == 20
    got, want = _probs_scaled(driver, df, scaler), _probs_scaled(spark_fit, df, scaler)
    assert got.shape == (200, 6) and np.abs(got - want).max() < 1e-3


def _probs_scaled(model, df, scaler):
    out = predict(model, df, scaler=scaler).select("probability").collect()
    return np.asarray([r["probability"] for r in out])
