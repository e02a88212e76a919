"""A local folder walked by Python on the driver, not listed by Spark.

Chosen by `storage.plan.plan_storage` (`--storage auto`) for a local path the JVM could also
open: Spark's file index hides names starting with `_` or `.` and Hadoop rejects a `:` in a
file name, while the walk counts every file (see `walk_local`). Its rows carry the local path
(`_local`) and no bytes: the featurize stage reads them itself, anything else through
`content`. Every listed file ends as a row (`may_drop` False), so re-reading a few paths is
a filter on the listing.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

import pandas as pd  # module level: Spark resolves the UDF's type hints here
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.common import InputError, local_path, read_file
from fruits.config import DEFAULT_EXTENSIONS, FILES_PER_PARTITION, MAX_FILE_BYTES
from fruits.sources.base import (
    READ_WHERE_USED,
    REFUSED_SCHEMA,
    Ingested,
    listing_rows,
    split_by_size,
)


@dataclass(frozen=True)
class LocalSource:
    """One local folder, walked on the driver (`list_local`)."""

    uri: str
    files_per_partition: int = FILES_PER_PARTITION
    mode: ClassVar[str] = "local"
    may_drop: ClassVar[bool] = False

    def check(self, spark: SparkSession) -> None:
        """The folder this process walks must exist (checked here, no JVM needed)."""
        root = local_path(self.uri)
        if root is None or not os.path.isdir(root):
            raise InputError(f"input not found: {self.uri}")

    def read(self, spark: SparkSession, **kwargs: Any) -> Ingested:
        kwargs.setdefault("files_per_partition", self.files_per_partition)
        return list_local(spark, self.uri, **kwargs).owned_by(READ_WHERE_USED)


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


def list_local(
    spark: SparkSession,
    uri: str,
    *,
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    max_file_bytes: int = MAX_FILE_BYTES,
    files_per_partition: int = FILES_PER_PARTITION,
) -> Ingested:
    """A local folder listed by `walk_local`, every file counted; bytes are read by the
    executors' Python only when `content` is used (null when unreadable)."""
    root = local_path(uri)
    assert root is not None, uri
    listed, refused = walk_local(root, extensions)
    parts = max(1, -(-len(listed) // max(1, files_per_partition)))
    # Through pandas and Arrow the listing is a local table in the plan; a list of tuples
    # would be pickled into an RDD (0.7 s more for the 320 sample files, cold).
    columns = ["path", "_local", "length", "modification_time"]
    listing = spark.createDataFrame(pd.DataFrame(listed, columns=columns), LISTING_SCHEMA)
    nothing = F.lit(None).cast("binary")  # read where used: `file_content`, featurize stage
    files = listing_rows(listing, F.col("modification_time"), nothing, local=F.col("_local"))
    ok, too_large = split_by_size(files, max_file_bytes)
    if refused:
        too_large = too_large.unionByName(spark.createDataFrame(refused, REFUSED_SCHEMA))
    spread = ok.repartition(parts) if parts > 1 else ok  # ~files_per_partition files per task
    total = len(listed) + len(refused)
    return Ingested(files=spread, too_large=too_large, may_drop=False, total=total, keys=ok)


def read_local_udf(paths: Column) -> Column:
    """Bytes of local files (`read_file` in the executors' Python)."""
    from pyspark.sql.pandas.functions import pandas_udf  # where it is typed (same object)

    @pandas_udf("binary")  # type: ignore[call-overload, untyped-decorator]  # stubs lack pandas_udf(returnType)
    def read(batch: pd.Series) -> pd.Series:
        return pd.Series([None if n is None else read_file(n) for n in batch], dtype=object)

    return cast(Column, read(paths))  # the UDF is untyped (see above)


def content(files: DataFrame) -> Column:
    """The bytes of each listed file, for any source or a union of them: its `content`, or for
    a local walk's rows (`_local`) the file read by the executors' Python."""
    if "_local" not in files.columns:
        return F.col("content")
    return F.coalesce(F.col("content"), read_local_udf(F.col("_local")))
