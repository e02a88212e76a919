"""Spark's Hadoop FileSystem through the driver JVM: the store, the reader and the output of
any URI the cluster has a connector for.

Spark writes DataFrames itself; `HadoopStore` moves driver-made files (report, plots, models)
and renames directories through Hadoop's FileSystem API, so local paths, `abfss://`, `s3a://`
and `dbfs:/` behave the same wherever the cluster has the connector.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pyspark.sql import SparkSession

from fruits import azure
from fruits.spark import Session

if TYPE_CHECKING:
    from fruits.storage.base import Store


class HadoopStore:
    """Hadoop FileSystem through the driver JVM: whatever schemes the cluster can read."""

    def __init__(self, spark: SparkSession) -> None:
        hadoop = Session(spark).hadoop()
        if hadoop is None:
            raise ValueError("HadoopStore needs the driver's JVM; through Spark Connect use fsspec")
        self._jvm, self._conf = hadoop

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

    def exchange(self, a: str, b: str) -> bool:
        """Swap two local folders in one step (Linux `renameat2(RENAME_EXCHANGE)`), so the
        publish never leaves a moment without an output; False where that is not available
        (another file system, another OS, an old kernel), and the caller renames twice."""
        one, two = self._local_file(a), self._local_file(b)
        if one is None or two is None:
            return False
        return exchange_local(one, two)

    def put(self, local: str | Path, uri: str) -> None:
        """Copy a driver-made file or folder to `uri`; a full disk is one plain `OSError`
        naming the destination (Py4J's own error is a page of Java frames)."""
        fs, p = self._path(uri)
        try:
            fs.copyFromLocalFile(False, True, self._jvm.org.apache.hadoop.fs.Path(str(local)), p)
        except Exception as exc:
            if "no space left" in str(exc).lower():
                raise OSError(f"no space left on the device holding {uri}") from None
            raise

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

    def _local_file(self, uri: str) -> str | None:
        """The local path of a `file:` URI (None elsewhere): the lease's files are made by the
        OS there, because Hadoop's local `create(overwrite=false)` checks then opens, which
        lets two simultaneous creators both succeed."""
        fs, p = self._path(uri)
        if str(fs.getUri().getScheme()) != "file":
            return None
        return str(fs.makeQualified(p).toUri().getPath())

    @staticmethod
    def _drop_checksum(path: str) -> None:
        """Hadoop's `.NAME.crc` beside a file written natively would fail Hadoop's reads."""
        head, name = os.path.split(path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(head, f".{name}.crc"))

    def write_text(self, uri: str, text: str) -> None:
        """Replace `uri` with `text` (the lease's heartbeat); on local disk by an atomic
        rename, so a reader never finds the file empty."""
        local = self._local_file(uri)
        if local is not None:
            tmp = f"{local}.{os.getpid()}-{threading.get_ident()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            self._drop_checksum(local)
            os.replace(tmp, local)
            return
        fs, p = self._path(uri)
        out = fs.create(p, True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()

    def modified(self, uri: str) -> float | None:
        """Seconds since the epoch of the last write, None when `uri` is missing."""
        fs, p = self._path(uri)
        if not fs.exists(p):
            return None
        return float(fs.getFileStatus(p).getModificationTime()) / 1000.0

    def create_new(self, uri: str, text: str) -> bool:
        """Create `uri` holding `text` unless it exists (False then): the lease primitive.
        `create(overwrite=false)` is atomic on HDFS and ADLS Gen2 (hierarchical namespace);
        on local disk `O_EXCL` is."""
        local = self._local_file(uri)
        if local is not None:
            os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
            try:
                fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            self._drop_checksum(local)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return True
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


def exchange_local(a: str, b: str) -> bool:
    """`renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)`: True once swapped."""
    if sys.platform != "linux":
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    call = getattr(libc, "renameat2", None)
    if call is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = call(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if done == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (38, 22, 95):  # ENOSYS, EINVAL (file system without it), EOPNOTSUPP
        return False
    raise OSError(errno, f"could not swap {a} and {b}: {os.strerror(errno)}")


def hadoop_can_open(spark: SparkSession, uri: str) -> bool:
    """Does the driver JVM have a Hadoop FileSystem for this URI's scheme? Through Spark
    Connect there is no JVM to ask: the server is trusted to read what it is given (Databricks
    reads abfss:// and dbfs:/ natively), and its own error says otherwise."""
    scheme = azure.scheme_of(uri)
    hadoop = Session(spark).hadoop()
    if scheme in ("", "file") or hadoop is None:
        return True
    jvm, conf = hadoop
    try:
        jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(scheme, conf)
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class HadoopTarget:
    """An output Spark writes and publishes in place: nothing is left to do after the publish."""

    uri: str
    mode: ClassVar[str] = "hadoop"

    @property
    def work_output(self) -> str:
        return self.uri

    def out_store(self, spark: SparkSession) -> Store:
        """The JVM's FileSystem; a Spark Connect client has no JVM and reaches the output
        through fsspec (a local folder when the server runs on this machine, else a cloud
        URI fsspec opens: abfss:// with adlfs)."""
        if Session(spark).hadoop() is None:
            from fruits.storage.base import split_parent
            from fruits.storage.fsspec import FsspecStore, locate

            return FsspecStore(locate(split_parent(self.uri)[0]))
        return HadoopStore(spark)

    def finish(self, run_id: str) -> None:
        """Nothing to upload: the publish already put the run at `uri`."""

    def cleanup(self) -> None:
        """No temporary folder to remove."""
