"""Classify: multinomial logistic regression on the PCA features, judged on the test split."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression, LogisticRegressionModel
from pyspark.ml.feature import StringIndexer, StringIndexerModel
from pyspark.ml.functions import array_to_vector
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits.calibration import Calibration
from fruits.common import local_path
from fruits.config import ClassifierConfig
from fruits.export import class_labels, reads_scaled
from fruits.spark import Session
from fruits.splits import train_part

if TYPE_CHECKING:
    from pyspark.ml.feature import StandardScalerModel

    from fruits.incremental import Increment
    from fruits.recognition import LabelMap
    from fruits.reduce import Reducer
    from fruits.stage import Run

log = logging.getLogger(__name__)

X = "_x"
Y = "_y"


@dataclass
class Evaluation:
    """Test-split metrics; `confusion[i][j]` counts true class i predicted as class j.

    `macro_f1` is scikit-learn's default (`f1_score(average="macro")`): the mean over every
    class that is true or predicted at least once, so a class the model answers but the split
    never holds counts 0. `macro_f1_true_classes` averages only the classes the split holds
    (what earlier reports called macro-F1: 0.878 against the default's 0.702 on one run)."""

    labels: list[str]
    confusion: list[list[int]]
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    split: str = "test"
    recognition: dict[str, Any] | None = None
    macro_f1_true_classes: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "macro_f1_labels": "true or predicted (scikit-learn's default)",
            "macro_f1_true_classes": self.macro_f1_true_classes,
            "per_class": self.per_class,
        }


def with_input(df: DataFrame, scaler: Any = None, *, features: str = "pca") -> DataFrame:
    """`df` plus the classifier's input vector `X`: the scaled CNN features through the run's
    own fitted Spark `StandardScalerModel` (`scaler`), or, without one, `features` as is
    (the `pca` column, as runs before the leave-one-source-out study classified).

    Why the scaled features: left one source out, the classifier on all 1280 scaled features
    named 2-7 points more species right than on the 256 PCA coordinates on every source
    (docs/recognition-study.md, "Leave one source out"); the PCA stays the analysts' output."""
    if scaler is None:
        return df.withColumn(X, array_to_vector(F.col(features)))
    from fruits.reduce import SCALED, VEC

    vec = df.withColumn(VEC, array_to_vector(F.col("features")))
    scaled = scaler.transform(vec)  # an untyped Spark StandardScalerModel (Any)
    return cast(DataFrame, scaled).withColumnRenamed(SCALED, X).drop(VEC)


def fit_classifier(
    train: DataFrame,
    cfg: ClassifierConfig | None = None,
    *,
    features: str = "pca",
    scaler: Any = None,
    on_driver: bool | None = None,
    work: str | None = None,
) -> PipelineModel:
    """Label indexing + logistic regression as one Spark ML pipeline, saved with the run.

    `on_driver`: fit on the driver (`fit_on_driver`) or with Spark's `LogisticRegression`;
    None chooses (`driver_fits`, from one small Spark job: rows, width, classes): the driver
    on small data (`DRIVER_MAX_WORK`) with an L2 (or no) penalty. Both give the same
    `PipelineModel` of Spark's own two models. Through Spark Connect the driver's model is
    built on the server from files in `work` (a folder the server can write); without one,
    Spark fits."""
    cfg = cfg or ClassifierConfig()
    data = with_input(train, scaler, features=features).select(X, F.col("label"))
    connect = Session(train.sparkSession).context() is None
    if on_driver is None:
        if cfg.elastic_net == 0 and (work is not None or not connect):
            column = "features" if scaler is not None else features
            row = train.agg(
                F.count(F.lit(1)).alias("n"),
                F.max(F.size(column)).alias("d"),
                F.count_distinct("label").alias("c"),
            ).first()
            on_driver = row is not None and driver_fits(
                int(row["n"]), int(row["d"] or 0), int(row["c"]), cfg
            )
        else:
            on_driver = False
    if on_driver:
        fitted = fit_on_driver(data, cfg, work=work)
        if fitted is not None:
            return fitted
    indexer = StringIndexer(
        inputCol="label", outputCol=Y, handleInvalid="keep", stringOrderType="alphabetAsc"
    )
    lr = LogisticRegression(
        featuresCol=X,
        labelCol=Y,
        family="multinomial",
        maxIter=cfg.max_iter,
        regParam=cfg.reg_param,
        elasticNetParam=cfg.elastic_net,
        standardization=False,
    )
    return Pipeline(stages=[indexer, lr]).fit(data)


# -- the driver-side fit --------------------------------------------------------------------

# Training values (rows x features) up to which the driver may hold them: 32 Mi float64 values
# are 256 MiB, held twice at the peak (the Arrow buffer collected and the matrix); logits and
# gradients are rows x classes, small next to them.
DRIVER_MAX_VALUES = 32 * 2**20
# ... and the work of one pass, rows x features x label slots (the classes and the indexer's
# "unknown" one), up to which the driver is the faster: its L-BFGS makes the same two
# multiplications per pass as Spark's, on the driver's cores only, and takes some 1.5-2 times
# Spark's iterations (a 10 times tighter tolerance); what it saves is Spark's ~60-90 ms of job
# overhead per iteration. Measured on 2 cores (issue 23): 215 x 1280 x 7 (the sample) 1.0-2.0 s
# on the driver against Spark's 2.9-4.7 s; 1000 x 1280 x 101 even (15.7 s and 15.1 s);
# 4000 x 1280 x 101 Spark's (27.2 s and 21.2 s). A cluster's executors only widen Spark's lead
# on large data.
DRIVER_MAX_WORK = 64 * 2**20
LBFGS_MEMORY = 10  # Spark's (BreezeLBFGS m = 10)
GRADIENT_TOL = 1e-8  # max |gradient| of the mean loss: tighter than Spark's tol 1e-6
FUNCTION_TOL = 1e-7  # relative fall of the objective over FUNCTION_MEMORY iterations
FUNCTION_MEMORY = 10
EMPTY_CLASS_MARGIN = 40.0  # exp(-40) = 4e-18: a class no training row has


def driver_fits(rows: int, features: int, classes: int, cfg: ClassifierConfig) -> bool:
    """Does `fit_classifier` fit on the driver (True) or with Spark (False)? `classes`: the
    distinct training labels. Small data only (`DRIVER_MAX_VALUES`, `DRIVER_MAX_WORK`), and
    an L2 (or no) penalty: an elastic net goes to Spark's OWL-QN."""
    values = rows * max(features, 1)
    return (
        cfg.elastic_net == 0
        and 0 < values <= DRIVER_MAX_VALUES
        and values * (classes + 1) <= DRIVER_MAX_WORK
    )


def fit_on_driver(
    data: DataFrame, cfg: ClassifierConfig, *, work: str | None = None
) -> PipelineModel | None:
    """Spark's `Pipeline([StringIndexer, LogisticRegression]).fit(data)` with the rows
    collected to the driver and the same objective minimised in numpy: the mean log-loss of a
    multinomial model with intercepts plus regParam/2 ||W||^2 (intercepts not penalised, no
    standardization of the penalty), over the indexer's classes and its "unknown" slot (as
    Spark's labels metadata counts it), fitted in Spark's standardized space from Spark's
    starting point, intercepts centred after as Spark's are. The result is a `PipelineModel` of
    Spark's own `StringIndexerModel` and `LogisticRegressionModel`.

    Why: on small data Spark's L-BFGS is some 55 tiny jobs per fit (5.8 s on the 320-image
    sample) and a run fits 1 + one per source. None where Spark must fit anyway (null or ragged
    features, fewer than two classes present: Spark's own special cases)."""
    from pyspark.ml.functions import vector_to_array

    if cfg.elastic_net != 0:
        raise ValueError("the driver fit is L2 only: an elastic net goes to Spark")
    table = data.select(vector_to_array(F.col(X)).alias("x"), F.col("label")).toArrow()
    column = table.column("x").combine_chunks()
    n = table.num_rows
    if n == 0 or column.null_count:
        return None
    values = column.flatten().to_numpy(zero_copy_only=False)
    d = len(values) // n
    if len(values) != n * d:
        return None
    x = np.array(values, dtype=np.float64).reshape(n, d)  # a writable copy: standardized in place
    raw = table.column("label").to_pylist()
    del table, column, values  # Arrow's buffers
    # alphabetAsc as the JVM sorts strings (UTF-16 code units); nulls are left out, and at
    # transform time (handleInvalid keep) go to the "unknown" slot, as they do in Spark
    labels = sorted({s for s in raw if s is not None}, key=lambda s: s.encode("utf-16-be"))
    index = {s: i for i, s in enumerate(labels)}
    classes = len(labels) + 1
    y = np.array([index.get(s, len(labels)) if s is not None else len(labels) for s in raw])
    if np.count_nonzero(np.bincount(y, minlength=classes)) < 2:
        return None
    coef, intercept = multinomial_lbfgs(x, y, classes, cfg.reg_param, cfg.max_iter)
    spark = data.sparkSession
    indexer = StringIndexerModel.from_labels(labels, "label", Y, handleInvalid="keep")
    indexer._set(stringOrderType="alphabetAsc")  # as the fitted indexer carries it (no setter)
    params = _lr_params(cfg)
    sc = Session(spark).context()
    if sc is None:
        if work is None:
            raise ValueError("through Spark Connect, the driver fit needs `work` to save in")
        lr = _saved_lr_model(spark, work, coef, intercept, params)
    else:
        lr = _spark_lr_model(sc, coef, intercept, params)
    return PipelineModel(stages=[indexer, lr])


def multinomial_lbfgs(
    x: np.ndarray, y: np.ndarray, classes: int, reg: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients (classes, d), intercepts (classes,)) minimising Spark's multinomial
    objective: mean_i -log softmax(W x_i + b)[y_i] + reg/2 ||W||^2, as Spark reaches it:
    L-BFGS (memory 10, at most `max_iter` iterations) on the features standardized with the
    sample std (constant features stay 0), the penalty weighted back to the raw coefficients
    (standardization=False), intercepts started at log1p(class counts) centred, and the
    intercepts (and, without a penalty, the coefficients) centred over the classes after.
    `x` is standardized in place.

    A class no row has (the indexer's "unknown" slot) has no minimum: its intercept only runs
    off to -inf, the objective's infimum being that of the other classes alone (its
    coefficients 0, its probability 0), and Spark's L-BFGS stops somewhere on the way (-26 on
    one fit) after dozens of iterations spent on it. Here the other classes are fitted alone
    and such a class gets coefficients 0 and an intercept `EMPTY_CLASS_MARGIN` below every
    training row's log-sum-exp: probability < 1e-17 on them, as near 0 as Spark's."""
    n, d = x.shape
    mean = x.mean(axis=0) if n else np.zeros(d)
    std = x.std(axis=0, ddof=1) if n > 1 else np.zeros(d)
    inv = np.divide(1.0, std, out=np.zeros(d), where=std > 0)
    x -= mean  # Spark's fitWithMean: centred and scaled, intercepts adjusted back after
    x *= inv
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    present = np.flatnonzero(counts > 0)
    k = len(present)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), np.searchsorted(present, y)] = 1.0
    weight = reg * inv**2  # the penalty on the raw coefficients, W_raw = W_scaled * inv

    def logits(theta: np.ndarray) -> np.ndarray:
        return cast(np.ndarray, x @ theta[: k * d].reshape(k, d).T + theta[k * d :])  # numpy: Any

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: k * d].reshape(k, d)
        z = logits(theta)
        z -= z.max(axis=1, keepdims=True)
        ez = np.exp(z)
        total = ez.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(total[:, 0]) - (z * onehot).sum(axis=1)))
        g = ez / total - onehot
        g /= n
        grad_w = g.T @ x + w * weight
        loss += 0.5 * float(np.sum(w * w * weight))
        return loss, np.concatenate([grad_w.ravel(), g.sum(axis=0)])

    start = np.log1p(counts[present])
    theta = np.concatenate([np.zeros(k * d), start - start.mean()])
    theta = _lbfgs(objective, theta, max_iter)
    coef = np.zeros((classes, d))
    coef[present] = theta[: k * d].reshape(k, d) * inv
    intercept = np.zeros(classes)
    intercept[present] = theta[k * d :] - coef[present] @ mean
    if k < classes:
        z = logits(theta)
        top = z.max(axis=1)
        lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
        intercept[counts == 0] = float(lse.min()) - EMPTY_CLASS_MARGIN
    if reg == 0:  # Spark centres the coefficients only then (with L2 they already are)
        coef = coef - coef.mean(axis=0)
    return coef, intercept - intercept.mean()


def _lbfgs(f: Any, theta: np.ndarray, max_iter: int, memory: int = LBFGS_MEMORY) -> np.ndarray:
    """Minimise a smooth convex `f` (theta -> (value, gradient)) by L-BFGS with a backtracking
    (Armijo) line search; stops when max |gradient| <= GRADIENT_TOL, when a step no longer
    lowers the value by a relative 1e-15, or after `max_iter` iterations."""
    value, grad = f(theta)
    history = [value]
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(max_iter):
        if np.max(np.abs(grad)) <= GRADIENT_TOL:
            break
        q = grad.copy()
        alphas = []
        for s, yv, rho in reversed(steps):
            a = rho * float(s @ q)
            alphas.append(a)
            q -= a * yv
        if steps:
            s, yv, _ = steps[-1]
            q *= float(s @ yv) / float(yv @ yv)
        else:
            q /= max(float(np.linalg.norm(grad)), 1.0)
        for (s, yv, rho), a in zip(steps, reversed(alphas), strict=True):
            q += s * (a - rho * float(yv @ q))
        direction = -q
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction: start the memory again
            steps.clear()
            direction, slope = -grad, -float(grad @ grad)
        t = 1.0
        while True:
            candidate = theta + t * direction
            new_value, new_grad = f(candidate)
            if new_value <= value + 1e-4 * t * slope or t < 1e-20:
                break
            t *= 0.5
        s, yv = candidate - theta, new_grad - grad
        sy = float(s @ yv)
        done = value - new_value <= 1e-15 * max(abs(value), 1.0)
        if new_value <= value:
            theta, value, grad = candidate, new_value, new_grad
        history.append(value)
        if len(history) > FUNCTION_MEMORY:  # like Breeze's check (Spark: 1e-6), 10 times tighter
            done = done or history[-FUNCTION_MEMORY - 1] - value <= FUNCTION_TOL * max(
                abs(value), 1e-6
            )
        if done:
            break
        if sy > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(yv)):
            steps.append((s, yv, 1.0 / sy))
            del steps[:-memory]
    return theta


def _lr_params(cfg: ClassifierConfig) -> dict[str, Any]:
    """The params `fit_classifier`'s LogisticRegression sets, as its fitted model carries them."""
    return {
        "featuresCol": X,
        "labelCol": Y,
        "family": "multinomial",
        "maxIter": int(cfg.max_iter),
        "regParam": float(cfg.reg_param),
        "elasticNetParam": float(cfg.elastic_net),
        "standardization": False,
    }


def _spark_lr_model(
    sc: Any, coef: np.ndarray, intercept: np.ndarray, params: dict[str, Any]
) -> LogisticRegressionModel:
    """Spark's own LogisticRegressionModel (multinomial) from our arrays, built in the JVM."""
    from pyspark.ml.common import _py2java

    rows, d = coef.shape
    matrix = DenseMatrix(rows, d, np.ascontiguousarray(coef).ravel().tolist(), isTransposed=True)
    uid = f"LogisticRegression_{uuid.uuid4().hex[:12]}"
    jmodel = sc._jvm.org.apache.spark.ml.classification.LogisticRegressionModel(
        uid, _py2java(sc, matrix), _py2java(sc, DenseVector(intercept.tolist())), rows, True
    )
    for name, value in params.items():
        jmodel.set(jmodel.getParam(name), value)
    model = LogisticRegressionModel(jmodel)
    model._transfer_params_from_java()
    return model


def _saved_lr_model(
    spark: Any, work: str, coef: np.ndarray, intercept: np.ndarray, params: dict[str, Any]
) -> LogisticRegressionModel:
    """Through Spark Connect: the model written in `LogisticRegressionModel.write`'s layout
    (a metadata JSON line, a one-row Parquet of numClasses, numFeatures, interceptVector,
    coefficientMatrix, isMultinomial), then loaded with its own `load` (see
    `reduce._saved_models`)."""
    from pyspark.ml.linalg import MatrixUDT, VectorUDT
    from pyspark.sql.types import BooleanType, IntegerType, StructField, StructType

    uid = f"LogisticRegression_{uuid.uuid4().hex[:12]}"
    path = f"{work.rstrip('/')}/{uid}"
    line = {
        "class": "org.apache.spark.ml.classification.LogisticRegressionModel",
        "timestamp": int(time.time() * 1000),
        "sparkVersion": spark.version,
        "uid": uid,
        "paramMap": params,
        "defaultParamMap": {},
    }
    text = json.dumps(line)
    spark.createDataFrame([(text,)], "value string").coalesce(1).write.text(path + "/metadata")
    rows, d = coef.shape
    matrix = DenseMatrix(rows, d, np.ascontiguousarray(coef).ravel().tolist(), isTransposed=True)
    schema = StructType(
        [
            StructField("numClasses", IntegerType(), False),
            StructField("numFeatures", IntegerType(), False),
            StructField("interceptVector", VectorUDT(), False),
            StructField("coefficientMatrix", MatrixUDT(), False),
            StructField("isMultinomial", BooleanType(), False),
        ]
    )
    values = (rows, d, DenseVector(intercept.tolist()), matrix, True)
    spark.createDataFrame([values], schema).coalesce(1).write.parquet(path + "/data")
    return LogisticRegressionModel.load(path)


def predict(
    model: PipelineModel, df: DataFrame, *, features: str = "pca", scaler: Any = None
) -> DataFrame:
    """Adds `predicted_label` and `probability` (array<double>, in `class_labels` order)."""
    from pyspark.ml.functions import vector_to_array

    labels = class_labels(model)
    scored = model.transform(with_input(df, scaler, features=features))
    mapping = F.array(*[F.lit(x) for x in labels])
    return scored.select(
        *df.columns,
        F.element_at(mapping, F.col("prediction").cast("int") + 1).alias("predicted_label"),
        vector_to_array(F.col("probability")).alias("probability"),
    )


def evaluate(
    model: PipelineModel, test: DataFrame, *, features: str = "pca", scaler: Any = None
) -> Evaluation:
    """Metrics from a confusion matrix aggregated by Spark (classes x classes rows only)."""
    labels = class_labels(model)
    counts = (
        predict(model, test, features=features, scaler=scaler)
        .groupBy("label", "predicted_label")
        .count()
        .collect()
    )
    names = sorted(set(labels) | {r["label"] for r in counts})
    index = {n: i for i, n in enumerate(names)}
    cm = np.zeros((len(names), len(names)), dtype=np.int64)
    for r in counts:
        cm[index[r["label"]], index[r["predicted_label"]]] += r["count"]
    return evaluation_from_confusion(names, cm)


def evaluation_from_confusion(names: list[str], cm: np.ndarray) -> Evaluation:
    """Accuracy, per-class figures and both macro-F1s (see `Evaluation`) from counts."""
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    seen = present | (predicted > 0)  # scikit-learn's labels: true or predicted
    per_class = {
        n: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, n in enumerate(names)
        if seen[i]
    }
    total = cm.sum()
    return Evaluation(
        labels=names,
        confusion=cm.tolist(),
        accuracy=float(tp.sum() / total) if total else 0.0,
        macro_f1=float(f1[seen].mean()) if seen.any() else 0.0,
        per_class=per_class,
        macro_f1_true_classes=float(f1[present].mean()) if present.any() else 0.0,
    )


HELD_OUT_ROWS = 5000  # per source: enough for a 5th percentile, bounded driver memory


@dataclass
class HeldOut:
    """One source scored by a classifier fitted without it (leave one source out)."""

    source: int  # index into the run's sources
    classes: list[str]
    paths: list[str]
    labels: list[str]
    logits: np.ndarray  # (n, R) raw margins of that classifier


def source_column(spellings: list[set[str]]) -> Any:
    """The index of the source a row's path lies under (-1: none), as a Spark column."""
    from pyspark.sql.types import IntegerType

    known = [sorted(s) for s in spellings]

    def source_of(path: str) -> int:
        return next((n for n, sp in enumerate(known) if _under_any(path, set(sp))), -1)

    return F.udf(source_of, IntegerType())(F.col("path"))


def out_of_source(
    images: DataFrame,
    spellings: list[set[str]],
    cfg: ClassifierConfig | None = None,
    *,
    scaler: Any = None,
    extra: DataFrame | None = None,
    work: str | None = None,
) -> list[HeldOut]:
    """Leave one source out: for each source, a classifier fitted on the others' training rows
    scores up to `HELD_OUT_ROWS` of that source's own photos (its test split excepted).

    Why: a temperature and threshold fitted on a random tenth of the training sources judge
    photos like the ones trained on; the app meets photos from anywhere. Scores on a source the
    classifier never saw are what a new kind of photo will get (issue 21: 85% on val_ photos
    of the training shop, 9-32% elsewhere). Costs one extra fit per source.

    `extra`: training-only rows (augment.composites) with the source of their frame
    (`_source`) and of their background photo (`_bg_source`); a fit without source g uses
    none made from g's images, so g's photos are never seen in any form. `work`: as
    `fit_classifier`'s (Spark Connect)."""
    from pyspark.ml.functions import vector_to_array

    tagged = images.withColumn("_source", source_column(spellings)).cache()
    try:
        present = {r["_source"] for r in tagged.select("_source").distinct().collect()}
        out = []
        for g in sorted(present - {-1}):
            rest = tagged.where(F.col("_source") != g)
            has_train = rest.where(F.col("split") == "train").limit(1).count() > 0
            train = rest.where(F.col("split") == "train" if has_train else F.col("split") != "test")
            if train.select("label").distinct().limit(2).count() < 2:
                continue
            train = train.drop("_source")
            if extra is not None:  # with their input column: the scaled features' (or the PCA)
                cols = ("path", "label", "split", "features" if scaler is not None else "pca")
                made = extra.where((F.col("_source") != g) & (F.col("_bg_source") != g))
                train = train.select(*cols).unionByName(made.select(*cols))
            model = fit_classifier(train, cfg, scaler=scaler, work=work)
            own = (
                tagged.where((F.col("_source") == g) & (F.col("split") != "test"))
                .orderBy(F.xxhash64("path"))
                .limit(HELD_OUT_ROWS)
            )
            scored = model.transform(with_input(own, scaler))
            rows = scored.select(
                "path", "label", vector_to_array(F.col("rawPrediction")).alias("m")
            )
            got = rows.collect()
            if not got:
                continue
            out.append(
                HeldOut(
                    g,
                    class_labels(model),
                    [r["path"] for r in got],
                    [r["label"] for r in got],
                    np.asarray([r["m"] for r in got], dtype=np.float64),
                )
            )
        return out
    finally:
        tagged.unpersist()


def calibrate_held_out(
    held: list[HeldOut], sources: list[str], label_map: Any
) -> tuple[float, float, dict[str, dict[str, Any]]]:
    """Temperature and threshold from every source's out-of-source scores (each source weighs
    the same), and per source the figures it gets when T and the threshold are fitted on the
    *other* sources only: what a source the model has never seen would get. Photos of a
    species no other source teaches are left out of both (counted in
    `photos_of_untaught_species`)."""
    from fruits.recognition import (
        NEGATIVE,
        answer,
        choose_threshold,
        fit_temperature_groups,
        metrics,
        softmax,
        species_table,
    )

    def taught(h: HeldOut) -> np.ndarray:
        """Rows a classifier fitted without the source could name: negatives, and photos of a
        species the other sources teach. A studio frame of a class only its own source has is
        right to be refused; it must not pull the threshold down nor count as a miss."""
        known = set(species_table(h.classes, label_map).values())
        keep = []
        for p, lab in zip(h.paths, h.labels, strict=True):
            _, lenient = _truth(p, lab, label_map)
            names = set(species_table(sorted(lenient), label_map).values())
            keep.append(lab == NEGATIVE or bool(names & known))
        return np.asarray(keep, dtype=bool)

    masks = [taught(h) for h in held]
    untaught = {h.source: int((~m).sum()) for h, m in zip(held, masks, strict=True)}
    held = [
        HeldOut(
            h.source,
            h.classes,
            [p for p, k in zip(h.paths, m, strict=True) if k],
            [lab for lab, k in zip(h.labels, m, strict=True) if k],
            h.logits[m],
        )
        for h, m in zip(held, masks, strict=True)
    ]
    held = [h for h in held if h.labels]

    def fit(parts: list[HeldOut]) -> tuple[float, float]:
        groups = []
        for h in parts:
            index = {c: i for i, c in enumerate(h.classes)}
            keep = np.array([lab in index for lab in h.labels], dtype=bool)
            y = np.array([index.get(lab, 0) for lab in h.labels], dtype=np.int64)[keep]
            groups.append((h.logits[keep], y, np.full(len(y), 1.0 / max(len(y), 1))))
        t = max(1.0, fit_temperature_groups(groups)) if groups else 1.0
        probs, pos, grp = [], [], []
        for h in parts:
            species = species_table(h.classes, label_map)
            a = answer(softmax(h.logits, t), h.classes, species, 0.0)
            probs.append(a.species_probability)
            pos.append(np.array([lab != NEGATIVE for lab in h.labels], dtype=bool))
            grp.append(np.full(len(h.labels), h.source))
        thr = (
            choose_threshold(np.concatenate(probs), np.concatenate(pos), np.concatenate(grp))
            if parts
            else 0.5
        )
        return round(t, 6), thr

    temperature, threshold = fit(held)
    figures: dict[str, dict[str, Any]] = {}
    for h in held:
        t, thr = fit([o for o in held if o is not h]) if len(held) > 1 else (temperature, threshold)
        species = species_table(h.classes, label_map)
        said = answer(softmax(h.logits, t), h.classes, species, thr)
        truth = [_truth(p, lab, label_map) for p, lab in zip(h.paths, h.labels, strict=True)]
        figures[sources[h.source]] = {
            **metrics(
                said,
                [v for v, _ in truth],
                [sp for _, sp in truth],
                [lab == NEGATIVE for lab in h.labels],
                species,
            ),
            "temperature": t,
            "threshold": thr,
            "photos_of_untaught_species": untaught[h.source],
        }
    return temperature, threshold, figures


def calibrate(
    arrays: Any,
    classes: list[str],
    images: DataFrame,
    *,
    sources: list[str],
    label_map: Any,
    planned: list[str] | None = None,
    held: list[HeldOut] | None = None,
) -> Calibration:
    """Fit the temperature and the "not sure" threshold on the `val` split, then score the
    `val` and `test` splits per source with `recognition.metrics`.

    `sources`: the inputs as the user named them (report keys); `planned`: the same inputs as
    the storage plan reads them (`dbfs:/Volumes/...`, `abfss://...`), the spelling Spark lists
    image paths in, so `/Volumes`, `az://` and `https://` inputs keep their own figures and
    threshold instead of matching nothing and collapsing into one pool.

    The val and test rows (not the train rows) are collected to the driver: a tenth of the
    training data plus the test split, as k floats each (k <= a few hundred).
    """
    from fruits.recognition import (
        NEGATIVE,
        answer,
        choose_threshold,
        fit_temperature,
        metrics,
        softmax,
        species_table,
    )

    rows = (
        images.where(F.col("split").isin("val", "test"))
        .select("path", "label", "split", _input_column(arrays))
        .collect()
    )
    species = species_table(classes, label_map)
    index = {c: i for i, c in enumerate(classes)}
    n = len(classes)
    if getattr(arrays, "reads", "pca") == "scaled":
        feats = np.asarray([r["features"] for r in rows], dtype=np.float32)
        inputs = arrays.scaled(feats.reshape(len(rows), -1))
    else:
        inputs = np.asarray([r["pca"] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    logits = (inputs @ arrays.coef.T + arrays.intercept)[:, :n] if len(rows) else np.zeros((0, n))
    is_val = np.array([r["split"] == "val" and r["label"] in index for r in rows], dtype=bool)
    y = np.array([index.get(r["label"], 0) for r in rows], dtype=np.int64)
    # either spelling of each source: the user's and the planned one
    spellings = [{s, p} for s, p in zip(sources, planned or sources, strict=True)]
    where = [
        next((n for n, sp in enumerate(spellings) if _under_any(r["path"], sp)), -1) for r in rows
    ]
    group = np.array(where, dtype=np.int64)
    sizes = {g: int((is_val & (group == g)).sum()) for g in set(group[is_val].tolist())}
    weight = np.array([1.0 / max(sizes.get(g, 1), 1) for g in group])
    by_part: dict[str, dict[str, Any]] = {}
    if held:  # leave one source out: fitted on sources the classifiers never saw
        temperature, threshold, by_part["held_out_source"] = calibrate_held_out(
            held, sources, label_map
        )
        probs = softmax(logits, temperature) if len(rows) else logits
    else:
        temperature = (
            fit_temperature(logits[is_val], y[is_val], weight[is_val]) if is_val.any() else 1.0
        )
        probs = softmax(logits, temperature) if len(rows) else logits
        open_answers = answer(probs, classes, species, 0.0)
        positive = np.array([r["label"] != NEGATIVE for r in rows], dtype=bool)
        threshold = choose_threshold(
            open_answers.species_probability[is_val], positive[is_val], group[is_val]
        )
    said = answer(probs, classes, species, threshold)
    for split in ("val", "test"):
        for at, source in enumerate(sources):
            sel = [i for i, r in enumerate(rows) if r["split"] == split and where[i] == at]
            if not sel:
                continue
            truth = [_truth(rows[i]["path"], rows[i]["label"], label_map) for i in sel]
            part = said.subset(sel)
            by_part.setdefault(split, {})[source] = metrics(
                part,
                [t[0] for t in truth],
                [t[1] for t in truth],
                [rows[i]["label"] == NEGATIVE for i in sel],
                species,
            )
    return Calibration(temperature, threshold, species, by_part)


def _input_column(arrays: Any) -> str:
    return "features" if getattr(arrays, "reads", "pca") == "scaled" else "pca"


def _under(path: str, source: str) -> bool:
    """Is `path` (as Spark lists it, `file:/...` for local files) below `source`? A volume
    matches under either spelling (`/Volumes/...`, `dbfs:/Volumes/...`)."""
    from fruits.storage.plan import volume_path

    def norm(uri: str) -> str:
        return volume_path(uri) or local_path(uri) or uri

    return norm(path).startswith(norm(source).rstrip("/") + "/")


def _under_any(path: str, spellings: set[str]) -> bool:
    return any(_under(path, s) for s in spellings)


def _truth(path: str, label: str, label_map: Any) -> tuple[set[str], set[str]]:
    """(classes right at variety level, classes right at species level) for one photo."""
    folder = path.rstrip("/").split("/")[-2]
    if label_map is not None and folder in label_map.target:
        return set(label_map.strict.get(folder, ())), set(label_map.lenient.get(folder, ()))
    return {label}, {label}


# -- the stage ------------------------------------------------------------------------------


TRAIN_COLUMNS = ("path", "label", "split", "features")  # what a fit reads (with the scaler)


def spellings(run: Run) -> list[set[str]]:
    """Each source's URIs as given and as Spark lists its paths (what `source_column` reads)."""
    planned = [uri for _, uri in run.io.inputs]
    return [{s, p} for s, p in zip(run.inputs, planned, strict=True)]


def stage(
    run: Run,
    reducer: Reducer,
    images: DataFrame,
    splits: dict[str, int],
    prev: Increment,
    label_map: LabelMap | None = None,
    augmented: DataFrame | None = None,
) -> Evaluation:
    """Fit (or, incrementally, reuse) the classifier, calibrate it on the val split, save it
    and its serving arrays, and evaluate it on the test split (else the val split).
    `augmented` (augment.composites) joins the training rows of every fit, never a judged
    split."""
    from fruits.export import arrays_from_spark, export_serving
    from fruits.plots import plot_confusion

    work = run.uri("_work", "classifier")  # Spark Connect: where driver-fitted models are built
    # the run's fitted StandardScalerModel
    fitted = cast("StandardScalerModel", reducer.model.stages[0])
    scaler: StandardScalerModel | None = fitted
    if prev.classifier_path:  # incremental: no refit
        model = prev.classifier or PipelineModel.load(prev.classifier_path)
        if not reads_scaled(model, len(fitted.mean)):  # a run from before: it reads the PCA
            scaler = None
    else:  # the one rule, shared with the reducer's fit
        train = train_part(images, splits)
        if augmented is not None:  # read through the scaler, as the real photos are
            train = train.select(*TRAIN_COLUMNS).unionByName(augmented.select(*TRAIN_COLUMNS))
        model = fit_classifier(train, scaler=scaler, work=work)
    model.write().overwrite().save(run.uri("models", "classifier"))
    classes = class_labels(model)
    planned = [uri for _, uri in run.io.inputs]  # the spelling Spark lists paths in
    held = None
    labelled = sum(role == "labelled" for _, role in run.cfg.sources)
    # two labelled sources at least: each held-out fruit source is then judged by a classifier
    # that still knows fruit (the sample plus negatives alone keeps the val split's fit)
    if run.cfg.held_out_calibration and labelled >= 2 and not prev.classifier_path:
        held = (
            out_of_source(images, spellings(run), scaler=scaler, extra=augmented, work=work) or None
        )
    calibration = calibrate(
        arrays_from_spark(reducer.model, model),
        classes,
        images,
        sources=run.inputs,
        label_map=label_map,
        planned=planned,
        held=held,
    )
    export_serving(
        reducer.model,
        model,
        run.local / "models",
        featurizer=run.cfg.featurizer,
        run_id=run.run_id,
        recognition=calibration.serving(),
    )
    judged = "test" if splits.get("test") else "val"
    evaluation = evaluate(model, images.where(F.col("split") == judged), scaler=scaler)
    evaluation.split = judged
    evaluation.recognition = {
        "temperature": calibration.temperature,
        "threshold": calibration.threshold,
        **calibration.metrics,
    }
    plot = run.local / "plots" / "confusion_matrix.png"
    plot_confusion(evaluation.labels, evaluation.confusion, plot)
    log.info(
        "classify: %s accuracy %.4f, macro-F1 %.4f",
        judged,
        evaluation.accuracy,
        evaluation.macro_f1,
    )
    return evaluation
