"""Featurization progress in images, with rate and time left (fruits.progress)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator

import pandas as pd

from fruits.progress import Progress, describe


def test_describe_says_images_rate_and_time_left() -> None:
    assert (
        describe(1200, 20000, 10.0) == "1,200 of 20,000 images (6%), 120 images/s, about 3 min left"
    )
    assert describe(0, 50, 3.0) == "0 of 50 images (0%)"
    assert describe(50, 50, 2.0) == "50 of 50 images (100%), 25 images/s"
    assert describe(10, 100000, 1.0).endswith("about 2.8 h left")


def test_progress_counts_tasks_of_the_running_job_as_images(spark, caplog) -> None:
    def _slow(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:  # pickled by value
        for batch in batches:
            time.sleep(0.4)
            yield batch

    group = "progress-test"
    spark.sparkContext.setJobGroup(group, "progress test")
    try:
        spark.range(0, 5, 1, 1).collect()  # an earlier job of the group is not counted
        slow = spark.range(0, 16, 1, 16).mapInPandas(_slow, "id long")
        with caplog.at_level(logging.INFO, logger="fruits.progress"):
            with Progress(spark, group, what="featurize", total=1600, every=0.3):
                assert slow.count() == 16
    finally:
        spark.sparkContext.setJobGroup("", "")
    lines = [r.getMessage() for r in caplog.records if r.name == "fruits.progress"]
    done = [
        int(re.match(r"featurize: ([\d,]+) of 1,600", x).group(1).replace(",", "")) for x in lines
    ]
    assert done[-1] == 1600 and lines[-1].startswith("featurize: 1,600 of 1,600 images (100%)")
    assert any(0 < d < 1600 for d in done[:-1]), lines  # seen while running
    assert done[:-1] == sorted(done[:-1])


def test_no_status_tracker_means_silence(caplog) -> None:
    class ConnectLike:
        @property
        def sparkContext(self):  # noqa: N802 - Spark's name
            raise RuntimeError("[JVM_ATTRIBUTE_NOT_SUPPORTED] sparkContext is not supported")

    with caplog.at_level(logging.INFO, logger="fruits.progress"):
        with Progress(ConnectLike(), "g", what="featurize", total=10, every=0.05) as p:
            time.sleep(0.2)
            assert p.fraction() == 0.0
    assert not [r for r in caplog.records if r.name == "fruits.progress"]
