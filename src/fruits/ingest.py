"""Ingest: list image files with Spark's `binaryFile` source and derive label and split from paths.

Nothing here collects file names to the driver; label and split are Spark SQL expressions.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

SPLIT_NAMES: dict[str, str] = {
    "training": "train",
    "train": "train",
    "test": "test",
    "testing": "test",
    "val": "val",
    "valid": "val",
    "validation": "val",
}


class InputError(ValueError):
    """The input location is missing or holds no image: a user error, reported in one line."""


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
    """Split = the nearest ancestor folder named like Training/Test/val (any case), else `all`."""
    folders = F.slice(F.split(path, "/"), 1, F.size(F.split(path, "/")) - 1)
    mapping = F.create_map(*[F.lit(x) for kv in SPLIT_NAMES.items() for x in kv])
    known = F.filter(F.transform(folders, F.lower), lambda p: p.isin(list(SPLIT_NAMES)))
    nearest = F.element_at(known, -1)
    return F.when(F.size(known) > 0, mapping[nearest]).otherwise(F.lit("all"))


@dataclass(frozen=True)
class Ingested:
    """`files`: every listed image with its bytes still unread (lazy); `too_large`: files we
    refuse to read at all (their size, or a broken or looping symlink), with a reason."""

    files: DataFrame
    too_large: DataFrame


def read_images(
    spark: SparkSession,
    uri: str,
    *,
    extensions: Iterable[str] = ("jpg", "jpeg", "png"),
    max_file_bytes: int = 50 * 1024 * 1024,
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


def image_rows(listing: DataFrame, modification_time: Column, content: Column) -> DataFrame:
    """The columns every ingest path yields: path, label, split, length, modification_time,
    content (still lazy: nothing is read until a later stage asks for `content`)."""
    path = F.col("path")
    return listing.select(
        path.alias("path"),
        label_col(path).alias("label"),
        split_col(path).alias("split"),
        F.col("length"),
        modification_time.alias("modification_time"),
        content.alias("content"),
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


def local_path(uri: str) -> str | None:
    """The local folder behind a bare path or `file:` URI; None for other schemes."""
    if uri.startswith("file:"):
        return "/" + uri[len("file:") :].lstrip("/")
    has_scheme = ":" in uri.split("/", 1)[0]
    return None if has_scheme else os.path.abspath(uri)


def unlisted_files(root: str, extensions: Iterable[str]) -> list[tuple[Any, ...]]:
    """Local image files Spark's scan drops without a word, as quarantine rows
    (path, reason, length, modification_time); found by a walk on the driver.

    Zero-byte files and links to an image that are broken or loop never reach a DataFrame, so
    without this they would vanish instead of being quarantined. A folder link to its own
    ancestor makes the listing follow it until the OS refuses (about 40 levels), listing every
    image below it 40 times: that input is refused in one line, naming the link. (Object stores
    have no symlinks; an empty blob there is still skipped by Spark, see docs/reliability.md.)
    """
    exts = tuple("." + e.lower().lstrip(".") for e in extensions)
    found = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        for name in dirs:  # symlinks to folders are listed here and not followed
            link = os.path.join(folder, name)
            if os.path.islink(link):
                target, here = os.path.realpath(link), os.path.realpath(folder)
                if here == target or here.startswith(target.rstrip("/") + "/"):
                    raise InputError(
                        f"symlink loop in the input: {link} -> {os.readlink(link)} points to a"
                        " folder above it, so every image below would be listed again and again;"
                        " remove the link"
                    )
        for name in names:
            if not name.lower().endswith(exts):
                continue
            full = os.path.join(folder, name)
            try:
                st = os.stat(full)
            except OSError as exc:
                if os.path.islink(full):
                    what = "symlink loop" if exc.errno == errno.ELOOP else "broken symlink"
                    reason = f"{what}: {name} -> {os.readlink(full)}"
                    found.append(("file:" + full, reason, None, None))
                continue
            if st.st_size == 0 and stat.S_ISREG(st.st_mode):
                mtime = datetime.fromtimestamp(st.st_mtime, tz=UTC)
                found.append(("file:" + full, "empty file (0 bytes)", 0, mtime))
    return found


def check_input(spark: SparkSession, uri: str) -> None:
    """Fail early, in one line, when the input location does not exist."""
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    assert jvm is not None
    hpath = jvm.org.apache.hadoop.fs.Path(uri)
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
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
