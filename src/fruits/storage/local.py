"""A local folder walked by Python on the driver (`ingest.read_local`), not listed by Spark.

Chosen by `plan.plan_storage` (`--storage auto`) for a local path the JVM could also open:
Spark's file index hides names starting with `_` or `.` and Hadoop rejects a `:` in a file
name, while the walk counts every file (see `ingest.walk_local`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pyspark.sql import SparkSession

from fruits.config import FILES_PER_PARTITION

if TYPE_CHECKING:
    from fruits.ingest import Ingested


@dataclass(frozen=True)
class LocalReader:
    """`ingest.read_local` for one local folder; checked like any Hadoop input."""

    uri: str
    files_per_partition: int = FILES_PER_PARTITION
    mode: ClassVar[str] = "local"

    def check(self, spark: SparkSession) -> None:
        """The folder this process walks must exist (checked here, no JVM needed)."""
        from fruits.ingest import InputError, local_path

        root = local_path(self.uri)
        if root is None or not os.path.isdir(root):
            raise InputError(f"input not found: {self.uri}")

    def read(self, spark: SparkSession, **kwargs: Any) -> Ingested:
        from fruits.ingest import read_local

        return read_local(spark, self.uri, files_per_partition=self.files_per_partition, **kwargs)
