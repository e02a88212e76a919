"""What every source shares: the `Source` protocol, the listing it returns (`Ingested`), the
listing row layout and the size rule.

A source lists and reads; it knows nothing of labels, splits or label maps (that is
`fruits.ingest`, which labels the rows every source returns the same way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

if TYPE_CHECKING:
    from fruits.recognition import LabelMap

REFUSED_SCHEMA = "path string, reason string, length bigint, modification_time timestamp"


class Rereader(Protocol):
    """How one part of a listing is read again for a set of its paths (`Ingested.only`)."""

    def reread(self, spark: SparkSession, paths: list[str], listed: DataFrame) -> DataFrame:
        """The rows of `listed` (this part of a listing, any later columns kept) whose path
        is in `paths` (which may name other parts' files too), without reading any other
        file's bytes."""


class Source(Protocol):
    """One input: how it is checked, listed and read (each part it returns names its
    `Rereader`), chosen once by `storage.plan.plan_storage`.

    `may_drop` is the source's drop rule: True where a listed file can vanish without a row
    (Spark's binaryFile with `ignoreCorruptFiles`), so the pipeline must compare what it
    listed with what it featurised; False where every listed file ends as a row."""

    @property
    def mode(self) -> str:
        """`local`, `hadoop` or `fsspec`, as the plan reports it."""

    @property
    def uri(self) -> str:
        """The input as this source opens it (a volume may be respelt)."""

    @property
    def may_drop(self) -> bool: ...

    def check(self, spark: SparkSession) -> None: ...

    def read(self, spark: SparkSession, **kwargs: Any) -> Ingested:
        """The listing (`listing_rows` columns, bytes still unread) and the refused files."""


@dataclass(frozen=True)
class Ingested:
    """`files`: every listed image with its bytes still unread (lazy); `too_large`: files we
    refuse to read at all (their size, or a broken or looping symlink), with a reason.

    `may_drop`: some source of it can lose a listed file without a row (see `Source`), so the
    pipeline must compare the listing with what it featurised.
    `keys`: `files`' (split, label) where a reader can scan them more cheaply than `files`
    (a local walk: the listing before it is spread over one task per 256 files, 4x faster
    for 20,000 files).
    `parts`: (how it is re-read, its rows of `files`) per part, so each source re-reads its
    own (`only`).
    """

    files: DataFrame
    too_large: DataFrame
    may_drop: bool = True
    total: int | None = None  # files listed (usable + refused), when the listing knows it
    keys: DataFrame | None = None
    label_map: LabelMap | None = None  # the merged `--label-map` files, read by read_sources
    parts: tuple[tuple[Rereader, DataFrame], ...] = field(default=(), compare=False)

    def owned_by(self, rereader: Rereader) -> Ingested:
        """This listing as one part, re-read by `rereader` (what a source's `read` returns)."""
        return replace(self, parts=((rereader, self.files),))

    def split_labels(self) -> DataFrame:
        """(split, label) of every usable listed file, for what-is-present questions."""
        return (self.keys if self.keys is not None else self.files).select("split", "label")

    def map_rows(self, fn: Callable[[DataFrame], DataFrame], *, keys: bool = True) -> Ingested:
        """The same listing with its rows transformed row by row (labels, splits): `files`,
        each source's part (so a re-read keeps the new columns) and, with `keys`, the keys
        (else dropped: `files` answers for them)."""
        parts = tuple((source, fn(rows)) for source, rows in self.parts)
        new_keys = fn(self.keys) if keys and self.keys is not None else None
        return replace(self, files=fn(self.files), keys=new_keys, parts=parts)

    def union(self, other: Ingested) -> Ingested:
        both = None if self.total is None or other.total is None else self.total + other.total
        return Ingested(
            files=self.files.unionByName(other.files, allowMissingColumns=True),
            too_large=self.too_large.unionByName(other.too_large),
            may_drop=self.may_drop or other.may_drop,
            total=both,
            keys=self.split_labels().unionByName(other.split_labels()),
            parts=self.parts + other.parts,
        )

    def count(self) -> int:
        """Files listed; a Spark count only where the listing did not say."""
        if self.total is not None:
            return self.total
        return self.files.select("path").union(self.too_large.select("path")).count()

    def only(self, spark: SparkSession, paths: list[str]) -> DataFrame:
        """The listed files `paths` only, with `files`' columns, each source re-reading its
        own (`Source.reread`): unchanged files are never read. A listing without sources
        (made by hand) filters its rows before any byte is read."""
        if not paths:
            return self.files.limit(0)
        if not self.parts:
            return semi_join(spark, self.files, paths)
        got = self.files.limit(0)
        for source, rows in self.parts:  # each is handed every path and keeps its own
            part = source.reread(spark, paths, rows)
            got = got.unionByName(part, allowMissingColumns=True)
        return got.select(*self.files.columns)


class ReadWhereUsed:
    """The re-read of a listing whose bytes are read where they are used (a column expression
    or a later read: a local walk, fsspec's UDF) or were read while listing (the files Spark's
    listing hides, read on the driver): a filter on the listing reads nothing else."""

    def reread(self, spark: SparkSession, paths: list[str], listed: DataFrame) -> DataFrame:
        return semi_join(spark, listed, paths)


READ_WHERE_USED = ReadWhereUsed()


def semi_join(spark: SparkSession, files: DataFrame, paths: list[str]) -> DataFrame:
    """`files` whose path is in `paths`: for listings whose bytes are read where used (a
    column expression or a later read), the filter runs before any byte is read."""
    wanted = spark.createDataFrame([(p,) for p in paths], "path string")
    return files.join(F.broadcast(wanted), "path", "left_semi")


def listing_rows(
    listing: DataFrame,
    modification_time: Column,
    content: Column,
    content_hash: Column | None = None,
    local: Column | None = None,
) -> DataFrame:
    """The columns every source yields: path, length, modification_time, content (still
    lazy: nothing is read until a later stage asks for `content`), and `content_hash` where
    the listing knows the content's version (an object store's ETag). A local walk's rows
    carry `_local` (the file's local path) and a null `content`: the featurize stage reads
    those files itself, everything else through `sources.content`."""
    extra = [] if content_hash is None else [content_hash.alias("content_hash")]
    extra += [] if local is None else [local.alias("_local")]
    return listing.select(
        F.col("path").alias("path"),
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
