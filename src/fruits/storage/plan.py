"""The storage plan: a reader per input and an output, chosen once per run.

`plan_storage` turns `--storage auto|hadoop|fsspec` and each location into objects (a
source (`fruits.sources`: `LocalSource`, `HadoopSource` or `FsspecSource`) per input, a
`hadoop.HadoopTarget` or `fsspec.FsspecTarget` for the output); the pipeline only calls the
plan's methods, which hand over to the chosen objects, so no caller compares mode names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from pyspark.sql import SparkSession

from fruits import azure
from fruits.common import local_path
from fruits.config import FILES_PER_PARTITION
from fruits.sources import Ingested, Source
from fruits.sources.fsspec import FsspecSource
from fruits.sources.hadoop import HadoopSource
from fruits.sources.local import LocalSource
from fruits.storage.base import Target
from fruits.storage.fsspec import FsspecTarget
from fruits.storage.hadoop import HadoopTarget, hadoop_can_open

log = logging.getLogger(__name__)

StorageMode = Literal["auto", "hadoop", "fsspec"]


def volume_path(uri: str) -> str | None:
    """`/Volumes/<catalog>/<schema>/<volume>/...` for a Unity Catalog volume path, bare or
    `dbfs:`-prefixed; None for any other URI (a bare `/Volumes/disk` is a macOS mount)."""
    if uri[:5].lower() == "dbfs:":
        uri = "/" + uri[5:].lstrip("/")  # dbfs:/Volumes and dbfs:///Volumes
    parts = uri.split("/")
    if len(parts) < 5 or parts[:2] != ["", "Volumes"] or not all(parts[2:5]):
        return None
    return uri.rstrip("/")


def choose(spark: SparkSession, mode: StorageMode, uri: str) -> tuple[str, str]:
    """('hadoop'|'fsspec', the URI to use): Azure URIs go to Hadoop as `abfss://`; Unity
    Catalog volumes as `dbfs:/Volumes/...` where the JVM has a `dbfs` FileSystem (Databricks),
    so Spark lists them on the executors, else as the local folder they are elsewhere."""
    is_az = azure.is_azure_uri(uri)
    volume = volume_path(uri)
    if volume is not None:
        if mode != "fsspec" and hadoop_can_open(spark, "dbfs:/"):
            return "hadoop", "dbfs:" + volume
        return ("fsspec" if mode == "fsspec" else "hadoop"), volume
    if mode == "fsspec":
        return "fsspec", uri
    if is_az:
        if mode == "auto" and not hadoop_can_open(spark, "abfss://"):
            return "fsspec", uri
        if azure.scheme_of(uri) in azure.HADOOP_SCHEMES:
            return "hadoop", uri
        loc = azure.parse_uri(uri)  # az:// and https:// spell the account differently
        return "hadoop", loc.abfss(loc.account or azure.resolve_credentials(loc).account)
    if mode == "hadoop" or hadoop_can_open(spark, uri):
        return "hadoop", uri
    return "fsspec", uri


def same_input(planned: str, uri: str) -> bool:
    """Is `planned` the input the user named `uri`? A volume may be planned under its other
    spelling (`/Volumes/...` <-> `dbfs:/Volumes/...`)."""
    return planned == uri or (volume_path(planned) or planned) == (volume_path(uri) or uri)


def planned_input(inputs: list[tuple[str, str]], uri: str) -> tuple[str, str]:
    """The (mode, URI) `plan_storage` chose for the input the user named `uri`."""
    for mode, planned in inputs:
        if same_input(planned, uri):
            return mode, planned
    raise KeyError(uri)


@dataclass
class StoragePlan:
    """Where the pipeline reads and writes, and what happens at publish time; chosen once.

    `readers`: one per source: `local` (a walk on the driver, see sources.local), `hadoop`
    (Spark's binaryFile source) or `fsspec`. `target.work_output` is where the pipeline
    writes and publishes: the output itself with Hadoop, a local temporary folder with fsspec,
    uploaded to `output` by `finish`.
    """

    readers: list[Source]
    target: Target

    @property
    def inputs(self) -> list[tuple[str, str]]:
        """(mode, URI) per source, in the order given."""
        return [(reader.mode, reader.uri) for reader in self.readers]

    @property
    def output(self) -> str:
        return self.target.uri

    @property
    def output_mode(self) -> str:
        return self.target.mode

    @property
    def work_output(self) -> str:
        return self.target.work_output

    def check_input(self, spark: SparkSession) -> None:
        for reader in self.readers:
            reader.check(spark)

    def reader_for(self, uri: str) -> Source:
        """The reader planned for the input the user named `uri` (either volume spelling)."""
        for reader in self.readers:
            if same_input(reader.uri, uri):
                return reader
        raise KeyError(uri)

    def read_images(self, spark: SparkSession, uri: str, **kwargs: Any) -> Ingested:
        return self.reader_for(uri).read(spark, **kwargs)

    def finish(self, run_id: str) -> None:
        """Put the published run at the output: an upload for fsspec, nothing for Hadoop."""
        self.target.finish(run_id)

    def cleanup(self) -> None:
        self.target.cleanup()


def plan_storage(
    spark: SparkSession,
    mode: StorageMode,
    inputs: list[str],
    output: str,
    *,
    files_per_partition: int = FILES_PER_PARTITION,
) -> StoragePlan:
    """Pick a reader per input and Hadoop or fsspec for the output (auto: Hadoop when the JVM
    has a FileSystem for the scheme; local folders are walked by Python, see sources.local)
    and, for an fsspec output, the local folder the run is written to first.

    A Unity Catalog volume (`/Volumes/<catalog>/<schema>/<volume>/...`) is a FUSE folder on
    Databricks too, but walking millions of files from the driver is slow: where the JVM has a
    `dbfs` FileSystem it is read and written as `dbfs:/Volumes/...` (listed by Spark on the
    executors); elsewhere it is the local folder it is (see `choose`)."""
    if mode not in ("auto", "hadoop", "fsspec"):
        raise ValueError(f"storage must be auto, hadoop or fsspec, got {mode!r}")
    readers = [_reader(spark, mode, uri, files_per_partition) for uri in inputs]
    plan = StoragePlan(readers, _target(spark, mode, output))
    log.info("storage: inputs via %s, output via %s", [r.mode for r in readers], plan.output_mode)
    return plan


def _reader(spark: SparkSession, mode: StorageMode, uri: str, files_per_partition: int) -> Source:
    """The one place an input's choice becomes a reader."""
    chosen, planned = choose(spark, mode, uri)
    if chosen == "fsspec":
        return FsspecSource(planned, files_per_partition)
    if mode == "auto" and local_path(planned) is not None:
        return LocalSource(planned, files_per_partition)
    return HadoopSource(planned)


def _target(spark: SparkSession, mode: StorageMode, output: str) -> Target:
    """The one place the output's choice becomes a target. An fsspec output keeps the name
    the user gave (the upload goes there), is checked before any work, and gets its local
    folder named after the planned URI's last part."""
    chosen, planned = choose(spark, mode, output)
    if chosen == "hadoop":
        return HadoopTarget(planned)
    return FsspecTarget.create(output, planned.rstrip("/").rpartition("/")[2])
