"""Incremental runs: process only the images that are new or changed since the published output.

The published output is its own manifest: `images.parquet` and `quarantine.parquet` keep each
file's `(path, length, modification_time, content_hash)`, so comparing them with today's listing
finds what is new, changed or deleted, with no state stored anywhere else.

Size + modification time miss a file rewritten with the same size and its mtime restored (a
copy with `cp -p`, `rsync -t`, a restore from backup). `--verify-content` then also compares
`content_hash`: the featurize stage stores a SHA-1 of the exact bytes it read (the read is
shared, so hash and features always describe the same bytes; hashing costs nothing beside the
CNN), and the plan hashes every listed file again. That reads every file's bytes each run (no
decoding, no CNN), the price of seeing content rather than metadata; storing the hash is what
makes it affordable, since the alternative, re-featurising everything to compare, costs the CNN
pass incremental runs exist to avoid. A listing that already knows a file's version (a
`content_hash` column, e.g. an object store's ETag) is compared on every run, for free.

When the labels of the data differ from the saved classifier's classes (a class folder renamed,
added or emptied), the classifier is refitted and `report.json` says why: serving a classifier
whose classes disagree with the data would silently answer with names that no longer exist.

Because the state and the results are published together by one rename, a killed run can never
leave them out of step, and a re-run after a crash computes the same plan again.

New and changed files are featurised and projected with the saved scaler + PCA (no refit, so
existing rows keep their exact values); the complete new output (kept rows + new rows) is then
written to staging and published like any run. `--refit` refits scaler, PCA and classifier on
every image, reusing the stored features (no CNN pass over old images).

Policy for deleted input files: their rows leave the output (it mirrors the input, and derived
data of a removed image should not outlive it) and every deleted path is listed in
`report.json` under `incremental.deleted_paths`.

Why not Structured Streaming's file source (`readStream...trigger(availableNow=True)`)? It
keys files by path only, so a file rewritten in place is never processed again, it cannot see
deletions, and its checkpoint would be a second source of truth beside the published output
(see docs/reliability.md, with the experiment that shows it).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.config import PipelineConfig
from fruits.reduce import Reducer, load_reducer
from fruits.sources import Ingested, content
from fruits.storage import Store, join

if TYPE_CHECKING:
    from fruits.stage import Run

log = logging.getLogger(__name__)

META = ("path", "length", "modification_time", "content_hash")
FEATURE_COLUMNS = (
    "path",
    "label",
    "split",
    "length",
    "modification_time",
    "content_hash",
    "features",
)
MAX_LISTED = 10_000  # deleted paths listed in report.json; the count is always exact


@dataclass
class Increment:
    """What an incremental run has to do, from the listing compared with the previous output.

    `todo`/`todo_refused` replace the pipeline's `ingested.files`/`ingested.too_large`;
    `kept_features`/`kept_quarantine` are the previous rows that are still current.
    """

    previous_run_id: str | None
    previous_report: dict[str, Any]
    todo: DataFrame
    todo_refused: DataFrame
    kept_features: DataFrame | None
    kept_quarantine: DataFrame | None
    new: int
    changed: int
    deleted_paths: list[str]
    deleted: int
    unchanged: int
    refit: bool
    reducer: Reducer | None = None
    classifier_path: str | None = None
    classifier: Any = None  # the saved classifier, loaded once (its classes were checked)
    classifier_refit: str | None = None  # why the classifier is refitted, when it is
    verify_content: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    incremental: bool = True

    @classmethod
    def full(cls, listed: Ingested) -> Increment:
        """A full run is an incremental run with an empty past: everything is new."""
        total = listed.count()
        return cls(
            previous_run_id=None,
            previous_report={},
            todo=listed.files,
            todo_refused=listed.too_large,
            kept_features=None,
            kept_quarantine=None,
            new=total,
            changed=0,
            deleted_paths=[],
            deleted=0,
            unchanged=0,
            refit=False,
            incremental=False,
        )

    @property
    def processed(self) -> int:
        return self.new + self.changed

    @property
    def nothing_to_do(self) -> bool:
        return (
            self.incremental
            and self.processed == 0
            and self.deleted == 0
            and not self.refit
            and self.classifier_refit is None
        )

    def with_kept_features(self, df: DataFrame) -> DataFrame:
        """This run's rows plus the previous output's rows that are still current."""
        return df if self.kept_features is None else df.unionByName(self.kept_features)

    def with_kept_quarantine(self, df: DataFrame) -> DataFrame:
        return df if self.kept_quarantine is None else df.unionByName(self.kept_quarantine)

    def describe(self) -> dict[str, Any] | None:
        if not self.incremental:
            return None
        return {
            "mode": "incremental",
            "previous_run_id": self.previous_run_id,
            "processed": self.processed,
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "deleted_policy": "removed from the output and listed here",
            "deleted_paths": self.deleted_paths,
            "deleted_paths_truncated": self.deleted > len(self.deleted_paths),
            "refit": self.refit,
            "pca": "refitted on every image" if self.refit else "reused (no refit)",
            "classifier": self.classifier_refit or "reused (no refit)",
            "compared_by": "path, size, modification time"
            + (", content hash (every file read)" if self.verify_content else "")
            + " and a listing's own content version where it gives one",
        }

    def unchanged_report(self, run_id: str, images_total: int | None) -> dict[str, Any]:
        """The report of a run that found nothing to do: the output is left as it was."""
        keep = (
            "images_ok",
            "images_quarantined",
            "images_by_split",
            "classes",
            "pca_k",
            "pca_explained_variance",
            "accuracy",
            "macro_f1",
        )
        return {
            "run_id": run_id,
            "published": False,
            "images_total": images_total,
            "images_processed": 0,
            **{k: self.previous_report.get(k) for k in keep},
            "incremental": self.describe(),
        }


def finished(store: Store, output: str) -> bool:
    """A previous run is usable when it was published complete (its `_SUCCESS.json` exists)."""
    return store.exists(join(output, "_SUCCESS.json")) and store.exists(
        join(output, "models", "scaler_pca")
    )


def read_report(store: Store, output: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fruits-prev-") as tmp:
        local = Path(tmp) / "report.json"
        store.get(join(output, "report.json"), local)
        return cast(dict[str, Any], json.loads(local.read_text()))  # json.loads: Any


def check_same_featurizer(cfg: PipelineConfig, previous: dict[str, Any]) -> None:
    """New rows must come from the very network that made the old ones, or PCA mixes spaces."""
    from fruits.models import fingerprint, read_weights

    before = previous.get("featurizer") or {}
    wanted = fingerprint(cfg.featurizer.backbone, read_weights(cfg.featurizer.weights))
    if before.get("id") != wanted or before.get("image_size") != cfg.featurizer.image_size:
        raise ValueError(
            f"the output's features come from {before.get('id')} at {before.get('image_size')} px;"
            f" this run asks for {wanted} at {cfg.featurizer.image_size} px: run without"
            " --incremental to recompute every image"
        )


def previous(run: Run, listed: Ingested) -> Increment:
    """What this run can reuse from the published output: nothing for a full run (or when no
    finished output exists yet), else the rows and models of the files that did not change."""
    if not run.cfg.incremental:
        return Increment.full(listed)
    plan = plan_increment(run.spark, run.store, run.cfg, run.output, listed)
    return plan if plan is not None else Increment.full(listed)


def plan_increment(
    spark: SparkSession, store: Store, cfg: PipelineConfig, output: str, ingested: Ingested
) -> Increment | None:
    """Compare the listing with the published output; None when there is no finished output
    to build on (the caller then does a full run)."""
    if not _has_finished_output(store, output):
        log.info("incremental: no finished output at %s, processing everything", output)
        return None
    previous = read_report(store, output)
    check_same_featurizer(cfg, previous)
    images = _with_meta(spark.read.parquet(join(output, "images.parquet")))
    quarantine = _read_quarantine(spark, store, output)
    known = images.select(*META).unionByName(quarantine.select(*META))
    refused = _with_meta(ingested.too_large)
    diff = compare(_listing(ingested, refused, verify=cfg.verify_content), known)
    delta = Delta.collect(diff)
    todo = _todo(spark, ingested, delta.todo)
    todo_refused = (
        refused.join(F.broadcast(_paths_df(spark, delta.refused)), "path", "left_semi")
        if delta.refused
        else refused.limit(0)
    )
    kept_features, kept_quarantine = _kept(
        spark, images.select(*FEATURE_COLUMNS), quarantine, delta.changed + delta.deleted
    )
    kept_features = relabel(kept_features, ingested.files)
    classifier_path, classifier, classifier_refit = _classifier_choice(
        store, output, cfg, ingested.files
    )
    deleted = sorted(delta.deleted)
    return Increment(
        previous_run_id=previous.get("run_id"),
        previous_report=previous,
        todo=todo,
        todo_refused=todo_refused,
        kept_features=kept_features,
        kept_quarantine=kept_quarantine,
        new=delta.count("new"),
        changed=delta.count("changed"),
        deleted_paths=deleted[:MAX_LISTED],
        deleted=len(deleted),
        unchanged=delta.count("unchanged"),
        refit=cfg.refit,
        reducer=None
        if cfg.refit
        else load_reducer(
            join(output, "models", "scaler_pca"),
            previous.get("pca_explained_variance_per_component"),
        ),
        classifier_path=classifier_path,
        classifier=classifier,
        classifier_refit=classifier_refit,
        verify_content=cfg.verify_content,
    )


def _has_finished_output(store: Store, output: str) -> bool:
    """`finished`, with a store that cannot read the output reported in one line."""
    try:
        return finished(store, output)
    except Exception as exc:  # e.g. an fsspec-only output (`--storage fsspec`)
        raise ValueError(
            f"--incremental needs an output Spark's Hadoop connector can read: {output}"
            f" ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
        ) from None


def _listing(ingested: Ingested, refused: DataFrame, *, verify: bool) -> DataFrame:
    """Today's listing as (META..., refused): the usable files with the content version this
    run compares, and the files refused before reading."""
    current = _with_meta(ingested.files).withColumn(
        "content_hash", current_hash(ingested.files, verify=verify)
    )
    return current.select(*META, F.lit(False).alias("refused")).unionByName(
        refused.select(*META, F.lit(True).alias("refused"))
    )


def compare(listed: DataFrame, known: DataFrame) -> DataFrame:
    """(path, status, refused) for every path of today's listing or the previous output;
    status is new, deleted, unchanged or changed."""
    cur, old = listed.alias("cur"), known.alias("old")
    # A hash is compared where this listing has one: an unknown old hash (an output written
    # before hashes were kept, a file unreadable last time) then counts as changed.
    same = (
        F.col("cur.length").eqNullSafe(F.col("old.length"))
        & F.col("cur.modification_time").eqNullSafe(F.col("old.modification_time"))
        & (
            F.col("cur.content_hash").isNull()
            | F.col("cur.content_hash").eqNullSafe(F.col("old.content_hash"))
        )
    )
    status = (
        F.when(F.col("old.path").isNull(), "new")
        .when(F.col("cur.path").isNull(), "deleted")
        .when(same, "unchanged")
        .otherwise("changed")
    )
    return cur.join(old, F.col("cur.path") == F.col("old.path"), "full_outer").select(
        F.coalesce("cur.path", "old.path").alias("path"),
        status.alias("status"),
        F.coalesce("cur.refused", F.lit(False)).alias("refused"),
    )


@dataclass
class Delta:
    """The comparison brought to the driver: counts per status, and the paths of what is not
    unchanged (a day's new files, not the whole store)."""

    counts: dict[str, int]
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)  # new or changed, to featurise
    refused: list[str] = field(default_factory=list)  # new or changed, refused before reading

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)

    @classmethod
    def collect(cls, diff: DataFrame) -> Delta:
        """One action: the unchanged files collapse into one row per status (path null) with
        their count, every other file is its own row. (Two actions, a count and then the
        paths, ran the comparison twice; with --verify-content each read every file.)"""
        moved = F.col("status") != "unchanged"
        rows = (
            diff.groupBy(
                "status",
                F.when(moved, F.col("path")).alias("path"),
                F.when(moved, F.col("refused")).alias("refused"),
            )
            .count()
            .collect()
        )
        delta = cls({})
        for row in sorted(rows, key=lambda r: (r["status"], r["path"] or "")):
            delta.counts[row["status"]] = delta.count(row["status"]) + row["count"]
            if row["path"] is not None:
                delta.add(row["status"], row["path"], refused=bool(row["refused"]))
        log.info(
            "incremental: %d new, %d changed, %d deleted, %d unchanged",
            delta.count("new"),
            delta.count("changed"),
            delta.count("deleted"),
            delta.count("unchanged"),
        )
        return delta

    def add(self, status: str, path: str, *, refused: bool) -> None:
        getattr(self, status).append(path)
        if status != "deleted":
            (self.refused if refused else self.todo).append(path)


def _todo(spark: SparkSession, ingested: Ingested, paths: list[str]) -> DataFrame:
    """The listed files to featurise this run (new or changed), without reading the others:
    each source re-reads its own (`Ingested.only`)."""
    return ingested.only(spark, paths)


def _kept(
    spark: SparkSession, features: DataFrame, quarantine: DataFrame, gone: list[str]
) -> tuple[DataFrame, DataFrame]:
    """The previous output's feature and quarantine rows minus the changed and deleted paths."""
    if not gone:
        return features, quarantine
    gone_df = F.broadcast(_paths_df(spark, gone))
    return (
        features.join(gone_df, "path", "left_anti"),
        quarantine.join(gone_df, "path", "left_anti"),
    )


def relabel(kept: DataFrame, listing: DataFrame) -> DataFrame:
    """Kept rows with today's `label` and `split`, from the listing (where ingest applied the
    folder names, `--label-map` and the validation split of this run): a file whose bytes did
    not change keeps its features and projection, but a new label map or a renamed class must
    reach every row, or the output keeps labels the report (and the refitted classifier) says
    are gone. A kept path the listing lacks keeps its stored values."""
    now = listing.select(
        F.col("path").alias("_path"), F.col("label").alias("_label"), F.col("split").alias("_split")
    )
    joined = kept.join(now, F.col("path") == F.col("_path"), "left")
    fresh = {
        "label": F.coalesce(F.col("_label"), F.col("label")).alias("label"),
        "split": F.coalesce(F.col("_split"), F.col("split")).alias("split"),
    }
    return joined.select(*[fresh.get(c, F.col(c)) for c in kept.columns])


def _classifier_choice(
    store: Store, output: str, cfg: PipelineConfig, files: DataFrame
) -> tuple[str | None, Any, str | None]:
    """(saved classifier to reuse, that classifier loaded, why it is refitted): nothing to
    reuse with `--refit`, or when the data's classes are no longer the classifier's. Loaded
    once here for the check and handed to the classify stage (a load is ~1.3 s of small jobs)."""
    if cfg.refit:
        return None, None, "refitted (--refit)"
    path = _classifier(store, output)
    if path is None:
        return None, None, None
    model = load_classifier(path)
    changed_classes = classes_changed(model, files)
    if changed_classes:
        log.info("incremental: %s", changed_classes)
        return None, None, changed_classes
    return path, model, None


def current_hash(files: DataFrame, *, verify: bool) -> Column:
    """The content version this run compares: the listing's own (`content_hash`, e.g. an ETag)
    where it has one; with `verify`, else a SHA-1 of the bytes, the same expression the
    featurize stage stores (so it reads every file); null (not compared) otherwise."""
    listed = F.col("content_hash") if "content_hash" in files.columns else F.lit(None)
    if verify:
        return F.coalesce(listed, F.concat(F.lit("sha1:"), F.sha1(content(files))))
    return listed.cast("string")


def classes_changed(model: Any, files: DataFrame) -> str | None:
    """Why the saved classifier no longer fits the data (its classes are not the labels of the
    rows it would be fitted on today), or None when they agree."""
    from fruits.export import class_labels

    train = files.where(F.col("split") == "train")
    rows = train.select("label").distinct().collect() or (
        files.select("label").distinct().collect()
    )
    now = {r["label"] for r in rows}
    before = set(class_labels(model))
    if now == before:
        return None
    gone, added = sorted(before - now), sorted(now - before)
    return f"refitted: the data's classes changed (gone: {gone}, new: {added})"


def load_classifier(path: str) -> Any:
    from pyspark.ml import PipelineModel

    return PipelineModel.load(path)


def _classifier(store: Store, output: str) -> str | None:
    path = join(output, "models", "classifier")
    return path if store.exists(path) else None


def _read_quarantine(spark: SparkSession, store: Store, output: str) -> DataFrame:
    uri = join(output, "quarantine.parquet")
    schema = (
        "path string, reason string, length bigint, modification_time timestamp,"
        " content_hash string"
    )
    if not store.exists(uri):
        return spark.createDataFrame([], schema)
    return _with_meta(spark.read.parquet(uri)).select("path", "reason", *META[1:])


def _with_meta(df: DataFrame) -> DataFrame:
    """Older outputs and other listings may lack the file metadata: null, compared null-safe."""
    kinds = (("length", "bigint"), ("modification_time", "timestamp"), ("content_hash", "string"))
    for name, kind in kinds:
        if name not in df.columns:
            df = df.withColumn(name, F.lit(None).cast(kind))
    return df


def _paths_df(spark: SparkSession, paths: list[str]) -> DataFrame:
    return spark.createDataFrame([(p,) for p in paths], "path string")
