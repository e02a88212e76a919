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
    def is_file(self, uri: str) -> bool: ...
    def read_text(self, uri: str) -> str: ...
    def create_new(self, uri: str, text: str) -> bool: ...


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

    def is_file(self, uri: str) -> bool:
        fs, p = self._path(uri)
        return bool(fs.exists(p)) and bool(fs.getFileStatus(p).isFile())

    def read_text(self, uri: str) -> str:
        fs, p = self._path(uri)
        stream = fs.open(p)
        try:
            reader = self._jvm.java.io.BufferedReader(
                self._jvm.java.io.InputStreamReader(stream, "UTF-8")
            )
            lines = []
            line = reader.readLine()
            while line is not None:
                lines.append(line)
                line = reader.readLine()
            return "\n".join(lines)
        finally:
            stream.close()

    def create_new(self, uri: str, text: str) -> bool:
        """Create `uri` holding `text` unless it exists (False then): the lease primitive.
        `create(overwrite=false)` is atomic on HDFS and ADLS Gen2 (hierarchical namespace)."""
        fs, p = self._path(uri)
        try:
            out = fs.create(p, False)
        except Exception as exc:
            if "FileAlreadyExists" in str(exc) or fs.exists(p):
                return False
            raise
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()
        return True


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


MARKER = "_SUCCESS.json"  # written last: an output without it is not a finished run


def publish(store: Store, staging: str, output: str, run_id: str) -> None:
    """Swap the finished staging folder into place (the caller holds the output's lease).

    On local disk, HDFS and ADLS Gen2 a folder rename is atomic, so a reader sees the old
    complete output or the new one; a kill between the two renames leaves no output but
    `.NAME.old-RUNID` with the previous complete run, which `recover` (run by the next writer)
    renames back. On blob stores a "rename" is a copy: `FsspecStore.rename` copies the marker
    last and deletes the source's marker first, so a half-copied folder never looks finished.
    """
    parent, name = split_parent(output)
    old = join(parent, f".{name}.old-{run_id}")
    if store.exists(output):
        store.rename(output, old)
    store.rename(staging, output)
    store.delete(old)


def recover(store: Store, output: str) -> str | None:
    """Undo what a killed run left, under the output's lease (no other run writes here).

    If the output has no marker but a `.NAME.old-*` folder from an interrupted publish has one,
    the previous complete output is put back. Left-over staging and old folders are removed.
    Returns the restored folder's name, if any.
    """
    parent, name = split_parent(output)
    prefix = f".{name}."
    leftovers = [
        e.rstrip("/")
        for e in store.list(parent)
        if e.rstrip("/").rpartition("/")[2].startswith(prefix)
        and (".staging-" in e or ".old-" in e)
    ]
    restored = None
    if not store.exists(join(output, MARKER)):
        for entry in leftovers:
            if ".old-" in entry and store.exists(join(entry, MARKER)):
                if store.exists(output):
                    store.delete(output)  # a half-copied output without its marker
                store.rename(entry, output)
                restored = entry
                log.warning("restored the previous complete output from %s", entry)
                break
    for entry in leftovers:
        if entry != restored:
            log.info("removing leftover %s of a killed run", entry)
            store.delete(entry)
    return restored


def quietly(fn: Any) -> None:
    """Clean-up that must not hide the error being raised: failures are logged at debug."""
    try:
        fn()
    except Exception:
        log.debug("clean-up failed", exc_info=True)
