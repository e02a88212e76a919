"""Which rows a fit may learn from: the one rule the reducer and the classifier share."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits.common import InputError


def train_part(df: DataFrame, splits: dict[str, int]) -> DataFrame:
    """The rows fits learn from: the train split where one exists, else every split but test
    (the test split judges the fits, so it never trains them; a run of Test images only is
    refused in one line rather than scored on its own training data)."""
    if splits.get("train"):
        return df.where(F.col("split") == "train")
    if not sum(n for s, n in splits.items() if s != "test"):
        raise InputError("only Test-split images: nothing to fit on but the images it judges")
    return df.where(F.col("split") != "test")
