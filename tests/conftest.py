"""Shared fixtures: one local SparkSession for the whole suite, the bundled sample, and one real
end-to-end run on it that several test modules read."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark() -> Iterator:
    from pyspark.sql import SparkSession

    from fruits.spark import default_conf

    builder = (
        SparkSession.builder.master("local[2]")
        .appName("fruits-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.memory", "2g")
    )
    for key, value in default_conf().items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    from fruits.config import bundled_sample

    return Path(bundled_sample())


@pytest.fixture(scope="session")
def sample_run(spark, tmp_path_factory):
    """The real pipeline (real EfficientNet-Lite0 weights) on the 320 bundled images, once."""
    from fruits.config import PipelineConfig
    from fruits.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("sample-run") / "out"
    return run_pipeline(PipelineConfig(output=str(out)), spark=spark)


@pytest.fixture(scope="session")
def azurite():
    """Azurite's blob service (tests/azurite_service.py): CI's, or one started for the session."""
    from azurite_service import start

    yield from start()
