"""Storage: the few file-system operations the pipeline needs, on any Hadoop URI, and the
staging-then-publish protocol that keeps half-written runs from looking complete.

Spark writes DataFrames itself; this module moves driver-made files (report, plots, models)
and renames directories through Hadoop's FileSystem API, so local paths, `abfss://`, `s3a://`
and `dbfs:/` behave the same wherever the cluster has the connector.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any, Protocol

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


class Store(Protocol):
    """What the pipeline asks of a file system."""

    def exists(self, uri: str) -> bool: ...
    def delete(self, uri: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def put(self, local: str | Path, uri: str) -> None: ...
    def get(self, uri: str, local: str | Path) -> None: ...
    def list(self, uri: str) -> list[str]: ...


class HadoopStore:
    """Hadoop FileSystem through the driver JVM: whatever schemes the cluster can read."""

    def __init__(self, spark: SparkSession) -> None:
        self._jvm: Any = spark.sparkContext._jvm  # type: ignore[attr-defined]
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]

    def _path(self, uri: str) -> tuple[Any, Any]:
        p = self._jvm.org.apache.hadoop.fs.Path(uri)
        return p.getFileSystem(self._conf), p

    def exists(self, uri: str) -> bool:
        fs, p = self._path(uri)
        return bool(fs.exists(p))

    def delete(self, uri: str) -> None:
        fs, p = self._path(uri)
        if fs.exists(p):
            fs.delete(p, True)

    def rename(self, src: str, dst: str) -> None:
        fs, s = self._path(src)
        _, d = self._path(dst)
        parent = d.getParent()
        if parent is not None and not fs.exists(parent):
            fs.mkdirs(parent)
        if not fs.rename(s, d):
            raise OSError(f"could not rename {src} to {dst}")

    def put(self, local: str | Path, uri: str) -> None:
        fs, p = self._path(uri)
        fs.copyFromLocalFile(False, True, self._jvm.org.apache.hadoop.fs.Path(str(local)), p)

    def get(self, uri: str, local: str | Path) -> None:
        fs, p = self._path(uri)
        fs.copyToLocalFile(False, p, self._jvm.org.apache.hadoop.fs.Path(str(local)), True)

    def list(self, uri: str) -> list[str]:
        fs, p = self._path(uri)
        if not fs.exists(p):
            return []
        return [str(s.getPath().toString()) for s in fs.listStatus(p)]


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[x.strip("/") for x in parts]])


def split_parent(uri: str) -> tuple[str, str]:
    """`abfss://c@a/x/out` -> (`abfss://c@a/x`, `out`); works for bare local paths too."""
    stripped = uri.rstrip("/")
    head, _, name = stripped.rpartition("/")
    if not name:
        raise ValueError(f"output must name a folder, got {uri!r}")
    if head.endswith(":") or head.endswith(":/"):  # e.g. "dbfs:/out" or "file:///out"
        head += "/"
    if not head:
        head = "/" if stripped.startswith("/") else "."
    return head, name


def staging_uri(output: str, run_id: str) -> str:
    """A sibling of the output, so the final publish is a rename on the same file system."""
    parent, name = split_parent(output)
    return join(parent, f".{name}.staging-{run_id}")


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def publish(store: Store, staging: str, output: str, run_id: str) -> None:
    """Swap the finished staging folder into place.

    A reader sees the old complete output or the new complete one; `_SUCCESS.json` is written
    last inside staging, so an output without it is never a finished run. Left-over staging
    folders of killed runs are removed here.
    """
    parent, name = split_parent(output)
    old = join(parent, f".{name}.old-{run_id}")
    if store.exists(output):
        store.rename(output, old)
    store.rename(staging, output)
    store.delete(old)
    prefix = f".{name}."
    for entry in store.list(parent):
        base = entry.rstrip("/").rpartition("/")[2]
        if base.startswith(prefix) and (".staging-" in base or ".old-" in base):
            log.info("removing leftover %s", entry)
            store.delete(entry)
