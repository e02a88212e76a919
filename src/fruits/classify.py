"""Classify: multinomial logistic regression on the PCA features, judged on the test split."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import StringIndexer
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits.calibration import Calibration
from fruits.common import local_path
from fruits.config import ClassifierConfig
from fruits.export import class_labels, reads_scaled
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
    return scaler.transform(vec).withColumnRenamed(SCALED, X).drop(VEC)


def fit_classifier(
    train: DataFrame,
    cfg: ClassifierConfig | None = None,
    *,
    features: str = "pca",
    scaler: Any = None,
) -> PipelineModel:
    """Label indexing + logistic regression as one Spark ML pipeline, saved with the run."""
    cfg = cfg or ClassifierConfig()
    data = with_input(train, scaler, features=features).select(X, F.col("label"))
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
) -> list[HeldOut]:
    """Leave one source out: for each source, a classifier fitted on the others' training rows
    scores up to `HELD_OUT_ROWS` of that source's own photos (its test split excepted).

    Why: a temperature and threshold fitted on a random tenth of the training sources judge
    photos like the ones trained on; the app meets photos from anywhere. Scores on a source the
    classifier never saw are what a new kind of photo will get (issue 21: 85% on val_ photos
    of the training shop, 9-32% elsewhere). Costs one extra fit per source.

    `extra`: training-only rows (augment.composites) with the source of their frame
    (`_source`) and of their background photo (`_bg_source`); a fit without source g uses
    none made from g's images, so g's photos are never seen in any form."""
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
            model = fit_classifier(train, cfg, scaler=scaler)
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

    # the run's fitted StandardScalerModel
    fitted = cast("StandardScalerModel", reducer.model.stages[0])
    scaler: StandardScalerModel | None = fitted
    if prev.classifier_path:  # incremental: no refit
        model = PipelineModel.load(prev.classifier_path)
        if not reads_scaled(model, len(fitted.mean)):  # a run from before: it reads the PCA
            scaler = None
    else:  # the one rule, shared with the reducer's fit
        train = train_part(images, splits)
        if augmented is not None:  # read through the scaler, as the real photos are
            train = train.select(*TRAIN_COLUMNS).unionByName(augmented.select(*TRAIN_COLUMNS))
        model = fit_classifier(train, scaler=scaler)
    model.write().overwrite().save(run.uri("models", "classifier"))
    classes = class_labels(model)
    planned = [uri for _, uri in run.io.inputs]  # the spelling Spark lists paths in
    held = None
    labelled = sum(role == "labelled" for _, role in run.cfg.sources)
    # two labelled sources at least: each held-out fruit source is then judged by a classifier
    # that still knows fruit (the sample plus negatives alone keeps the val split's fit)
    if run.cfg.held_out_calibration and labelled >= 2 and not prev.classifier_path:
        held = out_of_source(images, spellings(run), scaler=scaler, extra=augmented) or None
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
