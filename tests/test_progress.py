"""Featurization progress in images, with rate and time left (fruits.progress)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pandas as pd
from pyspark import InheritableThread

from fruits.progress import Progress, describe
from fruits.spark import Session


def test_describe_says_images_rate_and_time_left() -> None:
    assert (
        describe(1200, 20000, 10.0) == "1,200 of 20,000 images (6%), 120 images/s, about 3 min left"
    )
    assert describe(0, 50, 3.0) == "0 of 50 images (0%)"
    assert describe(50, 50, 2.0) == "50 of 50 images (100%), 25 images/s"
    assert describe(10, 100000, 1.0).endswith("about 2.8 h left")


def test_progress_follows_the_newest_stage_not_the_shuffle_before_it(
    spark, caplog, tmp_path
) -> None:
    """The featurize write is a quick shuffle stage, then the CNN stage. Counted together (the
    old estimator) the finished shuffle made 1 of 4 CNN tasks read as (3 + 1) / 7 = 57%; the
    progress is the newest stage's: 1 of 4 = 25%. No clock is read: partition 0 of the slow
    stage finishes, the others wait for a file the test writes."""
    go = tmp_path / "go"

    def _gated(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:  # pickled by value
        import os as _os
        import time as _time

        from pyspark import TaskContext

        for batch in batches:
            while TaskContext.get().partitionId() != 0 and not _os.path.exists(str(go)):
                _time.sleep(0.05)
            yield batch

    group = "progress-test"
    spark.sparkContext.setJobGroup(group, "progress test")
    seen: list[float] = []
    try:
        spark.range(0, 5, 1, 1).collect()  # an earlier job of the group is not counted
        # 3 shuffle tasks (1/3, 2/3, 1 done) before 4 gated ones: only the latter give 1/4
        gated = spark.range(0, 400, 1, 3).repartition(4).mapInPandas(_gated, "id long")
        with caplog.at_level(logging.INFO, logger="fruits.progress"):
            tracker = Session(spark).status_tracker()
            with Progress(tracker, group, what="featurize", total=400, every=3600) as progress:
                job = InheritableThread(target=gated.count)  # keeps the job group
                job.start()
                while len(seen) < 1200 and (not seen or seen[-1] != 0.25):  # a bounded wait
                    seen.append(progress.fraction())
                    job.join(0.1)
                go.write_text("")
                job.join()
    finally:
        spark.sparkContext.setJobGroup("", "")
    assert seen[-1] == 0.25, seen
    lines = [r.getMessage() for r in caplog.records if r.name == "fruits.progress"]
    assert len(lines) == 1 and lines[0].startswith("featurize: 400 of 400 images (100%)")


def test_no_status_tracker_means_silence(caplog) -> None:
    """A Spark Connect session has no status tracker (`Session.status_tracker()` is None)."""
    with caplog.at_level(logging.INFO, logger="fruits.progress"):
        with Progress(None, "g", what="featurize", total=10, every=0.05) as p:
            assert p.fraction() == 0.0
            time.sleep(0.2)  # time for the logging loop to run, were there one
    assert not [r for r in caplog.records if r.name == "fruits.progress"]
