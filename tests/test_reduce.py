import numpy as np
import pandas as pd
import pytest
from pyspark.ml import PipelineModel
from sklearn.decomposition import PCA as SkPCA
from sklearn.preprocessing import StandardScaler as SkScaler

from fruits.config import ReduceConfig
from fruits.reduce import choose_k, fit_reducer, moments


def test_choose_k_is_the_smallest_k_reaching_the_target():
    explained = np.array([0.5, 0.3, 0.15, 0.05])
    assert choose_k(explained, 0.5) == 1
    assert choose_k(explained, 0.8) == 2
    assert choose_k(explained, 0.95) == 3
    assert choose_k(explained, 1.0) == 4
    with pytest.raises(ValueError):
        choose_k(explained, 0)


def _sklearn_projection(
    train: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    scaler = SkScaler().fit(train)
    pca = SkPCA(n_components=k, svd_solver="full").fit(scaler.transform(train))
    # Spark's scaler divides by the sample std (ddof=1), sklearn by the population std.
    n = len(train)
    return pca.transform(scaler.transform(rows)) * np.sqrt(
        (n - 1) / n
    ), pca.explained_variance_ratio_


def _assert_same_up_to_sign(ours: np.ndarray, ref: np.ndarray, atol: float) -> None:
    signs = np.sign(np.sum(ours * ref, axis=0))
    np.testing.assert_allclose(ours * signs, ref, atol=atol)


def test_projection_matches_sklearn_on_synthetic_data(spark):
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(120, 4)) * [10, 5, 2, 1]
    x = latent @ rng.normal(size=(4, 12)) + rng.normal(scale=0.05, size=(120, 12)) + 3.0
    split = ["train"] * 90 + ["test"] * 30
    pdf = pd.DataFrame({"features": list(x.astype(np.float32)), "split": split})
    df = spark.createDataFrame(pdf)
    reducer = fit_reducer(df.where("split = 'train'"), ReduceConfig(variance=0.99))
    ours = np.stack(reducer.transform(df).toPandas()["pca"].to_numpy())
    ref, ratio = _sklearn_projection(x[:90].astype(np.float32), x.astype(np.float32), reducer.k)
    assert reducer.k <= 5
    np.testing.assert_allclose(reducer.explained_variance[: reducer.k], ratio, atol=1e-6)
    _assert_same_up_to_sign(ours, ref, atol=1e-3)


@pytest.mark.parametrize("on_driver", [True, False])
def test_moments_match_numpy_on_either_path(spark, on_driver):
    """The driver's numpy and the distributed pass give numpy's own count, mean and covariance
    (ddof 1), over several partitions."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(150, 7)) * [1, 2, 3, 4, 5, 6, 7] + 10).astype(np.float32)
    rows = [list(map(float, r)) for r in x]
    df = spark.createDataFrame([(r,) for r in rows], "features array<float>").repartition(3)
    n, mean, cov = moments(df, on_driver=on_driver)
    assert n == 150
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-7)


def test_fixed_k_and_bounds(spark):
    rng = np.random.default_rng(1)
    df = spark.createDataFrame(
        pd.DataFrame({"features": list(rng.normal(size=(20, 6)).astype(np.float32))})
    )
    assert fit_reducer(df, ReduceConfig(k=3)).k == 3
    with pytest.raises(ValueError, match="between 1 and 6"):
        fit_reducer(df, ReduceConfig(k=7))


def test_real_run_projection_matches_sklearn_and_reloads(sample_run, spark):
    out = sample_run.output
    images = pd.read_parquet(f"{out}/images.parquet")
    feats = np.stack(images["features"].to_numpy()).astype(np.float64)
    pca = np.stack(images["pca"].to_numpy())
    train = feats[images["split"].to_numpy() == "train"]
    k = sample_run.report["pca_k"]
    ref, ratio = _sklearn_projection(train, feats, k)
    assert abs(ratio.sum() - sample_run.report["pca_explained_variance"]) < 1e-4
    # Leading components are well separated: compare them one by one, and the whole subspace.
    _assert_same_up_to_sign(pca[:, :10], ref[:, :10], atol=2e-2 * np.abs(ref[:, :10]).max())
    model = PipelineModel.load(f"{out}/models/scaler_pca")
    basis = model.stages[-1].pc.toArray()
    sk_basis = (
        SkPCA(n_components=k, svd_solver="full").fit(SkScaler().fit_transform(train)).components_.T
    )
    overlap = np.linalg.norm(basis.T @ sk_basis) ** 2
    assert overlap == pytest.approx(k, rel=1e-3)


def test_numpy_projection_equals_spark_ml_on_the_saved_model(sample_run, spark):
    """The stored `pca` column comes from `predictor.reduce_features` (numpy, the serving
    code); the saved Spark ML model, which users reload, must give the same coordinates."""
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import functions as F

    from fruits.reduce import load_reducer

    out = sample_run.output
    images = spark.read.parquet(f"{out}/images.parquet").select("path", "features", "pca")
    model = PipelineModel.load(f"{out}/models/scaler_pca")
    spark_ml = model.transform(images.withColumn("_features_vec", array_to_vector("features")))
    theirs = spark_ml.select("path", vector_to_array("_pca_vec", "float32").alias("ml"))
    got = images.join(theirs, "path").toPandas()
    assert len(got) == sample_run.report["images_ok"]
    ours, ml = np.stack(got["pca"].to_numpy()), np.stack(got["ml"].to_numpy())
    np.testing.assert_allclose(ours, ml, atol=1e-4 * np.abs(ml).max())
    # A row without features gets a null `pca`, and the rows around it keep theirs.
    reducer = load_reducer(f"{out}/models/scaler_pca")
    some = images.drop("pca").limit(3)
    with_null = some.unionByName(
        some.limit(1).select("path", F.lit(None).cast("array<float>").alias("features"))
    )
    rows = reducer.transform(with_null).collect()
    assert sum(r["pca"] is None for r in rows) == 1
    assert all(len(r["pca"]) == sample_run.report["pca_k"] for r in rows if r["features"])
