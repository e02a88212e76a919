"""SparkSession creation: embedded `local[*]` by default, whatever master spark-submit gives
otherwise, with the settings this pipeline relies on (documented in the README's table)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from fruits.azure import SPARK_REDACTION_REGEX
from fruits.config import ARROW_MAX_BYTES, ARROW_MAX_RECORDS, FILES_PER_PARTITION

# Embedded runs: the UI would listen on every interface and show the configuration; it is off
# unless asked for (`--conf spark.ui.enabled=true`, then bound to the loopback interface).
LOCAL_ONLY = {
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}


class JavaMissingError(RuntimeError):
    """Spark needs a JVM; say so in one line instead of a py4j stack trace."""


def check_java() -> None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return
    if shutil.which("java"):
        return
    raise JavaMissingError(
        "Java was not found: install a JDK 17 or 21"
        " (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
    )


def default_conf(
    *,
    arrow_max_records: int = ARROW_MAX_RECORDS,
    arrow_max_bytes: int = ARROW_MAX_BYTES,
    files_per_partition: int = FILES_PER_PARTITION,
) -> dict[str, str]:
    """Settings that bound memory per Arrow batch and size partitions by file count."""
    max_partition = 128 << 20
    return {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(arrow_max_records),
        "spark.sql.execution.arrow.maxBytesPerBatch": str(arrow_max_bytes),
        "spark.sql.files.maxPartitionBytes": str(max_partition),
        # Small files count as this many bytes when packing partitions: ~N files per task.
        "spark.sql.files.openCostInBytes": str(max(4096, max_partition // files_per_partition)),
        # Listing: a Spark job per folder level lists the folders, but not one task per folder
        # (the default): with 141 class folders that is 280 tiny tasks, 3x slower locally.
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "16",
        "spark.sql.adaptive.enabled": "true",
        "spark.python.worker.reuse": "true",
        "spark.sql.session.timeZone": "UTC",
        # Spark's default misses Azure's `fs.azure.account.key.*` and SAS tokens: masked in the
        # UI, its REST API and event logs.
        "spark.redaction.regex": SPARK_REDACTION_REGEX,
    }


def get_spark(
    *,
    master: str | None = None,
    app_name: str = "fruits",
    defaults: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
    driver_memory: str = "2g",
) -> SparkSession:
    """Reuse an active session (Databricks, notebooks, tests); otherwise build one.

    A master from `--master` wins; else the one spark-submit configured; else `local[*]`.
    `defaults` never replace a value the user or the cluster set explicitly; `overrides` do.
    """
    check_java()
    defaults = defaults or {}
    overrides = overrides or {}
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        spark = active
    else:
        submitted = _submitted_conf()
        builder = SparkSession.builder.appName(app_name)
        if master:
            builder = builder.master(master)
        elif "spark.master" not in submitted:
            builder = builder.master("local[*]").config("spark.driver.memory", driver_memory)
        if (master or submitted.get("spark.master") or "local").startswith("local"):
            for key, value in LOCAL_ONLY.items():
                if key not in submitted and key not in overrides:
                    builder = builder.config(key, value)
        if (master or "local").startswith("local") and "spark.master" not in submitted:
            # Local workers must run this interpreter (the one with our package installed).
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        for key, value in {"spark.ui.showConsoleProgress": "true", **defaults}.items():
            if key not in submitted:
                builder = builder.config(key, value)
        for key, value in overrides.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
    explicit = spark.sparkContext.getConf()
    for key, value in defaults.items():
        if not explicit.contains(key):
            _try_set(spark, key, value)
    for key, value in overrides.items():
        _try_set(spark, key, value)
    return spark


def _try_set(spark: SparkSession, key: str, value: str) -> None:
    try:
        spark.conf.set(key, value)
    except Exception:
        pass


def _submitted_conf() -> dict[str, str]:
    """Spark properties passed by spark-submit (it starts the JVM before our Python runs)."""
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        from pyspark import SparkConf

        return dict(SparkConf().getAll())
    return {}
