"""Shared fixtures: one local SparkSession for the whole suite, the bundled sample, and one real
end-to-end run on it that several test modules read."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def in_ci() -> bool:
    """CI is on when `CI` has any value but empty, `0` or `false` (any case): GitHub and GitLab
    set `true`, other runners `1` or `yes`; one reading for every guard, so no service test can
    skip in CI because its guard spelled the check differently."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require_service(name: str, available: bool, why: str = "") -> None:
    """The one rule for tests that need something outside Python (Azurite, Java, a browser,
    setpriv): skip locally when it is missing, fail in CI, where its absence is a broken setup
    that would otherwise pass green with the tests silently skipped."""
    if available:
        return
    message = f"{name} is not available" + (f": {why}" if why else "")
    if in_ci():
        pytest.fail(f"{message} (CI must provide it)", pytrace=False)
    pytest.skip(message)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `torch` need the `export` extra, which no lock installs (`make venv-export`
    adds it): where torch is missing they skip with that hint instead of failing."""
    import importlib.util

    if "torch" in sys.modules:  # imported already, or blocked (None) to try the suite without it
        if sys.modules["torch"] is not None:
            return
    elif importlib.util.find_spec("torch") is not None:
        return
    skip = pytest.mark.skip(reason="needs torch (the export extra): make venv-export")
    for item in items:
        if item.get_closest_marker("torch") is not None:
            item.add_marker(skip)
