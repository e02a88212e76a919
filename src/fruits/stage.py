"""What a stage may use of the run it is part of: the narrow, typed face of `RunContext`.

Stages (ingest, featurize, quarantine, reduce's outputs, classify, report) take a `Run` and
return what they learn; none writes onto it. `RunContext` (run_context.py) is the one
implementation; a test may hand a stage any object with these attributes. Imports only types,
so every stage can name it without climbing above itself.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from fruits.config import PipelineConfig
    from fruits.storage.base import Store
    from fruits.storage.plan import StoragePlan


class Timer(Protocol):
    @property
    def seconds(self) -> dict[str, float]: ...


class Run(Protocol):
    """The run's settings, session, folders and identity, read-only."""

    @property
    def cfg(self) -> PipelineConfig: ...
    @property
    def spark(self) -> SparkSession: ...
    @property
    def run_id(self) -> str: ...
    @property
    def inputs(self) -> list[str]: ...
    @property
    def input(self) -> str: ...
    @property
    def output(self) -> str: ...
    @property
    def local(self) -> Path:
        """A local folder for files written on the driver (plots, models, report)."""
        ...

    @property
    def store(self) -> Store: ...
    @property
    def io(self) -> StoragePlan: ...
    @property
    def group(self) -> str:
        """This run's Spark job group (task retries, progress)."""
        ...

    @property
    def started(self) -> datetime: ...
    @property
    def t0(self) -> float:
        """`time.perf_counter()` when the run began (the report's wall seconds)."""
        ...

    @property
    def timer(self) -> Timer: ...

    def uri(self, *parts: str) -> str:
        """A path inside this run's staging folder."""
        ...
