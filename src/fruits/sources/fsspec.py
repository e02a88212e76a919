"""Azure (or any fsspec) inputs when Spark itself cannot open them, e.g. a laptop without the
hadoop-azure connector: listed by fsspec on the driver (one listing call, sizes, times and the
content version included), read on the executors by a pandas UDF, giving the same columns as
the binaryFile source.

Its drop rule: a file that cannot be read gets a null `content` (reported as unreadable by the
featurize stage), never a missing row (`may_drop` False); so re-reading a few paths is a filter
on the listing, before the UDF reads any byte. Credentials reach executors inside the UDF's
closure (pickled with the task), never through Spark conf, and their `repr` is redacted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fruits import azure
from fruits.common import InputError
from fruits.config import DEFAULT_EXTENSIONS, FILES_PER_PARTITION, MAX_FILE_BYTES
from fruits.sources.base import READ_WHERE_USED, Ingested, listing_rows, split_by_size
from fruits.spark import Session
from fruits.storage.fsspec import FsSpec, Location, _mtime, locate

log = logging.getLogger(__name__)

LISTING_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType(), False),
        T.StructField("_fs_path", T.StringType(), False),
        T.StructField("length", T.LongType(), False),
        T.StructField("modification_time", T.TimestampType(), True),
        T.StructField("content_hash", T.StringType(), True),
    ]
)


def content_version(info: dict[str, Any]) -> str | None:
    """The store's own version of a file's content, free with the listing: Azure's ETag
    changes on every write, even one that keeps the size and the second of modification."""
    etag = info.get("etag") or info.get("ETag")
    return f"etag:{str(etag).strip(chr(34))}" if etag else None


def list_files(
    location: Location, extensions: Iterable[str]
) -> list[tuple[str, str, int, datetime | None, str | None]]:
    """(uri, fsspec path, size, modification time, content version) of every image below
    `location`."""
    exts = tuple("." + e.lower().lstrip(".") for e in extensions)
    fs = location.fs()
    found = fs.find(location.root, detail=True)
    rows = []
    for name, info in sorted(found.items()):
        if info.get("type") == "directory" or not name.lower().endswith(exts):
            continue
        size = int(info.get("size") or 0)
        rows.append((location.to_uri(name), name, size, _mtime(info), content_version(info)))
    return rows


def list_fsspec(
    spark: SparkSession,
    uri: str,
    *,
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    max_file_bytes: int = MAX_FILE_BYTES,
    files_per_partition: int = FILES_PER_PARTITION,
    location: Location | None = None,
) -> Ingested:
    """The binaryFile source's listing for fsspec locations: same columns, same size rule.

    Bytes are read only when `content` is used (a pandas UDF, so counting files reads
    nothing); a file that cannot be read gets a null `content`, which the featurizer reports
    as unreadable.
    """
    location = location or locate(uri)
    rows = list_files(location, extensions)
    parts = max(1, math.ceil(len(rows) / max(1, files_per_partition)))
    listing = Session(spark).dataframe(rows, LISTING_SCHEMA, parts)
    reader = content_udf(location.spec)
    files = listing_rows(
        listing, F.col("modification_time"), reader(F.col("_fs_path")), F.col("content_hash")
    )
    ok, too_large = split_by_size(files, max_file_bytes)
    return Ingested(files=ok, too_large=too_large, may_drop=False)


def content_udf(spec: FsSpec) -> Any:
    """A pandas UDF fsspec path -> bytes (null when unreadable), one client per worker; the
    batch is fetched concurrently where the file system supports it (adlfs does)."""
    from pyspark.sql.pandas.functions import pandas_udf  # where it is typed (same object)

    @pandas_udf(T.BinaryType())  # type: ignore[call-overload, untyped-decorator]  # stubs lack pandas_udf(returnType)
    def read(paths: pd.Series) -> pd.Series:
        fs = spec.open()
        names = list(paths)
        try:  # cat_ranges, not cat: cat expands globs, so `x[1].jpg` matched nothing
            values = fs.cat_ranges(names, None, None, on_error="return")
            got = dict(zip(names, values, strict=True))
        except Exception:
            got = {}
            for name in names:
                try:
                    got[name] = fs.cat_file(name)
                except Exception as exc:
                    got[name] = exc
        out: list[bytes | None] = []
        for name in names:
            value = got.get(name)
            if isinstance(value, (bytes, bytearray)):
                out.append(bytes(value))
            else:
                log.warning("could not read %s: %s", name, azure.redact(value))
                out.append(None)
        return pd.Series(out, dtype=object)

    return read


@dataclass(frozen=True)
class FsspecSource:
    """An input Spark cannot open: listed by fsspec on the driver, read by a pandas UDF."""

    uri: str
    files_per_partition: int = FILES_PER_PARTITION
    mode: ClassVar[str] = "fsspec"
    may_drop: ClassVar[bool] = False  # an unreadable file is a row with null content

    def check(self, spark: SparkSession) -> None:
        check_fsspec_input(self.uri)

    def read(self, spark: SparkSession, **kwargs: Any) -> Ingested:
        kwargs.setdefault("files_per_partition", self.files_per_partition)
        return list_fsspec(spark, self.uri, **kwargs).owned_by(READ_WHERE_USED)


def check_fsspec_input(uri: str) -> None:
    """Before any work: the input exists and the credentials open it, in one line."""
    loc = azure.parse_uri(uri) if azure.is_azure_uri(uri) else None
    account = None
    try:
        location = locate(uri)
        account = location.spec.credentials.account if location.spec.credentials else None
        fs = location.fs()
        exists = fs.exists(location.root)
    except azure.AzureError as exc:
        raise InputError(f"cannot access input: {exc}") from None
    except Exception as exc:
        raise InputError(f"cannot access input: {azure.explain(exc, loc, account)}") from None
    if not exists and loc is not None and not fs.exists(loc.container):
        raise InputError(f"input container {loc.container!r} not found ({uri})")
    if not exists:
        raise InputError(f"input not found: {azure.redact(uri)}")
