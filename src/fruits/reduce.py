"""Reduce: StandardScaler (centring: Spark's PCA does not centre) + PCA, fitted on the train
split, k chosen from an explained-variance target unless fixed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCAModel, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.ml.stat import Correlation
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.config import ReduceConfig

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
        """Adds `out` (array<float>, k) next to the original columns."""
        vec = df.withColumn(VEC, array_to_vector(F.col(features)))
        projected = self.model.transform(vec)
        return projected.withColumn(out, vector_to_array(F.col(PCA_VEC), "float32")).drop(
            VEC, SCALED, PCA_VEC
        )


def choose_k(explained: np.ndarray, target: float) -> int:
    """Smallest k whose cumulative explained variance reaches `target` (all if none does)."""
    if not 0 < target <= 1:
        raise ValueError(f"variance target must be in (0, 1], got {target}")
    cum = np.cumsum(explained)
    hits = np.nonzero(cum >= target - 1e-12)[0]
    return int(hits[0] + 1) if len(hits) else len(explained)


def fit_reducer(train: DataFrame, cfg: ReduceConfig, *, features: str = "features") -> Reducer:
    """Fit on `train` only: Spark's StandardScaler, then a PCA whose covariance Spark computes
    in one distributed pass; only the d x d eigendecomposition runs in numpy on the driver.

    Why not `pyspark.ml.feature.PCA.fit`: on this stack (pure-Java LAPACK, no native BLAS) its
    SVD of a rank-deficient covariance (fewer images than the 1280 features, as on the sample)
    returned spurious large singular values: shares up to 2.3x too small and spurious components
    ranked among the top ones, so k overshot and the variance kept fell short of the target.
    `numpy.linalg.eigh` on the same covariance agrees with scikit-learn (tests/test_reduce.py).
    The result is a genuine Spark `PCAModel`: it transforms, saves and loads like one.
    """
    vec = train.select(array_to_vector(F.col(features)).alias(VEC))
    scaler = StandardScaler(inputCol=VEC, outputCol=SCALED, withMean=True, withStd=cfg.scale_std)
    scaler_model = scaler.fit(vec)
    scaled = scaler_model.transform(vec).select(SCALED).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n = scaled.count()
        if n < 2:
            raise ValueError(f"PCA needs at least 2 training images, got {n}")
        std = np.asarray(scaler_model.std.toArray())
        k_max = min(len(std), n)
        if cfg.k is not None and not 1 <= cfg.k <= k_max:
            raise ValueError(f"--pca-k must be between 1 and {k_max}, got {cfg.k}")
        cov = _covariance(scaled, std, cfg.scale_std)
    finally:
        scaled.unpersist()
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
    pca_model = _spark_pca_model(train.sparkSession, eigvec[:, :k], explained[:k])
    return Reducer(PipelineModel(stages=[scaler_model, pca_model]), k, explained.tolist())


def _covariance(scaled: DataFrame, std: np.ndarray, scale_std: bool) -> np.ndarray:
    """Covariance of the scaled column via Spark's distributed Pearson correlation
    (`pyspark.ml.stat.Correlation`: a Gramian aggregated on the executors)."""
    row = Correlation.corr(scaled, SCALED, "pearson").first()
    assert row is not None
    corr = np.nan_to_num(np.asarray(row[0].toArray()), nan=0.0)  # constant features: NaN
    s = (std > 0).astype(float) if scale_std else std
    return corr * np.outer(s, s)


def _spark_pca_model(spark: SparkSession, pc: np.ndarray, explained: np.ndarray) -> PCAModel:
    """Wrap our components in Spark's own PCAModel class (transform, save, load unchanged)."""
    from pyspark.ml.common import _py2java

    sc = spark.sparkContext
    d, k = pc.shape
    jpc = _py2java(sc, DenseMatrix(d, k, pc.flatten(order="F").tolist()))
    jev = _py2java(sc, DenseVector(explained.tolist()))
    uid = f"PCA_{uuid.uuid4().hex[:12]}"
    jmodel = sc._jvm.org.apache.spark.ml.feature.PCAModel(uid, jpc, jev)  # type: ignore[union-attr]
    jmodel.set(jmodel.k(), k)
    jmodel.setInputCol(SCALED).setOutputCol(PCA_VEC)
    return PCAModel(jmodel)


def load_reducer(path: str, explained_variance: list[float] | None = None) -> Reducer:
    """Reload a saved scaler + PCA (e.g. to project new images without refitting)."""
    model = PipelineModel.load(path)
    pca = model.stages[-1]
    k = int(pca.getK())
    ev = explained_variance or pca.explainedVariance.toArray().tolist()
    return Reducer(model, k, list(ev))
