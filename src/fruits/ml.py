"""Spark ML stages: the featurizer as a `Transformer` users put in their own `Pipeline`.

`ImageFeaturizer` turns encoded image bytes into the CNN's pooled features (an ml `Vector`, so
`StandardScaler`, `PCA` and `LogisticRegression` take it as is) plus an error column. `fruits run`
featurizes through this very stage (`featurize_frame`: one `mapInArrow` -> `featurize_contents`
-> `Featurizer`), and it saves and loads like Spark's own stages, alone or inside a saved
`PipelineModel`.

It never touches `sparkContext` (no broadcast), so it works through Spark Connect (Databricks
serverless, shared clusters, `databricks-connect`): with the default weights the workers load
the ONNX graph that the installed package carries, and the closure ships only a name.
"""

# Spark ML's API is camelCase: a Param's name is its attribute's, and users call getInputCol.
# ruff: noqa: N802, N803, N815

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, get_args

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame

from fruits.arrow import STAGE, BatchLayout, batch_contents, stage_batch
from fruits.config import FeaturizerConfig, OnError
from fruits.engine import featurize_contents, worker_featurizer

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

_DEFAULTS = FeaturizerConfig()  # every default lives once: config.py

IMAGE_FAILURE_TAG = "FruitsImageFailure:"  # a fail-fast error's message starts so

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

    @classmethod
    def for_config(cls, cfg: FeaturizerConfig, **params: Any) -> ImageFeaturizer:
        """The stage with a run's featurizer settings (`fruits run` builds its own so)."""
        stage = cls(
            backbone=cfg.backbone,
            weights=cfg.weights,
            imageSize=cfg.image_size,
            batchSize=cfg.batch_size,
        )
        return stage.setParams(**params) if params else stage

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return self.featurize_frame(dataset)

    def featurize_frame(
        self,
        dataset: DataFrame,
        *,
        cfg: FeaturizerConfig | None = None,
        artifact: Any = None,
        artifact_id: str | None = None,
        threads: int | None = None,
        layout: BatchLayout | None = None,
        vector: bool = True,
    ) -> DataFrame:
        """The featurizer's one Spark path, for `transform` and for `fruits run` alike: one
        `mapInArrow` over the rows (`featurize_batches`), the bytes read, hashed where asked and
        featurised in one Python hop, the features out as one flat Arrow buffer.

        `transform` keeps every input column and adds `outputCol` (an ml `Vector`) and
        `errorCol`; `fruits run` passes its own `layout` (the keys, the content version,
        array<float> features, `reason`), its shipped `artifact` and the full `cfg` (views,
        pixel limit). Why `mapInArrow` and not a pandas UDF over `content`: a local file's
        bytes would cross the JVM twice and the features would go through pandas objects
        (measured: the stage's plumbing, 1.8 s per 2,000 images, halved)."""
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        policy = self.invalid_policy()
        cfg = cfg or self.featurizer_config()
        if artifact is None:
            artifact, artifact_id = self._artifact(cfg)
        assert artifact_id is not None, "an artifact needs its id (the worker cache's key)"
        if layout is None:
            out, err = self.getOutputCol(), self.getErrorCol()
            keep = tuple(c for c in dataset.columns if c not in (out, err))
            layout = BatchLayout(self.getInputCol(), keep, None, out, err)
        fn = featurize_batches(
            artifact,
            artifact_id,
            cfg,
            threads=threads or _task_cpus(dataset),
            fail_fast=policy == "error",
            layout=layout,
        )
        got = dataset.mapInArrow(fn, output_schema(dataset.schema, layout))
        if policy == "skip":
            # Every undecodable or null-content row has its reason: drop those rows here, so a
            # StandardScaler after the stage never sees a null vector (its fit fails on one
            # with a Scala MatchError).
            got = got.where(F.col(layout.error).isNull())
        if vector:  # array_to_vector throws on a null array, so a failed image skips it
            features = F.col(layout.features)
            got = got.withColumn(
                layout.features, F.when(features.isNotNull(), array_to_vector(features))
            )
        return got

    def _artifact(self, cfg: FeaturizerConfig) -> tuple[Any, str]:
        """The default weights travel as a name (`InstalledArtifact`); others as the graph."""
        from fruits.artifact import build_artifact
        from fruits.models import fingerprint, get_spec

        if cfg.weights is None:
            spec = get_spec(cfg.backbone)  # fail here, on the driver, for an unknown name
            if spec.needs_weights:
                raise ValueError(f"backbone {cfg.backbone} needs weights (a path or URI)")
            return InstalledArtifact(cfg), fingerprint(cfg.backbone, None)
        artifact = build_artifact(cfg)
        return artifact, artifact.fingerprint


def featurize_batches(
    artifact: Any,
    artifact_id: str,
    cfg: FeaturizerConfig,
    *,
    threads: int,
    fail_fast: bool = False,
    layout: BatchLayout = STAGE,
) -> Callable[[Iterable[Any]], Iterator[Any]]:
    """The function `featurize_frame` hands to `DataFrame.mapInArrow`: Arrow batches with
    `layout.content` (and optionally a walk's `_local`, a listing's `content_hash`, `path`)
    in; `layout.keep`, the content version, features and error out. The per-image maths is
    `featurize_contents`; the network is built once per Python worker (`worker_featurizer`).
    With `fail_fast`, the first bad image raises, tagged so the driver can print one line."""
    size, max_pixels, views = cfg.image_size, cfg.max_pixels, cfg.views

    def run(batches: Iterable[Any]) -> Iterator[Any]:
        fz, step = worker_featurizer(artifact, artifact_id, cfg, threads)
        for rows in batches:
            contents = batch_contents(rows, layout)
            feats, errs = featurize_contents(
                fz, contents, size=size, max_pixels=max_pixels, batch_size=step, views=views
            )
            if fail_fast:
                paths = (
                    rows.column("path").to_pylist()
                    if "path" in rows.schema.names
                    else [None] * len(errs)
                )
                for path, err in zip(paths, errs, strict=True):
                    if err is not None:
                        raise ValueError(f"{IMAGE_FAILURE_TAG} {path}: {err}")
            yield stage_batch(rows, contents, feats, errs, layout)

    return run


def output_schema(schema: StructType, layout: BatchLayout) -> StructType:
    """The Spark schema of `featurize_batches`' batches for input rows of `schema`."""
    from pyspark.sql import types as T

    fields = [schema[name] for name in layout.keep]
    if layout.hash is not None:
        fields.append(T.StructField(layout.hash, T.StringType()))
    fields += [
        T.StructField(layout.features, T.ArrayType(T.FloatType())),
        T.StructField(layout.error, T.StringType()),
    ]
    return T.StructType(fields)


def _task_cpus(dataset: DataFrame) -> int:
    """ONNX threads per task: the cores Spark gives each task, so tasks x threads <= cores.
    Connect sessions may refuse to show the setting (Databricks serverless): then 1."""
    try:
        return max(1, int(dataset.sparkSession.conf.get("spark.task.cpus", "1") or 1))
    except Exception:
        return 1
