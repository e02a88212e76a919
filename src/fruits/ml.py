"""Spark ML stages: the featurizer as a `Transformer` users put in their own `Pipeline`.

`ImageFeaturizer` turns encoded image bytes into the CNN's pooled features (an ml `Vector`, so
`StandardScaler`, `PCA` and `LogisticRegression` take it as is) plus an error column. It runs the
very code `fruits run` runs (`features.featurize_udf` -> `featurize_contents` -> `Featurizer`),
and it saves and loads like Spark's own stages, alone or inside a saved `PipelineModel`.

It never touches `sparkContext` (no broadcast), so it works through Spark Connect (Databricks
serverless, shared clusters, `databricks-connect`): with the default weights the workers load
the ONNX graph that the installed package carries, and the closure ships only a name.
"""

# Spark ML's API is camelCase: a Param's name is its attribute's, and users call getInputCol.
# ruff: noqa: N802, N803, N815

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from typing import Any, Literal, get_args

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame

from fruits.config import FeaturizerConfig, OnError

_DEFAULTS = FeaturizerConfig()  # every default lives once: config.py

# Spark's own stages (StringIndexer, VectorAssembler, Bucketizer) name bad-row policies so.
HandleInvalid = Literal["error", "skip", "keep"]


class InstalledArtifact:
    """Stands in for a Broadcast of the default network: `.value` builds the `ModelArtifact`
    on the worker from the graph the installed package carries (artifact.bundled_graph).

    Pickled into the UDF closure it is a few hundred bytes, against 13 MB per task for the
    artifact itself; and it needs no `sparkContext.broadcast`, which Spark Connect lacks.
    `get_featurizer` reads `.value` only on a cache miss, so a worker reads the graph once per
    process (cached here too: `get_featurizer` asks `hasattr` before it reads)."""

    def __init__(self, cfg: FeaturizerConfig) -> None:
        self.cfg = cfg

    @cached_property
    def value(self) -> Any:
        from fruits.artifact import build_artifact

        return build_artifact(self.cfg)

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg}  # never the built graph, should the driver have read it


class HasErrorCol(Params):
    """Where a row's failure reason goes: null when the image was featurized."""

    errorCol: Param[str] = Param(
        Params._dummy(),
        "errorCol",
        "output column for why an image could not be featurized (null when it was)",
        typeConverter=TypeConverters.toString,
    )

    def getErrorCol(self) -> str:
        return self.getOrDefault(self.errorCol)


class ImageFeaturizer(
    Transformer,
    HasInputCol,
    HasOutputCol,
    HasErrorCol,
    DefaultParamsReadable["ImageFeaturizer"],
    DefaultParamsWritable,
):
    """Encoded image bytes (`binaryFile`'s `content`) -> CNN features as an ml `Vector`.

    A corrupt, oversized or null-content image is handled by `handleInvalid`, as in Spark's
    own stages: `keep` (the default) gives a null vector and a reason in `errorCol`, so one bad
    file never fails a job and its reason can be read; `skip` drops the row (what a `Pipeline`
    that fits a `StandardScaler` next wants: a null vector fails its fit); `error` stops the
    job at the first bad image, naming its path. `onError` (`quarantine` / `fail`) is the
    older name of `keep` / `error`, kept so saved stages load.
    The network is built once per Python worker and kept for every later task
    (`engine.get_featurizer`, an LRU of 3 under a lock).

    With `weights` (a path or fsspec URI to torch weights; needs the `export` extra on the
    driver) the driver exports the network to ONNX once and the UDF closure carries the graph,
    about 13 MB for EfficientNet-Lite0: the price of working without `sparkContext.broadcast`.
    A classic session broadcasts a pickled UDF over 1 MB by itself (pyspark's
    `_prepare_for_python_RDD`); through Connect the graph travels inside the plan (under the
    server's 128 MiB message limit) and every task hands it to its Python worker, which
    unpickles a 13 MB copy (milliseconds, against seconds of CNN per batch). The network
    itself is still built once per worker: the cache is keyed by the weights' fingerprint.
    """

    backbone: Param[str] = Param(
        Params._dummy(),
        "backbone",
        "the CNN (fruits.models registry)",
        typeConverter=TypeConverters.toString,
    )
    weights: Param[str] = Param(
        Params._dummy(),
        "weights",
        "torch weights (path or fsspec URI); unset: the graph bundled with the package",
        typeConverter=TypeConverters.toString,
    )
    imageSize: Param[int] = Param(
        Params._dummy(),
        "imageSize",
        "square side in pixels the images are resized to",
        typeConverter=TypeConverters.toInt,
    )
    batchSize: Param[int] = Param(
        Params._dummy(),
        "batchSize",
        "images per network call (GPUs take a multiple)",
        typeConverter=TypeConverters.toInt,
    )
    onError: Param[str] = Param(
        Params._dummy(),
        "onError",
        "bad image policy: 'quarantine' (null vector + reason) or 'fail' (stop the job); "
        "kept for saved stages, handleInvalid says the same the way Spark's stages do",
        typeConverter=TypeConverters.toString,
    )
    handleInvalid: Param[str] = Param(
        Params._dummy(),
        "handleInvalid",
        "how to handle an image that cannot be decoded or has null content: 'error' (fail the "
        "job, naming the row's path), 'skip' (drop the row) or 'keep' (null vector + reason)",
        typeConverter=TypeConverters.toString,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str = "content",
        outputCol: str = "features",
        errorCol: str = "error",
        backbone: str = _DEFAULTS.backbone,
        weights: str | None = _DEFAULTS.weights,
        imageSize: int = _DEFAULTS.image_size,
        batchSize: int = _DEFAULTS.batch_size,
        onError: str = "quarantine",
        handleInvalid: str = "keep",
    ) -> None:
        super().__init__()
        self._setDefault(
            inputCol="content",
            outputCol="features",
            errorCol="error",
            backbone=_DEFAULTS.backbone,
            imageSize=_DEFAULTS.image_size,
            batchSize=_DEFAULTS.batch_size,
            onError="quarantine",
            handleInvalid="keep",
        )
        kwargs = self._input_kwargs  # type: ignore[attr-defined]  # set by @keyword_only
        self.setParams(**kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        inputCol: str = "content",
        outputCol: str = "features",
        errorCol: str = "error",
        backbone: str = _DEFAULTS.backbone,
        weights: str | None = _DEFAULTS.weights,
        imageSize: int = _DEFAULTS.image_size,
        batchSize: int = _DEFAULTS.batch_size,
        onError: str = "quarantine",
        handleInvalid: str = "keep",
    ) -> ImageFeaturizer:
        """Sets the given params (only those passed, like Spark's own stages)."""
        kwargs = self._input_kwargs  # type: ignore[attr-defined]  # set by @keyword_only
        if kwargs.get("weights", "") is None:
            kwargs.pop("weights")  # unset means the bundled graph; a Param holds no None
        return self._set(**kwargs)

    def getBackbone(self) -> str:
        return self.getOrDefault(self.backbone)

    def getWeights(self) -> str | None:
        return self.getOrDefault(self.weights) if self.isDefined(self.weights) else None

    def getImageSize(self) -> int:
        return self.getOrDefault(self.imageSize)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def getOnError(self) -> str:
        return self.getOrDefault(self.onError)

    def getHandleInvalid(self) -> str:
        return self.getOrDefault(self.handleInvalid)

    def invalid_policy(self) -> HandleInvalid:
        """The policy the stage applies: `handleInvalid` when set, else the older `onError`
        (`fail` -> `error`, `quarantine` -> `keep`), so stages saved before handleInvalid
        existed load and behave as they did. `onError="fail"` with another handleInvalid is
        refused: a silent winner would hide a user's intent."""
        on_error = self.getOnError()
        if on_error not in get_args(OnError):
            raise ValueError(f"onError must be one of {get_args(OnError)}, not {on_error!r}")
        implied: HandleInvalid = "error" if on_error == "fail" else "keep"
        if not self.isSet(self.handleInvalid):
            return implied
        policy = self.getHandleInvalid()
        if policy not in get_args(HandleInvalid):
            raise ValueError(
                f"handleInvalid must be one of {get_args(HandleInvalid)}, not {policy!r}"
            )
        if on_error == "fail" and policy != "error":
            raise ValueError(
                f"onError={on_error!r} and handleInvalid={policy!r} disagree: set only one"
            )
        return policy  # type: ignore[return-value]

    def featurizer_config(self) -> FeaturizerConfig:
        """The stage's params as the one typed config the rest of the package reads."""
        return replace(
            _DEFAULTS,
            backbone=self.getBackbone(),
            weights=self.getWeights(),
            image_size=self.getImageSize(),
            batch_size=self.getBatchSize(),
        )

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        from fruits.artifact import build_artifact
        from fruits.features import featurize_udf
        from fruits.models import fingerprint, get_spec

        policy = self.invalid_policy()
        cfg = self.featurizer_config()
        artifact: Any
        if cfg.weights is None:
            spec = get_spec(cfg.backbone)  # fail here, on the driver, for an unknown name
            if spec.needs_weights:
                raise ValueError(f"backbone {cfg.backbone} needs weights (a path or URI)")
            artifact, artifact_id = InstalledArtifact(cfg), fingerprint(cfg.backbone, None)
        else:
            artifact = build_artifact(cfg)
            artifact_id = artifact.fingerprint
        udf = featurize_udf(
            artifact, artifact_id, cfg, threads=_task_cpus(dataset), fail_fast=policy == "error"
        )
        # The file's path names the culprit when onError="fail"; any input may lack one.
        path = F.col("path") if "path" in dataset.columns else F.lit(None).cast("string")
        tmp = f"{self.uid}__featurized"
        # One struct column, then its fields: the UDF runs once per row (as features.featurize).
        # array_to_vector throws on a null array, so a failed image skips it.
        features = F.col(tmp).getField("features")
        vector = F.when(features.isNotNull(), array_to_vector(features))
        featurized = dataset.withColumn(tmp, udf(path, F.col(self.getInputCol())))
        if policy == "skip":
            # The UDF has already given every undecodable or null-content row a reason: drop
            # those rows here, so a StandardScaler after the stage never sees a null vector
            # (its fit fails on one with a Scala MatchError).
            featurized = featurized.where(F.col(tmp).getField("error").isNull())
        return (
            featurized.withColumn(self.getOutputCol(), vector)
            .withColumn(self.getErrorCol(), F.col(tmp).getField("error"))
            .drop(tmp)
        )


def _task_cpus(dataset: DataFrame) -> int:
    """ONNX threads per task: the cores Spark gives each task, so tasks x threads <= cores.
    Connect sessions may refuse to show the setting (Databricks serverless): then 1."""
    try:
        return max(1, int(dataset.sparkSession.conf.get("spark.task.cpus", "1") or 1))
    except Exception:
        return 1
