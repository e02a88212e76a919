"""What the scaler, PCA and classifier are fitted on: never a Test-split row."""

from __future__ import annotations

import pytest

from fruits.common import InputError
from fruits.splits import train_part


def _rows(spark, splits: list[str]):
    return spark.createDataFrame(
        [(f"/x/{s}/{i}.jpg", s) for i, s in enumerate(splits)], "path string, split string"
    )


def _fitted(spark, splits: list[str]) -> list[str]:
    counts = {s: splits.count(s) for s in set(splits)}
    return sorted(r["split"] for r in train_part(_rows(spark, splits), counts).collect())


def test_the_train_split_alone_when_there_is_one(spark):
    splits = ["train"] * 5 + ["val"] * 2 + ["guard"] + ["test"] * 3
    assert _fitted(spark, splits) == ["train"] * 5


def test_without_a_train_split_every_row_but_test(spark):
    splits = ["val"] * 4 + ["test"] * 3
    assert _fitted(spark, splits) == ["val"] * 4  # was all 7, test rows included


def test_test_images_alone_are_refused_in_one_line(spark):
    with pytest.raises(InputError) as err:
        _fitted(spark, ["test"] * 4)
    assert "\n" not in str(err.value) and "Test" in str(err.value)
