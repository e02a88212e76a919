"""fruits.ml.ImageFeaturizer: a real Spark ML stage on the real bundled graph and the bundled
sample's JPEGs; the same numbers as `Featurizer` called directly, a user's Pipeline that fits
and predicts, save/load like Spark's own stages, and bad images by policy."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import PCA, SQLTransformer, StandardScaler, StringIndexer
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from fruits.artifact import build_artifact
from fruits.config import FeaturizerConfig
from fruits.engine import Featurizer, featurize_contents
from fruits.ml import ImageFeaturizer, InstalledArtifact


def read_sample(spark: SparkSession, root: Path) -> DataFrame:
    """The sample as a user's notebook reads it: binaryFile, label and split from the path."""
    parts = F.split("path", "/")
    return (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "*.jpg")
        .load(str(root))
        .select(
            "path",
            "content",
            F.element_at(parts, -2).alias("label"),
            F.element_at(parts, -3).alias("split"),
        )
    )


@pytest.fixture(scope="module")
def images(spark: SparkSession, sample_dir: Path) -> DataFrame:
    return read_sample(spark, sample_dir)


def test_features_equal_featurizer_on_the_same_bytes(images: DataFrame) -> None:
    test = images.where("split = 'Test'")
    out = ImageFeaturizer().transform(test)
    assert isinstance(out.schema["features"].dataType, VectorUDT)
    assert out.schema["error"].dataType.simpleString() == "string"
    rows = out.select("path", "content", "features", "error").orderBy("path").collect()
    assert len(rows) == 80
    assert all(r.error is None for r in rows)

    cfg = FeaturizerConfig()
    direct, errors = featurize_contents(
        Featurizer(build_artifact(cfg)),
        [bytes(r.content) for r in rows],
        size=cfg.image_size,
        max_pixels=cfg.max_pixels,
    )
    assert errors == [None] * len(rows)
    spark_features = np.stack([r.features.toArray() for r in rows])
    expected = np.stack(direct).astype(np.float64)
    assert spark_features.shape == (80, 1280)
    cosine = (spark_features * expected).sum(1) / (
        np.linalg.norm(spark_features, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.99999, cosine.min()


@pytest.mark.slow  # about 80 s on two shared cores: four passes of the CNN over 240 images
def test_pipeline_fits_predicts_and_round_trips(images: DataFrame, tmp_path: Path) -> None:
    pipeline = Pipeline(
        stages=[
            ImageFeaturizer(inputCol="content", outputCol="cnn", batchSize=32),
            StandardScaler(inputCol="cnn", outputCol="scaled", withMean=True),
            PCA(k=8, inputCol="scaled", outputCol="pca"),
            StringIndexer(inputCol="label", outputCol="y"),
            LogisticRegression(featuresCol="pca", labelCol="y", maxIter=200),
        ]
    )
    model = pipeline.fit(images.where("split = 'Training'"))
    test = images.where("split = 'Test'")
    predicted = model.transform(test).select("path", "y", "prediction", "probability")
    rows = predicted.collect()
    accuracy = sum(r.y == r.prediction for r in rows) / len(rows)
    assert len(rows) == 80
    assert accuracy >= 0.9, accuracy

    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    stage = loaded.stages[0]
    assert isinstance(stage, ImageFeaturizer)
    assert (stage.getOutputCol(), stage.getBatchSize(), stage.getImageSize()) == ("cnn", 32, 224)
    again = loaded.transform(test).select("path", "y", "prediction", "probability")
    assertDataFrameEqual(again, predicted, rtol=1e-9, atol=1e-12)


def test_corrupt_image_gives_null_vector_and_reason(spark: SparkSession, sample_dir: Path) -> None:
    good = next((sample_dir / "Test").rglob("*.jpg")).read_bytes()
    rows = [
        ("good.jpg", good),
        ("text.jpg", b"not a jpeg at all"),
        ("truncated.jpg", good[: len(good) // 3]),
        ("empty.jpg", b""),
    ]
    df = spark.createDataFrame(rows, "path string, content binary")
    out = {r.path: r for r in ImageFeaturizer().transform(df).collect()}
    assert out["good.jpg"].error is None
    assert out["good.jpg"].features.size == 1280
    for name in ("text.jpg", "truncated.jpg", "empty.jpg"):
        assert out[name].features is None, name
        assert out[name].error, name


def test_on_error_fail_stops_the_job_naming_the_file(spark: SparkSession) -> None:
    df = spark.createDataFrame([("broken.jpg", b"not a jpeg")], "path string, content binary")
    with pytest.raises(Exception, match=r"broken\.jpg"):
        ImageFeaturizer(onError="fail").transform(df).collect()


def test_bad_params_fail_on_the_driver(spark: SparkSession) -> None:
    df = spark.createDataFrame([("a.jpg", b"")], "path string, content binary")
    with pytest.raises(ValueError, match="unknown backbone"):
        ImageFeaturizer(backbone="no-such-net").transform(df)
    with pytest.raises(ValueError, match="onError"):
        ImageFeaturizer(onError="skip").transform(df)
    with pytest.raises(ValueError, match="handleInvalid"):
        ImageFeaturizer(handleInvalid="drop").transform(df)
    with pytest.raises(ValueError, match="disagree"):
        ImageFeaturizer(onError="fail", handleInvalid="skip").transform(df)


def bad_and_good_rows(spark: SparkSession, sample_dir: Path) -> DataFrame:
    """Three good JPEGs of the sample, an undecodable one and a row with null content."""
    good = [p.read_bytes() for p in sorted((sample_dir / "Test").rglob("*.jpg"))[:3]]
    rows = [(f"good{i}.jpg", b) for i, b in enumerate(good)]
    rows += [("broken.jpg", b"not a jpeg"), ("missing.jpg", None)]
    return spark.createDataFrame(rows, "path string, content binary")


def test_handle_invalid_skip_drops_bad_and_null_rows(spark: SparkSession, sample_dir: Path) -> None:
    df = bad_and_good_rows(spark, sample_dir)
    out = ImageFeaturizer(handleInvalid="skip").transform(df).collect()
    assert sorted(r.path for r in out) == ["good0.jpg", "good1.jpg", "good2.jpg"]
    assert all(r.error is None and r.features.size == 1280 for r in out)


def test_handle_invalid_keep_keeps_every_row_with_a_reason(
    spark: SparkSession, sample_dir: Path
) -> None:
    df = bad_and_good_rows(spark, sample_dir)
    out = {r.path: r for r in ImageFeaturizer(handleInvalid="keep").transform(df).collect()}
    assert len(out) == 5
    for name in ("broken.jpg", "missing.jpg"):
        assert out[name].features is None and out[name].error, name
    assert ImageFeaturizer().invalid_policy() == "keep"  # today's behaviour stays the default


def test_handle_invalid_error_names_the_bad_row(spark: SparkSession, sample_dir: Path) -> None:
    df = bad_and_good_rows(spark, sample_dir).where("path != 'missing.jpg'")
    with pytest.raises(Exception, match=r"broken\.jpg"):
        ImageFeaturizer(handleInvalid="error").transform(df).collect()
    null_only = bad_and_good_rows(spark, sample_dir).where("path = 'missing.jpg'")
    with pytest.raises(Exception, match=r"missing\.jpg"):
        ImageFeaturizer(handleInvalid="error").transform(null_only).collect()


def test_skip_lets_a_scaler_fit_where_keep_fails(spark: SparkSession, sample_dir: Path) -> None:
    """The README recipe's crash: a null vector fails StandardScaler's fit (a Scala
    MatchError); with handleInvalid="skip" the same Pipeline fits, and its scaler's mean is
    numpy's over the good rows' features."""
    df = bad_and_good_rows(spark, sample_dir)
    scaler = StandardScaler(inputCol="features", outputCol="scaled", withMean=True)
    with pytest.raises(Exception, match=r"MatchError|null"):
        Pipeline(stages=[ImageFeaturizer(handleInvalid="keep"), scaler]).fit(df)
    model = Pipeline(stages=[ImageFeaturizer(handleInvalid="skip"), scaler]).fit(df)
    good = df.where("path LIKE 'good%'").orderBy("path").collect()
    cfg = FeaturizerConfig()
    direct, errors = featurize_contents(
        Featurizer(build_artifact(cfg)),
        [bytes(r.content) for r in good],
        size=cfg.image_size,
        max_pixels=cfg.max_pixels,
    )
    assert errors == [None] * 3
    mean = np.stack(direct).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(model.stages[1].mean.toArray(), mean, rtol=1e-4, atol=1e-5)
    assert model.transform(df).count() == 3


def test_handle_invalid_saves_and_loads(tmp_path: Path) -> None:
    stage = ImageFeaturizer(handleInvalid="skip")
    stage.save(str(tmp_path / "stage"))
    assert ImageFeaturizer.load(str(tmp_path / "stage")).invalid_policy() == "skip"
    assert ImageFeaturizer(onError="fail").invalid_policy() == "error"  # the older name


def test_stage_saves_and_loads_alone(spark: SparkSession, tmp_path: Path) -> None:
    stage = ImageFeaturizer(inputCol="bytes", errorCol="why", imageSize=100, batchSize=16)
    stage.save(str(tmp_path / "stage"))
    loaded = ImageFeaturizer.load(str(tmp_path / "stage"))
    assert loaded.uid == stage.uid
    assert loaded.extractParamMap() == stage.extractParamMap()
    assert loaded.getWeights() is None
    assert loaded.featurizer_config() == FeaturizerConfig(image_size=100, batch_size=16)


def test_default_network_travels_as_a_name(tmp_path: Path) -> None:
    """The closure carries the config, not the 13 MB graph, even after the driver read it."""
    shipped = InstalledArtifact(FeaturizerConfig())
    assert len(pickle.dumps(shipped)) < 2_000
    graph = shipped.value
    assert len(graph.payload) > 10_000_000
    assert len(pickle.dumps(shipped)) < 2_000
    assert pickle.loads(pickle.dumps(shipped)).value.fingerprint == graph.fingerprint


@pytest.mark.torch
@pytest.mark.slow  # exports the network with torch on the driver
def test_custom_weights_travel_in_the_closure(images: DataFrame, tmp_path: Path) -> None:
    """User weights take the other road (the graph pickled into the UDF, no broadcast); the
    installed weights saved as a user's file give the bundled graph's features."""
    import torch

    from fruits.models import build_torch

    weights = tmp_path / "lite0.pt"
    torch.save(build_torch("efficientnet_lite0", None).net.state_dict(), weights)
    few = images.where("split = 'Test'").orderBy("path").limit(8)
    custom = ImageFeaturizer(weights=str(weights), outputCol="custom").transform(few)
    rows = ImageFeaturizer().transform(custom).select("custom", "features", "error").collect()
    assert len(rows) == 8 and all(r.error is None for r in rows)
    got = np.stack([r.custom.toArray() for r in rows])
    want = np.stack([r.features.toArray() for r in rows])
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= 0.99999, cosine.min()


def test_sql_filter_keeps_bad_images_out_of_the_fit(spark: SparkSession, sample_dir: Path) -> None:
    """The recipe in docs/databricks.md: a null vector fails StandardScaler's fit, a
    SQLTransformer on the error column after the featurizer keeps it out."""
    good = [p.read_bytes() for p in sorted((sample_dir / "Test").rglob("*.jpg"))[:3]]
    rows = [(f"good{i}.jpg", b) for i, b in enumerate(good)] + [("bad.jpg", b"not a jpeg")]
    df = spark.createDataFrame(rows, "path string, content binary")
    model = Pipeline(
        stages=[
            ImageFeaturizer(),
            SQLTransformer(statement="SELECT * FROM __THIS__ WHERE error IS NULL"),
            StandardScaler(inputCol="features", outputCol="scaled"),
        ]
    ).fit(df)
    out = model.transform(df).select("path", "scaled").collect()
    assert sorted(r.path for r in out) == ["good0.jpg", "good1.jpg", "good2.jpg"]
    assert all(r.scaled.size == 1280 for r in out)
