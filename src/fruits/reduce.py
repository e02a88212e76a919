"""Reduce: StandardScaler (centring: Spark's PCA does not centre) + PCA, fitted on the train
split, k chosen from an explained-variance target unless fixed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCA, PCAModel, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
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
    """Fit on `train` only. With a variance target, a first PCA at the largest useful k gives
    every component's share; the second fit keeps the chosen k (each fit is one pass over the
    cached, scaled rows plus a d x d decomposition on the driver)."""
    vec = train.select(array_to_vector(F.col(features)).alias(VEC))
    scaler = StandardScaler(inputCol=VEC, outputCol=SCALED, withMean=True, withStd=cfg.scale_std)
    scaler_model = scaler.fit(vec)
    scaled = scaler_model.transform(vec).select(SCALED).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n = scaled.count()
        std = np.asarray(scaler_model.std.toArray())
        if n < 2:
            raise ValueError(f"PCA needs at least 2 training images, got {n}")
        k_max = min(len(std), n)
        if cfg.k is not None and not 1 <= cfg.k <= k_max:
            raise ValueError(f"--pca-k must be between 1 and {k_max}, got {cfg.k}")
        # Total variance of the scaled data: 1 per non-constant feature, or the raw variances.
        total = float(np.count_nonzero(std)) if cfg.scale_std else float(np.sum(std**2))
        k_probe = cfg.k if cfg.k is not None else k_max
        probe = PCA(k=k_probe, inputCol=SCALED, outputCol=PCA_VEC).fit(scaled)
        explained = _projected_share(probe, scaled, total)
        k = cfg.k if cfg.k is not None else choose_k(explained, cfg.variance)
        if k == k_probe:
            pca_model = probe
        else:
            pca_model = PCA(k=k, inputCol=SCALED, outputCol=PCA_VEC).fit(scaled)
            explained[:k] = _projected_share(pca_model, scaled, total)
    finally:
        scaled.unpersist()
    return Reducer(PipelineModel(stages=[scaler_model, pca_model]), k, explained.tolist())


def _projected_share(model: PCAModel, scaled: DataFrame, total: float) -> np.ndarray:
    """Each component's share of the total variance, measured on the projected rows.

    Spark's own `explainedVariance` divides by the sum of *all* singular values of the
    covariance; with fewer images than features most of them are numerical noise, and we saw
    that sum come out up to 2.3x too large (the pure-Java LAPACK here), which shrank every
    share and inflated k. Variances of the projections do not depend on that sum.
    """
    proj = model.transform(scaled).select(PCA_VEC)
    row = proj.select(Summarizer.metrics("variance").summary(F.col(PCA_VEC)).alias("s")).first()
    assert row is not None
    variance = np.asarray(row["s"]["variance"].toArray())
    return variance / total if total > 0 else np.zeros_like(variance)


def load_reducer(path: str, explained_variance: list[float] | None = None) -> Reducer:
    """Reload a saved scaler + PCA (e.g. to project new images without refitting)."""
    model = PipelineModel.load(path)
    pca = model.stages[-1]
    k = int(pca.getK())
    ev = explained_variance or pca.explainedVariance.toArray().tolist()  # see _projected_share
    return Reducer(model, k, list(ev))
