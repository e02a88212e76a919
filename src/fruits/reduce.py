"""Reduce: StandardScaler (centring: Spark's PCA does not centre) + PCA, fitted on the train
split, k chosen from an explained-variance target unless fixed."""

from __future__ import annotations

import json
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.ml.functions import array_to_vector
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.config import ReduceConfig
from fruits.spark import Session

VEC = "_features_vec"
SCALED = "_scaled"
PCA_VEC = "_pca_vec"


@dataclass(frozen=True)
class Reducer:
    """The fitted scaler + PCA, and what choosing k looked like (for the report and plots)."""

    model: PipelineModel
    k: int
    explained_variance: list[float]  # per component, for every candidate k that was computed

    @property
    def cumulative(self) -> float:
        return float(np.sum(self.explained_variance[: self.k]))

    def transform(
        self, df: DataFrame, *, features: str = "features", out: str = "pca"
    ) -> DataFrame:
        """Adds `out` (array<float>, k) next to the original columns (null where `features`
        is): `engine.reduce_features` on each Arrow batch, the function serving runs, so the
        stored `pca` column and a served photo's coordinates come from one code path. numpy's
        BLAS does a batch at once where Spark ML's models multiply row by row in Java.
        """
        from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

        from fruits.arrow import feature_matrix, list_column
        from fruits.engine import reduce_features

        mean, scale, pc = reducer_arrays(self.model)

        def project(batches: Iterable[Any]) -> Iterator[Any]:
            for batch in batches:
                column = batch.column(features)
                z = reduce_features(feature_matrix(column, len(mean)), mean, scale, pc)
                yield batch.append_column(out, list_column(z, column.is_valid()))

        fields = [f for f in df.schema.fields if f.name != out]
        schema = StructType([*fields, StructField(out, ArrayType(FloatType()))])
        return df.drop(out).mapInArrow(project, schema)


_ARRAYS: weakref.WeakKeyDictionary[Any, tuple[np.ndarray, np.ndarray, np.ndarray]] = (
    weakref.WeakKeyDictionary()
)


def reducer_arrays(model: PipelineModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fitted scaler + PCA as float64 arrays: mean (zeros without centring), scale (1/std, 0
    where std is 0, as Spark's StandardScalerModel; ones without scaling) and pc (d, k).
    Read from the JVM once per model (~0.5 s of py4j for 1280 x 124; a run asks three times:
    the projection, the serving export, the chained graph)."""
    if model not in _ARRAYS:
        _ARRAYS[model] = _read_arrays(model)
    mean, scale, pc = _ARRAYS[model]
    return mean.copy(), scale.copy(), pc.copy()  # a caller may write to its arrays


def _read_arrays(model: PipelineModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scaler = cast(StandardScalerModel, model.stages[0])
    pca = cast(PCAModel, model.stages[-1])
    std = np.asarray(scaler.std.toArray(), dtype=np.float64)
    d = len(std)
    mean = scaler.mean.toArray() if scaler.getWithMean() else np.zeros(d)
    scale = np.divide(1.0, std, out=np.zeros(d), where=std != 0) if scaler.getWithStd() else None
    pc = np.asarray(pca.pc.toArray(), dtype=np.float64)
    return np.asarray(mean, dtype=np.float64), np.ones(d) if scale is None else scale, pc


def choose_k(explained: np.ndarray, target: float) -> int:
    """Smallest k whose cumulative explained variance reaches `target` (all if none does)."""
    if not 0 < target <= 1:
        raise ValueError(f"variance target must be in (0, 1], got {target}")
    cum = np.cumsum(explained)
    hits = np.nonzero(cum >= target - 1e-12)[0]
    return int(hits[0] + 1) if len(hits) else len(explained)


def fit_reducer(
    train: DataFrame, cfg: ReduceConfig, *, features: str = "features", work: str | None = None
) -> Reducer:
    """Fit on `train` only, from one distributed pass (`moments`: count, sum and Gramian); the
    scaler's mean and std and the covariance come from those moments, and only the d x d
    eigendecomposition runs in numpy on the driver. Both fitted stages are genuine Spark models
    (`StandardScalerModel`, `PCAModel`): they transform, save and load like Spark's own.

    Why not `StandardScaler.fit` + `pyspark.ml.feature.PCA.fit` (or `Correlation`): five to
    seven Spark jobs over the features where one will do, Spark's Gramian is a rank-1 update
    per row in pure-Java BLAS where numpy multiplies whole Arrow batches, and on this stack
    `PCA.fit`'s SVD of a rank-deficient covariance (fewer images than the 1280 features, as on
    the sample) returned spurious large singular values: shares up to 2.3x too small, so k
    overshot. `numpy.linalg.eigh` on the same covariance agrees with scikit-learn
    (tests/test_reduce.py). Through Spark Connect the models are built on the server from files
    (`_saved_models`), in `work` (a folder the server can write).
    """
    n, mean, cov = moments(train, features)
    if n < 2:
        raise ValueError(f"PCA needs at least 2 training images, got {n}")
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    k_max = min(len(std), n)
    if cfg.k is not None and not 1 <= cfg.k <= k_max:
        raise ValueError(f"--pca-k must be between 1 and {k_max}, got {cfg.k}")
    if cfg.scale_std:  # the covariance of the scaled features; constant features stay 0
        s = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)
        cov = cov * np.outer(s, s)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:k_max]
    eigval = np.clip(eigval[order], 0.0, None)
    eigvec = eigvec[:, order]
    total = float(np.trace(cov))
    explained = eigval / total if total > 0 else np.zeros_like(eigval)
    k = cfg.k if cfg.k is not None else choose_k(explained, cfg.variance)
    if cfg.k is None and cfg.max_k:
        k = min(k, cfg.max_k)
    # Fix each component's sign (largest loading positive) so re-fits are comparable.
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(eigvec.shape[1])])
    eigvec = eigvec * np.where(signs == 0, 1.0, signs)
    spark = train.sparkSession
    sc = Session(spark).context()
    if sc is None:  # no JVM in this process (Connect): Spark's models through a saved folder
        if work is None:
            raise ValueError("through Spark Connect, fit_reducer needs `work`: a folder to save in")
        model = _saved_models(spark, work, mean, std, cfg.scale_std, eigvec[:, :k], explained[:k])
        return Reducer(model, k, explained.tolist())
    scaler = _spark_scaler_model(sc, mean, std, cfg.scale_std)  # the same classes, in the JVM
    pca_model = _spark_pca_model(sc, eigvec[:, :k], explained[:k])
    return Reducer(PipelineModel(stages=[scaler, pca_model]), k, explained.tolist())


DRIVER_MOMENTS_ROWS = 5_000  # up to 25 MB of 1280 float32 features: the driver's numpy


def moments(
    df: DataFrame, features: str = "features", *, on_driver: bool | None = None
) -> tuple[int, np.ndarray, np.ndarray]:
    """Row count, mean and (unbiased) covariance of an array column, in one pass.

    Up to `DRIVER_MOMENTS_ROWS` rows (`on_driver` None: decided by reading at most one more
    row; True/False forces a path) the rows come to the driver as Arrow and numpy computes the
    same float64 sums: one small job instead of a pass plus a shuffle (the bundled sample's
    reduce stage: 3.9 s -> 0.5 s of moments). Above it, the distributed pass below.

    Each task reduces its Arrow batches to a count, a sum and a Gramian X^T X in float64 with
    numpy (a blocked matrix product, where Spark's `RowMatrix` adds one rank-1 update per row);
    Spark then sums the per-task results row by row of the Gramian (`Summarizer.sum`, grouped by
    row index), so no single task or the driver ever holds more than one d x d matrix. Raw
    moments in float64 are exact enough here: CNN features have means of the order of their
    standard deviations, far from where `G/n - mean mean^T` loses digits.
    """
    from pyspark.ml.stat import Summarizer

    if on_driver is not False:
        head = df.select(features).limit(DRIVER_MOMENTS_ROWS + 1).toArrow()
        if on_driver or head.num_rows <= DRIVER_MOMENTS_ROWS:
            if on_driver and head.num_rows > DRIVER_MOMENTS_ROWS:
                head = df.select(features).toArrow()  # forced: every row
            return _driver_moments(head.column(features).combine_chunks())

    def partial(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        n = 0
        total: np.ndarray | float = 0.0  # numpy arrays from the first rows on
        gram: np.ndarray | float = 0.0
        for batch in batches:
            if len(batch):
                x = np.stack(batch[features].to_numpy()).astype(np.float64)
                n += len(x)
                total = total + x.sum(axis=0)
                gram = gram + x.T @ x
        if n:
            rows = [*np.atleast_2d(gram), total, np.array([float(n)])]
            yield pd.DataFrame({"i": np.arange(len(rows)), "v": rows})

    parts = df.select(features).mapInPandas(partial, "i int, v array<double>")
    summed = (
        parts.groupBy("i").agg(Summarizer.sum(array_to_vector(F.col("v"))).alias("s")).collect()
    )
    if not summed:
        return 0, np.zeros(0), np.zeros((0, 0))
    by_row = {r["i"]: r["s"].toArray() for r in summed}
    dim = len(by_row) - 2  # d Gramian rows, the sum, the count
    n = int(by_row[dim + 1][0])
    mean = by_row[dim] / n
    gram = np.stack([by_row[i] for i in range(dim)])
    cov = (gram - n * np.outer(mean, mean)) / max(n - 1, 1)
    return n, mean, (cov + cov.T) / 2


def _driver_moments(column: Any) -> tuple[int, np.ndarray, np.ndarray]:
    """`moments` of an Arrow array<float> column on the driver: the same float64 sums."""
    from fruits.arrow import feature_matrix

    if len(column) == column.null_count:
        return 0, np.zeros(0), np.zeros((0, 0))
    dim = len(column.filter(column.is_valid())[0])
    x = feature_matrix(column, dim).astype(np.float64)
    n = len(x)
    mean = x.sum(axis=0) / n
    cov = (x.T @ x - n * np.outer(mean, mean)) / max(n - 1, 1)
    return n, mean, (cov + cov.T) / 2


def _spark_scaler_model(
    sc: Any, mean: np.ndarray, std: np.ndarray, scale_std: bool
) -> StandardScalerModel:
    """Spark's own StandardScalerModel (withMean, withStd as configured) from our moments."""
    from pyspark.ml.common import _py2java

    uid = f"StandardScaler_{uuid.uuid4().hex[:12]}"
    jmodel = sc._jvm.org.apache.spark.ml.feature.StandardScalerModel(
        uid, _py2java(sc, DenseVector(std.tolist())), _py2java(sc, DenseVector(mean.tolist()))
    )
    jmodel.set(jmodel.withMean(), True)
    jmodel.set(jmodel.withStd(), scale_std)
    jmodel.setInputCol(VEC).setOutputCol(SCALED)
    model = StandardScalerModel(jmodel)
    model._transfer_params_from_java()  # else Python's getters answer defaults (withMean=False)
    return model


def _spark_pca_model(sc: Any, pc: np.ndarray, explained: np.ndarray) -> PCAModel:
    """Wrap our components in Spark's own PCAModel class (transform, save, load unchanged)."""
    from pyspark.ml.common import _py2java

    d, k = pc.shape
    jpc = _py2java(sc, DenseMatrix(d, k, pc.flatten(order="F").tolist()))
    jev = _py2java(sc, DenseVector(explained.tolist()))
    uid = f"PCA_{uuid.uuid4().hex[:12]}"
    jmodel = sc._jvm.org.apache.spark.ml.feature.PCAModel(uid, jpc, jev)
    jmodel.set(jmodel.k(), k)
    jmodel.setInputCol(SCALED).setOutputCol(PCA_VEC)
    model = PCAModel(jmodel)
    model._transfer_params_from_java()
    return model


def _saved_models(
    spark: SparkSession,
    work: str,
    mean: np.ndarray,
    std: np.ndarray,
    scale_std: bool,
    pc: np.ndarray,
    explained: np.ndarray,
) -> PipelineModel:
    """Through Spark Connect (no JVM in this process to build a model in): the scaler and the
    PCA are written in Spark ML's own persistence layout, as `StandardScalerModel.write` and
    `PCAModel.write` lay it out (a metadata JSON line, a one-row Parquet of the fitted arrays),
    then loaded with each model's own `load`, so the server holds genuine Spark models."""
    from pyspark.ml.linalg import MatrixUDT, VectorUDT
    from pyspark.sql.types import DataType, StructField, StructType

    stamp = int(time.time() * 1000)
    uids = [f"StandardScaler_{uuid.uuid4().hex[:12]}", f"PCA_{uuid.uuid4().hex[:12]}"]

    def metadata(path: str, cls: str, uid: str, params: dict[str, Any]) -> None:
        line = {"class": cls, "timestamp": stamp, "sparkVersion": spark.version, "uid": uid}
        text = json.dumps({**line, "paramMap": params, "defaultParamMap": {}})
        spark.createDataFrame([(text,)], "value string").coalesce(1).write.text(path + "/metadata")

    def data(
        path: str, names: tuple[str, str], values: tuple[Any, Any], types: tuple[DataType, DataType]
    ) -> None:
        schema = StructType([StructField(n, t, False) for n, t in zip(names, types, strict=True)])
        spark.createDataFrame([values], schema).coalesce(1).write.parquet(path + "/data")

    root = f"{work.rstrip('/')}/scaler_pca"
    scaler, pca = f"{root}/0_{uids[0]}", f"{root}/1_{uids[1]}"
    scaler_params = {"withMean": True, "withStd": scale_std, "inputCol": VEC, "outputCol": SCALED}
    metadata(scaler, "org.apache.spark.ml.feature.StandardScalerModel", uids[0], scaler_params)
    vectors = (DenseVector(std.tolist()), DenseVector(mean.tolist()))
    data(scaler, ("std", "mean"), vectors, (VectorUDT(), VectorUDT()))
    d, k = pc.shape
    pca_params = {"k": k, "inputCol": SCALED, "outputCol": PCA_VEC}
    metadata(pca, "org.apache.spark.ml.feature.PCAModel", uids[1], pca_params)
    matrix = DenseMatrix(d, k, pc.flatten(order="F").tolist())
    pca_values = (matrix, DenseVector(explained.tolist()))
    data(pca, ("pc", "explainedVariance"), pca_values, (MatrixUDT(), VectorUDT()))
    # Each stage on its own: Spark 4.0's Connect reader refuses a Java-written PipelineModel.
    return PipelineModel(stages=[StandardScalerModel.load(scaler), PCAModel.load(pca)])


def load_reducer(path: str, explained_variance: list[float] | None = None) -> Reducer:
    """Reload a saved scaler + PCA (e.g. to project new images without refitting)."""
    model = PipelineModel.load(path)
    pca = cast(PCAModel, model.stages[-1])
    k = int(pca.getK())
    ev = explained_variance or pca.explainedVariance.toArray().tolist()
    return Reducer(model, k, list(ev))
