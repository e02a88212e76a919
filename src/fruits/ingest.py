"""Ingest: list image files with Spark's `binaryFile` source and derive label and split from paths.

Nothing here collects file names to the driver; label and split are Spark SQL expressions.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd  # module level: Spark resolves the UDF's type hints here
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.common import InputError, local_path, read_file
from fruits.config import DEFAULT_EXTENSIONS, FILES_PER_PARTITION, MAX_FILE_BYTES

if TYPE_CHECKING:
    from fruits.recognition import LabelMap
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


def glob_for(extensions: Iterable[str]) -> str:
    """A case-insensitive Hadoop glob (`*.{[jJ][pP][gG],...}`), so the filter runs while listing."""

    def ci(ext: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext)

    exts = sorted({e.lower().lstrip(".") for e in extensions})
    if not exts:
        raise ValueError("at least one image extension is required")
    return "*.{" + ",".join(ci(e) for e in exts) + "}"


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
    class and series form one group; any other file is its own group. `offset`: the group
    `offset` blocks away in the same series (the guard band's neighbours)."""
    series, frame = _frame_name(path)
    block = F.floor(frame.cast("int") / FRAME_BLOCK) + offset
    return F.when(frame != "", F.concat_ws("|", label, series, block.cast("string"))).otherwise(
        path
    )


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


@dataclass(frozen=True)
class Ingested:
    """`files`: every listed image with its bytes still unread (lazy); `too_large`: files we
    refuse to read at all (their size, or a broken or looping symlink), with a reason.

    `may_drop`: the source can lose a listed file without a row (Spark's binaryFile with
    `ignoreCorruptFiles`), so the pipeline must compare the listing with what it featurised.
    `keys`: `files`' (split, label) where a reader can scan them more cheaply than `files`
    (a local walk: the listing before it is spread over one task per 256 files, 4x faster
    for 20,000 files).
    """

    files: DataFrame
    too_large: DataFrame
    may_drop: bool = True
    total: int | None = None  # files listed (usable + refused), when the listing knows it
    keys: DataFrame | None = None
    label_map: LabelMap | None = None  # the merged `--label-map` files, read by read_sources

    def split_labels(self) -> DataFrame:
        """(split, label) of every usable listed file, for what-is-present questions."""
        return (self.keys if self.keys is not None else self.files).select("split", "label")

    def union(self, other: Ingested) -> Ingested:
        both = None if self.total is None or other.total is None else self.total + other.total
        return Ingested(
            files=self.files.unionByName(other.files, allowMissingColumns=True),
            too_large=self.too_large.unionByName(other.too_large),
            may_drop=self.may_drop or other.may_drop,
            total=both,
            keys=self.split_labels().unionByName(other.split_labels()),
        )

    def count(self) -> int:
        """Files listed; a Spark count only where the listing did not say."""
        if self.total is not None:
            return self.total
        return self.files.select("path").union(self.too_large.select("path")).count()


def read_images(
    spark: SparkSession,
    uri: str,
    *,
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> Ingested:
    """List images under `uri` (any Hadoop URI) recursively.

    Unreadable files do not fail the scan (`ignoreCorruptFiles`); the pipeline finds them by
    comparing what was listed with what was featurised, and quarantines them with a reason.
    The size filter is pushed into the binaryFile source, so oversized files are never read.
    """
    raw = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", glob_for(extensions))
        .option("ignoreCorruptFiles", "true")
        .option("ignoreMissingFiles", "true")
        .load(uri)
    )
    files = image_rows(raw, F.col("modificationTime"), F.col("content"))
    ok, too_large = split_by_size(files, max_file_bytes)
    local = local_path(uri)
    if local is not None:
        unlisted = unlisted_files(local, extensions)
        if unlisted:
            schema = "path string, reason string, length bigint, modification_time timestamp"
            too_large = too_large.unionByName(spark.createDataFrame(unlisted, schema))
    return Ingested(files=ok, too_large=too_large)


def image_rows(
    listing: DataFrame,
    modification_time: Column,
    content: Column,
    content_hash: Column | None = None,
    local: Column | None = None,
) -> DataFrame:
    """The columns every ingest path yields: path, label, split, length, modification_time,
    content (still lazy: nothing is read until a later stage asks for `content`), and
    `content_hash` where the listing knows the content's version (an object store's ETag).
    A local walk's rows carry `_local` (the file's local path) and a null `content`: the
    featurize stage reads those files itself, everything else through `file_content`."""
    path = F.col("path")
    extra = [] if content_hash is None else [content_hash.alias("content_hash")]
    extra += [] if local is None else [local.alias("_local")]
    return listing.select(
        path.alias("path"),
        label_col(path).alias("label"),
        split_col(path).alias("split"),
        F.col("length"),
        modification_time.alias("modification_time"),
        content.alias("content"),
        *extra,
    )


def split_by_size(files: DataFrame, max_file_bytes: int) -> tuple[DataFrame, DataFrame]:
    """Files to read, and those refused for their size with a reason. On the binaryFile source
    the length filter is pushed down, so refused files are never read."""
    ok = files.where(F.col("length") <= max_file_bytes)
    too_large = files.where(F.col("length") > max_file_bytes).select(
        "path",
        F.concat(
            F.lit("file too large: "),
            F.col("length").cast("string"),
            F.lit(f" bytes exceeds the limit of {max_file_bytes}"),
        ).alias("reason"),
        "length",
        "modification_time",
    )
    return ok, too_large


# What binaryFile lists no row for; walk_local's other refusals are rows Spark reports itself.
SPARK_DROPS = ("empty file", "symlink loop", "broken symlink")


def unlisted_files(root: str, extensions: Iterable[str]) -> list[tuple[Any, ...]]:
    """Local image files Spark's binaryFile scan drops without a word, as quarantine rows
    (path, reason, length, modification_time): the empty files and the broken or looping links
    `walk_local` finds (the same walk, so a folder link to its own ancestor is refused in one
    line here too). Object stores have no symlinks; an empty blob there is still skipped by
    Spark, see docs/reliability.md."""
    _, refused = walk_local(root, extensions)
    return [row for row in refused if row[1].startswith(SPARK_DROPS)]


LISTING_SCHEMA = "path string, _local string, length bigint, modification_time timestamp"
REFUSED_SCHEMA = "path string, reason string, length bigint, modification_time timestamp"


def _readable(path: str) -> str:
    """`path` as UTF-8 text: bytes that are not UTF-8 (kept by Python as surrogates) shown as
    `\\xNN`, so a quarantine row, a log line or Arrow never chokes on them."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def walk_local(
    root: str, extensions: Iterable[str]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every local image file under `root`, whatever its name, as listing rows
    (path, local path, length, modification_time), and the files refused before reading
    (empty, a broken or looping link, not a regular file, a name that is not UTF-8, a folder
    that cannot be listed, a folder reached a second time) as quarantine rows.

    A walk on the driver, not Spark's listing: Spark's file index hides names starting with
    `_` or `.` and Hadoop's `Path` rejects a `:` in a file name (`12:30.jpg`), so files would
    vanish uncounted or fail with a Java trace.

    Folder links: every real folder (by `(st_dev, st_ino)`) is listed once. The real tree is
    walked first, then the folder links it met, each followed only when its target was not
    listed yet; a link to a folder already listed is one quarantine row naming the link (its
    images keep their real path and label). So links between folders can neither multiply
    rows (three folders linked to each other once meant 2^40 paths) nor invent a class named
    after a link. A link to the link's own ancestor still refuses the input in one line.
    Files reached twice: as every real folder is listed once, a file has two rows only when
    it has two names in the folders (a file link or a hard link): each name is an entry a
    person made, listed with its own label, as an image copied there would be.
    """
    exts = tuple("." + e.lower().lstrip(".") for e in extensions)
    refused: list[tuple[Any, ...]] = []
    listed: list[tuple[Any, ...]] = []
    seen: dict[tuple[int, int], str] = {}  # real folder -> the path it is listed under
    links: list[str] = []  # folder links met, followed after the real tree

    def cannot_list(exc: OSError) -> None:
        where = _readable(str(exc.filename))
        refused.append(("file:" + where, f"cannot list folder: {exc.strerror}", None, None))

    def walk(top: str) -> None:
        for folder, dirs, names in os.walk(top, onerror=cannot_list):
            try:
                st = os.stat(folder)
            except OSError as exc:
                cannot_list(exc)
                dirs[:] = []
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:  # reached again below a followed link (e.g. a bind mount)
                dirs[:] = []
                refused.append(_twice(folder, seen[key]))
                continue
            seen[key] = folder
            for name in sorted(dirs):
                link = os.path.join(folder, name)
                if os.path.islink(link):  # os.walk does not descend into it (followlinks off)
                    _check_ancestor(link, folder)
                    links.append(link)
            dirs.sort()
            for name in sorted(names):
                if name.lower().endswith(exts):
                    _stat_file(os.path.join(folder, name), name, listed, refused)

    walk(root)
    while links:
        link = links.pop(0)
        try:
            st = os.stat(link)
        except OSError as exc:
            why = f"cannot follow folder link: {exc.strerror}"
            refused.append(("file:" + _readable(link), why, None, None))
            continue
        if (st.st_dev, st.st_ino) in seen:
            refused.append(_twice(link, seen[(st.st_dev, st.st_ino)]))
        else:
            walk(link)
    return listed, refused


def _twice(folder: str, first: str) -> tuple[Any, ...]:
    """The quarantine row of a folder reached a second time (through a link)."""
    target = os.readlink(folder) if os.path.islink(folder) else os.path.realpath(folder)
    reason = (
        f"folder listed already: {_readable(folder)} -> {_readable(target)} is"
        f" {_readable(first)}, whose images are listed once, there"
    )
    return ("file:" + _readable(folder), reason, None, None)


def _check_ancestor(link: str, folder: str) -> None:
    target, here = os.path.realpath(link), os.path.realpath(folder)
    if here == target or here.startswith(target.rstrip("/") + "/"):
        raise InputError(
            f"symlink loop in the input: {_readable(link)} -> {_readable(os.readlink(link))}"
            " points to a folder above it, so every image below would be listed again and"
            " again; remove the link"
        )


def _stat_file(
    full: str, name: str, listed: list[tuple[Any, ...]], refused: list[tuple[Any, ...]]
) -> None:
    """One image file: a listing row in `listed`, or a quarantine row in `refused`."""
    path = "file:" + _readable(full)
    if not _is_utf8(full):
        reason = "file name is not valid UTF-8 (bytes shown as \\xNN): rename it to read it"
        refused.append((path, reason, None, None))
        return
    try:
        st = os.stat(full)
    except OSError as exc:
        if os.path.islink(full):
            what = "symlink loop" if exc.errno == errno.ELOOP else "broken symlink"
            reason = f"{what}: {name} -> {_readable(os.readlink(full))}"
        else:
            reason = f"cannot stat: {exc.strerror}"
        refused.append((path, reason, None, None))
        return
    mtime = datetime.fromtimestamp(st.st_mtime, tz=UTC)
    if not stat.S_ISREG(st.st_mode):
        refused.append((path, "not a regular file", None, mtime))
    elif st.st_size == 0:
        refused.append((path, "empty file (0 bytes)", 0, mtime))
    else:
        listed.append((path, full, st.st_size, mtime))


def read_local(
    spark: SparkSession,
    uri: str,
    *,
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    max_file_bytes: int = MAX_FILE_BYTES,
    files_per_partition: int = FILES_PER_PARTITION,
) -> Ingested:
    """`read_images` for a local folder: listed by `walk_local`, every file counted; bytes
    are read by the executors' Python only when `content` is used (null when unreadable)."""
    root = local_path(uri)
    assert root is not None, uri
    listed, refused = walk_local(root, extensions)
    parts = max(1, -(-len(listed) // max(1, files_per_partition)))
    # Through pandas and Arrow the listing is a local table in the plan; a list of tuples
    # would be pickled into an RDD (0.7 s more for the 320 sample files, cold).
    columns = ["path", "_local", "length", "modification_time"]
    listing = spark.createDataFrame(pd.DataFrame(listed, columns=columns), LISTING_SCHEMA)
    nothing = F.lit(None).cast("binary")  # read where used: `file_content`, featurize stage
    files = image_rows(listing, F.col("modification_time"), nothing, local=F.col("_local"))
    ok, too_large = split_by_size(files, max_file_bytes)
    if refused:
        too_large = too_large.unionByName(spark.createDataFrame(refused, REFUSED_SCHEMA))
    spread = ok.repartition(parts) if parts > 1 else ok  # ~files_per_partition files per task
    total = len(listed) + len(refused)
    return Ingested(files=spread, too_large=too_large, may_drop=False, total=total, keys=ok)


def read_local_udf(paths: Column) -> Column:
    """Bytes of local files (`read_file` in the executors' Python)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("binary")  # type: ignore[call-overload]
    def read(batch: pd.Series) -> pd.Series:
        return pd.Series([None if n is None else read_file(n) for n in batch], dtype=object)

    return read(paths)


def file_content(files: DataFrame) -> Column:
    """The bytes of each listed file, for any reader: its `content`, or for a local walk's
    rows (`_local`) the file read by the executors' Python."""
    if "_local" not in files.columns:
        return F.col("content")
    return F.coalesce(F.col("content"), read_local_udf(F.col("_local")))


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
        uri: run.io.read_images(
            run.spark, uri, extensions=cfg.extensions, max_file_bytes=cfg.max_file_bytes
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
        got = read[uri]
        files = got.files
        if role == "negatives":
            files = files.withColumn("label", F.lit(NEGATIVE))
        elif label_map is not None and label_map.target:
            files = map_labels(run.spark, files, label_map.target)
        has_val = any(r["source"] == n and r["split"] == "val" for r in present)
        files = with_validation(files, cfg.val_fraction, has_val)
        got = Ingested(files, got.too_large, got.may_drop, got.total)
        found = got if found is None else found.union(got)
    assert found is not None
    total = found.count()
    if total == 0:
        where = ", ".join(run.inputs)
        raise InputError(f"no images under {where} (extensions: {', '.join(cfg.extensions)})")
    log.info("ingest: %d image files listed", total)
    return Ingested(found.files, found.too_large, found.may_drop, total, label_map=label_map)


def check_input(spark: SparkSession, uri: str) -> None:
    """Fail early, in one line, when the input location does not exist."""
    from fruits.spark import Session

    hadoop = Session(spark).hadoop()
    if hadoop is None:  # through Connect, the server's read says what is missing
        return
    jvm, conf = hadoop
    hpath = jvm.org.apache.hadoop.fs.Path(uri)
    try:
        fs = hpath.getFileSystem(conf)
        exists = fs.exists(hpath)
    except Exception as exc:
        raise InputError(f"cannot access input {uri}: {_first_line(exc)}") from None
    if not exists:
        raise InputError(f"input not found: {uri}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
