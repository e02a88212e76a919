"""Ingest: label and split what the sources list, as one listing for the run.

Sources (`fruits.sources`: a local walk, Spark's binaryFile, fsspec) list and read; here the
rows get their label (the parent folder, mapped by `--label-map`, or "not a fruit" for a
negatives source) and split (a split-named ancestor or file-name prefix, plus a grouped
validation part where a source has none). Nothing here collects file names to the driver;
label and split are Spark SQL expressions.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.common import InputError, local_path
from fruits.sources import Ingested

if TYPE_CHECKING:
    from fruits.stage import Run

# InputError and local_path live in common.py (the ground floor); importable from here too
__all__ = ["Ingested", "InputError", "local_path", "read_sources"]

log = logging.getLogger(__name__)

SPLIT_NAMES: dict[str, str] = {
    "training": "train",
    "train": "train",
    "test": "test",
    "testing": "test",
    "val": "val",
    "valid": "val",
    "validation": "val",
}


def label_col(path: Column) -> Column:
    """Label = the image's parent folder name (names may contain spaces)."""
    return F.element_at(F.split(path, "/"), -2)


def split_col(path: Column) -> Column:
    """Split = the nearest ancestor folder named like Training/Test/val (any case), else a
    file-name prefix `train_`/`val_`/`test_` (the Grocery Store photos' convention), else `all`."""
    folders = F.slice(F.split(path, "/"), 1, F.size(F.split(path, "/")) - 1)
    mapping = F.create_map(*[F.lit(x) for kv in SPLIT_NAMES.items() for x in kv])
    known = F.filter(F.transform(folders, F.lower), lambda p: p.isin(list(SPLIT_NAMES)))
    nearest = F.element_at(known, -1)
    prefix = F.lower(F.regexp_extract(F.element_at(F.split(path, "/"), -1), r"^([A-Za-z]+)_", 1))
    return (
        F.when(F.size(known) > 0, mapping[nearest])
        .when(prefix.isin(list(SPLIT_NAMES)), mapping[prefix])
        .otherwise(F.lit("all"))
    )


FRAME_BLOCK = 25  # video frames per validation group
GUARD_FRAMES = 2  # train frames this close to a val block of the same series are held out
GUARD = "guard"  # their split: neither fitted on nor judged, still in images.parquet


def _frame_name(path: Column) -> tuple[Column, Column]:
    """(series, frame) of a Fruits-360 video frame name (`r2_123_100.jpg`: series `r2_`,
    frame 123); frame "" for any other file."""
    name = F.element_at(F.split(path, "/"), -1)
    # at most 9 digits: a Flickr photo (`5999024446_5721493894.jpg`, tf-flowers) is no video
    # frame, and its 10-digit id cast to int stopped a whole run after featurize (ANSI mode)
    pattern = r"^((?:r\d*_)?)(\d{1,9})_\d+\."
    return F.regexp_extract(name, pattern, 1), F.regexp_extract(name, pattern, 2)


def group_col(path: Column, label: Column, offset: int = 0) -> Column:
    """What must stay on one side of a validation split. Fruits-360 names are video frames
    (`r_123_100.jpg`: frame 123): neighbouring frames are near-duplicates, so 25 frames of a
    class and series form one group; any other file is its own group, named by its folder and
    file name, not its whole path, so the same data split the same way wherever it lives (a
    laptop folder, `abfss://`, a volume; the absolute path once gave each place its own
    validation photos, hence its own calibration and figures). `offset`: the group `offset`
    blocks away in the same series (the guard band's neighbours)."""
    series, frame = _frame_name(path)
    block = F.floor(frame.cast("int") / FRAME_BLOCK) + offset
    parts = F.split(path, "/")
    own = F.concat_ws("|", F.element_at(parts, -2), F.element_at(parts, -1))
    return F.when(frame != "", F.concat_ws("|", label, series, block.cast("string"))).otherwise(own)


def with_validation(files: DataFrame, fraction: float, has_val: bool) -> DataFrame:
    """`all` counts as training data; a source without its own `val` split gives a grouped,
    deterministic `fraction` of its training rows to `val` (calibration, choosing k), never
    rows of a Test split.

    Groups alone leak at their edges (frame 24 in train, 25 in val: 1.3% of val frames had a
    train frame one frame away on Fruits-360 dev, 3.4% within two), so a train frame within
    `GUARD_FRAMES` of a val block of its class and series goes to `guard`: kept in the
    outputs, neither fitted on nor judged (4 frames per val block on the full, dense
    Fruits-360; dev, a sparse subset: 126 of 8,460 training frames). Decided from the name
    alone, row by row: a window over the listing would reshuffle the featurize stage's tasks."""
    split = F.when(F.col("split") == "all", F.lit("train")).otherwise(F.col("split"))
    if not has_val and fraction > 0:
        path, label = F.col("path"), F.col("label")
        cut = int(fraction * 1000)

        def is_val(offset: int) -> Column:
            return F.pmod(F.xxhash64(group_col(path, label, offset)), F.lit(1000)) < cut

        _, frame = _frame_name(path)
        at = F.pmod(frame.cast("int"), F.lit(FRAME_BLOCK))
        near = (frame != "") & (
            ((at < GUARD_FRAMES) & (frame.cast("int") >= FRAME_BLOCK) & is_val(-1))
            | ((at >= FRAME_BLOCK - GUARD_FRAMES) & is_val(1))
        )
        split = (
            F.when((split == "train") & is_val(0), "val")
            .when((split == "train") & near, GUARD)
            .otherwise(split)
        )
    return files.withColumn("split", split)


def labelled(got: Ingested) -> Ingested:
    """A source's listing with `label` (the parent folder) and `split` (the nearest split-named
    ancestor or file-name prefix), in the column order every stage sees: path, label, split,
    then what the source gave (length, modification_time, content, ...). The two expressions
    are built once for the rows and their keys (each costs ~0.1 s of JVM calls to build)."""
    path = F.col("path")
    label, split = label_col(path).alias("label"), split_col(path).alias("split")

    def with_keys(df: DataFrame) -> DataFrame:
        return df.select(path, label, split, *[F.col(c) for c in df.columns if c != "path"])

    return got.map_rows(with_keys)


def map_labels(spark: SparkSession, files: DataFrame, target: dict[str, str]) -> DataFrame:
    """`label` replaced by `target[label]` where the map names it, through a broadcast join.

    Not a `create_map` of literals: that is one expression with two literals per entry, which
    Spark's optimizer and code generator walk again and again, so a 100,000-entry map (2.8 MB
    of JSON) kept ingest busy for more than 5 minutes; the join is one small table."""
    table = pd.DataFrame({"_folder": list(target), "_mapped": list(target.values())})
    lookup = spark.createDataFrame(table, "_folder string, _mapped string")
    joined = files.join(F.broadcast(lookup), F.col("label") == F.col("_folder"), "left")
    mapped = F.coalesce(F.col("_mapped"), F.col("label")).alias("label")
    return joined.select(*[mapped if c == "label" else F.col(c) for c in files.columns])


def read_sources(run: Run) -> Ingested:
    """Every source of the run through the reader its storage plan chose, as one listing:
    labels mapped (`--label-map`), negatives labelled `recognition.NEGATIVE`, a validation
    part set aside where a source has none.

    Raises `InputError` when nothing at all was listed, and `LabelMapError` for a label map
    naming unknown classes, both before any image is read.
    """
    from fruits.facts import load_facts
    from fruits.recognition import NEGATIVE, load_label_map

    cfg = run.cfg
    roles = [role for _, role in cfg.sources]
    read = {
        uri: labelled(
            run.io.read_images(
                run.spark, uri, extensions=cfg.extensions, max_file_bytes=cfg.max_file_bytes
            )
        )
        for uri in run.inputs
    }
    # One small job for what every later choice needs: (source, split, label) present.
    keys = None
    for n, uri in enumerate(run.inputs):
        part = read[uri].split_labels().select(F.lit(n).alias("source"), "split", "label")
        keys = part if keys is None else keys.unionByName(part)
    assert keys is not None
    present = keys.distinct().collect()
    label_map = None
    if cfg.label_map:
        folders = {r["label"] for r in present if roles[r["source"]] == "labelled"}
        label_map = load_label_map(cfg.label_map, known=folders | set(load_facts()))
    found: Ingested | None = None
    for n, (uri, role) in enumerate(zip(run.inputs, roles, strict=True)):
        has_val = any(r["source"] == n and r["split"] == "val" for r in present)

        def prepare(files: DataFrame, role: str = role, has_val: bool = has_val) -> DataFrame:
            if role == "negatives":
                files = files.withColumn("label", F.lit(NEGATIVE))
            elif label_map is not None and label_map.target:
                files = map_labels(run.spark, files, label_map.target)
            return with_validation(files, cfg.val_fraction, has_val)

        got = read[uri].map_rows(prepare, keys=False)
        found = got if found is None else found.union(got)
    assert found is not None
    total = found.count()
    if total == 0:
        where = ", ".join(run.inputs)
        raise InputError(f"no images under {where} (extensions: {', '.join(cfg.extensions)})")
    log.info("ingest: %d image files listed", total)
    return replace(found, total=total, label_map=label_map)
