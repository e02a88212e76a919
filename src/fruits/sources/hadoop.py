"""Spark's binaryFile source: any URI the cluster has a Hadoop connector for (local paths,
`abfss://`, `s3a://`, `dbfs:/`, Unity Catalog volumes as `dbfs:/Volumes/...`), listed and read
on the executors.

Its drop rule: with `ignoreCorruptFiles` a file that cannot be read vanishes without a row
(`may_drop`), so the pipeline compares the listing with what it featurised. Spark's listing
hides names starting with `_` or `.` and cannot open names with `:`: those are found by
Hadoop's own listing on the driver (`skipped_files`). Re-reading a few paths names them to
binaryFile (`read_paths`), because a filter on the listing would read every file's bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.common import InputError, local_path
from fruits.config import DEFAULT_EXTENSIONS, MAX_FILE_BYTES
from fruits.sources.base import (
    READ_WHERE_USED,
    REFUSED_SCHEMA,
    Ingested,
    listing_rows,
    semi_join,
    split_by_size,
)
from fruits.sources.local import unlisted_files
from fruits.spark import Session

GLOB_CHARS = "\\*?[]{}"


def glob_for(extensions: Iterable[str]) -> str:
    """A case-insensitive Hadoop glob (`*.{[jJ][pP][gG],...}`), so the filter runs while listing."""

    def ci(ext: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext)

    exts = sorted({e.lower().lstrip(".") for e in extensions})
    if not exts:
        raise ValueError("at least one image extension is required")
    return "*.{" + ",".join(ci(e) for e in exts) + "}"


@dataclass(frozen=True)
class HadoopSource:
    """Spark's binaryFile source (`list_binary`): listed and read on the executors."""

    uri: str
    mode: ClassVar[str] = "hadoop"
    may_drop: ClassVar[bool] = True  # binaryFile with ignoreCorruptFiles

    def check(self, spark: SparkSession) -> None:
        check_input(spark, self.uri)  # through Connect: nothing (the server's read says)

    def reread(self, spark: SparkSession, paths: list[str], listed: DataFrame) -> DataFrame:
        """binaryFile fails on a path it cannot find, so only this listing's own paths are
        named to it: found by a filter on the listing's `path` column (no bytes read)."""
        mine = [r[0] for r in semi_join(spark, listed.select("path"), paths).collect()]
        return read_paths(spark, mine, listed) if mine else listed.limit(0)

    def read(self, spark: SparkSession, **kwargs: Any) -> Ingested:
        """Spark's listing, completed by the files it hides (see `skipped_files`): those are
        read on the driver and get the same columns, so every file ends as a row. They form
        their own part (`READ_WHERE_USED`): re-read from the listing, never named to binaryFile,
        which drops a hidden name and fails on a `:`."""
        got = list_binary(spark, self.uri, **kwargs)
        if Session(spark).hadoop() is None:  # Connect: no JVM here to list with
            return got.owned_by(self)
        extensions = kwargs.get("extensions", DEFAULT_EXTENSIONS)
        max_file_bytes = kwargs.get("max_file_bytes", MAX_FILE_BYTES)
        extra, refused, colons = skipped_files(spark, self.uri, extensions, max_file_bytes)
        if not (extra or refused):
            return got.owned_by(self)
        files = got.files.where(~F.col("path").isin(colons)) if colons else got.files
        listing = spark.createDataFrame(extra, SKIPPED_SCHEMA)
        rows = listing_rows(listing, F.col("modificationTime"), F.col("content"))
        ok, too_large = split_by_size(rows, max_file_bytes)
        too_large = got.too_large.unionByName(too_large)
        if refused:
            too_large = too_large.unionByName(spark.createDataFrame(refused, REFUSED_SCHEMA))
        parts = ((self, files), (READ_WHERE_USED, ok))
        return Ingested(files.unionByName(ok), too_large, may_drop=got.may_drop, parts=parts)


SKIPPED_SCHEMA = "path string, modificationTime timestamp, length bigint, content binary"
SKIPPED_READ_BYTES = 1 << 30  # what the driver reads itself of the files Spark's listing hides


def spark_hides(name: str) -> bool:
    """Spark's file index rule (`PartitioningAwareFileIndex.shouldFilterOutPathName`)."""
    exclude = (name.startswith("_") and "=" not in name) or name.startswith(".")
    exclude = exclude or name.endswith("._COPYING_")
    return exclude and not name.startswith(("_common_metadata", "_metadata"))


def skipped_files(
    spark: SparkSession, uri: str, extensions: Any, max_file_bytes: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[str]]:
    """The image files below `uri` that Spark's binaryFile listing loses, found by Hadoop's own
    recursive listing (which hides nothing): names or folders starting with `_` or `.`, which
    Spark skips without a word, and names with `:`, which it lists but cannot open (Hadoop's
    `Path` parses them as a URI). The local walk (`ingest.walk_local`) counts all of these.

    Returns rows to featurise (path, modificationTime, length, content: read here on the
    driver through the listed `Path`, up to `SKIPPED_READ_BYTES` in all), quarantine rows for
    the rest (path, reason, length, modification_time), and the `:` paths Spark did list.
    A recursive listing on the driver: one JVM call per file, the price of counting them all.
    """
    exts = tuple("." + str(e).lower().lstrip(".") for e in extensions)
    hadoop = Session(spark).hadoop()
    assert hadoop is not None, "skipped_files lists through the driver's JVM"
    jvm, conf = hadoop
    root = jvm.org.apache.hadoop.fs.Path(uri)
    fs = root.getFileSystem(conf)
    prefix = str(fs.makeQualified(root).toString()).rstrip("/") + "/"
    extra: list[tuple[Any, ...]] = []
    refused: list[tuple[Any, ...]] = []
    colons: list[str] = []
    budget = SKIPPED_READ_BYTES
    # local disk: without the checksum layer, which would look for `.a:b.jpg.crc` and fail
    raw = fs.getRawFileSystem() if str(fs.getUri().getScheme()) == "file" else fs
    found = fs.listFiles(root, True)
    while found.hasNext():
        status = found.next()
        path = status.getPath()
        text = str(path.toString())
        rel = text[len(prefix) :] if text.startswith(prefix) else text.rpartition("/")[2]
        parts = rel.split("/")
        if not parts[-1].lower().endswith(exts):
            continue
        hidden = any(spark_hides(part) for part in parts)
        colon = ":" in rel
        if not (hidden or colon):
            continue
        if colon and not hidden:
            colons.append(text)
        length = int(status.getLen())
        when = datetime.fromtimestamp(status.getModificationTime() / 1000.0, tz=UTC)
        if length > max_file_bytes:
            extra.append((text, when, length, None))  # refused for its size by split_by_size
        elif length <= budget:
            try:
                content = _read_all(raw, path)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or ["unknown error"])[0]
                refused.append((text, f"cannot read: {first}", length, when))
                continue
            budget -= length
            extra.append((text, when, length, content))
        else:
            why = (
                "hidden from Spark's listing (a name starting with '_' or '.') and more than"
                f" {SKIPPED_READ_BYTES} bytes of such files: rename them, or use --storage auto"
            )
            refused.append((text, why, length, when))
    return extra, refused, colons


def _read_all(fs: Any, path: Any) -> bytes:
    stream = fs.open(path)
    try:
        return bytes(stream.readAllBytes())
    finally:
        stream.close()


def list_binary(
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
    files = listing_rows(raw, F.col("modificationTime"), F.col("content"))
    ok, too_large = split_by_size(files, max_file_bytes)
    local = local_path(uri)
    if local is not None:
        unlisted = unlisted_files(local, extensions)
        if unlisted:
            too_large = too_large.unionByName(spark.createDataFrame(unlisted, REFUSED_SCHEMA))
    return Ingested(files=ok, too_large=too_large)


def check_input(spark: SparkSession, uri: str) -> None:
    """Fail early, in one line, when the input location does not exist."""
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


def read_paths(spark: SparkSession, paths: list[str], listed: DataFrame) -> DataFrame:
    """The listed files `paths` only, with `listed`'s columns: unchanged files are never read.

    A semi-join against the full listing would read every file's bytes before joining; an
    explicit path list makes Spark open only these files (globbing disabled by escaping). Every
    column but the bytes comes from the listing (`listed`, bytes not selected, so not read),
    where ingest already applied the label map, the negatives' label and the validation split.
    """
    raw = (
        spark.read.format("binaryFile")
        .option("ignoreCorruptFiles", "true")
        .option("ignoreMissingFiles", "true")
        .load([escape_glob(p) for p in paths])
        .select("path", "content")
    )
    meta = semi_join(spark, listed.drop("content"), paths)
    return meta.join(raw, "path").select(*listed.columns)


def escape_glob(path: str) -> str:
    """Hadoop treats `*?[]{}` in a load path as a glob; file names may contain them."""
    return "".join("\\" + c if c in GLOB_CHARS else c for c in path)
