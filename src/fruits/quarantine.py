"""Quarantine: every listed file that yields no features ends here, with its reason.

Owns the columns `path, reason, length, modification_time, content_hash` (the metadata lets an
incremental run skip known bad files). Sources are: the featurizer's reasons, files refused
before reading (size, empty, broken links), files a lossy source dropped without a row, and,
in incremental runs, the previous output's quarantine rows that are still current.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits.csv_output import write_csv
from fruits.engine import UNREADABLE
from fruits.features import ImageFailure

if TYPE_CHECKING:
    from fruits.incremental import Increment
    from fruits.sources import Ingested
    from fruits.stage import Run

log = logging.getLogger(__name__)

COLUMNS = ("path", "reason", "length", "modification_time", "content_hash")


def write(run: Run, feats: DataFrame, prev: Increment, listed: Ingested) -> int:
    """Write `quarantine.parquet` + `quarantine.csv`; the number of quarantined files.

    With `--on-error fail` the first quarantined file stops the run in one line.
    """
    bad = feats.where(F.col("reason").isNotNull()).select(*COLUMNS)
    bad = bad.unionByName(prev.todo_refused, allowMissingColumns=True)
    if listed.may_drop:  # binaryFile's ignoreCorruptFiles drops a file without a row
        dropped = (
            prev.todo.select("path", "length", "modification_time")
            .join(feats.select("path"), "path", "left_anti")
            .withColumn("reason", F.lit(UNREADABLE))
        )
        bad = bad.unionByName(dropped, allowMissingColumns=True)
    bad = prev.with_kept_quarantine(bad.select(*COLUMNS)).coalesce(1)
    uri = run.uri("quarantine.parquet")
    bad.write.parquet(uri)
    bad = run.spark.read.parquet(uri)
    n_bad = bad.count()
    if n_bad and run.cfg.on_error == "fail":
        first = bad.first()
        assert first is not None
        raise ImageFailure(f"{first['path']}: {first['reason']}")
    write_csv(  # n_bad is already counted: the one-file-or-folder choice costs no Spark job
        run.store,
        bad.select("path", "reason"),
        run.uri("quarantine.csv"),
        rows=n_bad,
        max_rows=run.cfg.single_csv_max_rows,
    )
    log.info("quarantine: %d file(s)", n_bad)
    return n_bad
