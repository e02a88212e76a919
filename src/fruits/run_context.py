"""One run's surroundings: its id, Spark job group, folders, output rules, lease and publish.

`pipeline.py` tells the story of a run; everything about *where* it writes lives here:

- the output is checked before any work (never the input, inside it or above it; never a file;
  never a folder that is not a finished fruits output), so a typo cannot destroy a user's data;
- a lease file beside the output (`.NAME.lock`) admits one writer at a time; a second run fails
  fast in one line, and only the lease holder cleans up what killed runs left;
- everything is written to a staging folder, the marker `_SUCCESS.json` strictly last, then
  published (storage.publish); a failure removes the staging folder and leaves the previous
  output as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from pyspark.sql import SparkSession

from fruits.config import PipelineConfig
from fruits.ingest import InputError
from fruits.report import write_json
from fruits.spark import is_connect
from fruits.storage import (
    MARKER,
    HadoopStore,
    Store,
    join,
    new_run_id,
    publish,
    quietly,
    recover,
    split_parent,
    staging_uri,
)
from fruits.storage.plan import StoragePlan, plan_storage

log = logging.getLogger(__name__)

STALE_LEASE_SECONDS = 24 * 3600  # a lease older than this is from a run that cannot be alive


class OutputError(InputError):
    """The output location is unsafe or busy: refused in one line before anything is touched."""


@dataclass
class StageTimer:
    """Wall seconds per stage, for report.json and the log."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        log.info("stage %s: started", name)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
            log.info("stage %s: done in %.1fs", name, self.seconds[name])


def resolve_uri(uri: str, spark: SparkSession) -> str:
    """Local relative paths become absolute when Spark runs locally (or behind a Spark Connect
    server, which reads this machine's files only when it runs here), so messages are exact."""
    if has_scheme(uri):
        return uri
    if is_connect(spark) or spark.sparkContext.master.startswith("local"):
        return os.path.abspath(uri)
    return uri


def has_scheme(uri: str) -> bool:
    return ":" in uri.split("/", 1)[0]


def _comparable(uri: str) -> str:
    """A form in which `a` inside `b` is a string prefix test: real paths for local files."""
    if uri.startswith("file:"):
        uri = "/" + uri[len("file:") :].lstrip("/")
    if not has_scheme(uri):
        return os.path.realpath(uri).rstrip("/") or "/"
    return uri.rstrip("/")


def overlap(output: str, source: str) -> str | None:
    """Why `output` may not be written given an input `source`, or None when they are apart."""
    out, src = _comparable(output), _comparable(source)
    if out == src:
        return "is the input itself"
    if out.startswith(src.rstrip("/") + "/"):
        return "is inside the input (the next run would read the outputs as images)"
    if src.startswith(out.rstrip("/") + "/"):
        return "contains the input (publishing replaces the whole folder)"
    return None


def check_output(store: Store, output: str, inputs: list[str]) -> None:
    """Refuse outputs whose replacement would destroy something that is not ours."""
    for source in inputs:
        why = overlap(output, source)
        if why:
            raise OutputError(f"--output {output} {why}: choose a folder outside {source}")
    if not store.exists(output):
        return
    if store.is_file(output):
        raise OutputError(f"--output {output} is a file, not a folder: choose another path")
    if store.exists(join(output, MARKER)):
        try:
            marker = json.loads(store.read_text(join(output, MARKER)))
        except Exception:
            marker = None
        if isinstance(marker, dict) and "run_id" in marker:
            return  # a finished fruits output: replaced atomically at publish
    if not store.list(output):
        return  # an empty folder holds nothing to lose
    raise OutputError(
        f"--output {output} exists and is not a finished fruits output (no {MARKER} written by"
        " fruits): choose a new folder, or remove it yourself if it is yours to delete"
    )


class Lease:
    """`.NAME.lock` beside the output: one writer per output at a time."""

    def __init__(self, store: Store, output: str, run_id: str) -> None:
        parent, name = split_parent(output)
        self.store, self.uri, self.run_id = store, join(parent, f".{name}.lock"), run_id
        self.held = False

    def acquire(self) -> None:
        me = {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
        }
        for _ in range(2):
            if self.store.create_new(self.uri, json.dumps(me)):
                self.held = True
                return
            holder = self._holder()
            if holder is None or self._stale(holder):
                log.warning("taking over the stale lease %s (%s)", self.uri, holder)
                self.store.delete(self.uri)
                continue
            since = datetime.fromtimestamp(float(holder.get("started", 0)), tz=UTC)
            raise OutputError(
                f"output is being written by run {holder.get('run_id')} (pid {holder.get('pid')}"
                f" on {holder.get('host')} since {since:%Y-%m-%d %H:%M:%S} UTC): wait for it,"
                f" or delete {self.uri} if that run is dead"
            )
        raise OutputError(f"could not take the lease {self.uri}: another run took it first")

    def _holder(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.store.read_text(self.uri))
        except Exception:
            return None
        return value if isinstance(value, dict) else None

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        if time.time() - float(holder.get("started", 0)) > STALE_LEASE_SECONDS:
            return True
        if holder.get("host") != socket.gethostname():
            return False  # another machine: only its age can tell
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        return False

    def release(self) -> None:
        if self.held and (self._holder() or {}).get("run_id") == self.run_id:
            self.store.delete(self.uri)
        self.held = False


class RunContext:
    """Everything a run needs besides the stages: use as `with RunContext(cfg, spark) as run:`."""

    def __init__(self, cfg: PipelineConfig, spark: SparkSession) -> None:
        self.cfg, self.spark = cfg, spark
        self.run_id = new_run_id()
        self.started = datetime.now(UTC)
        self.t0 = time.perf_counter()
        self.timer = StageTimer()
        self.inputs = [resolve_uri(uri, spark) for uri in cfg.inputs]
        self.output = resolve_uri(cfg.output, spark)
        self.io: StoragePlan = plan_storage(  # Hadoop where the JVM reads the scheme, else fsspec
            spark,
            cfg.storage,
            self.inputs,
            self.output,
            files_per_partition=cfg.files_per_partition,
        )
        self.out_store: Store = self.io.target.out_store(spark)
        # Spark writes here (the output or a local folder); a Connect client reaches it itself
        self.store: Store = self.out_store if is_connect(spark) else HadoopStore(spark)
        self.staging = staging_uri(self.io.work_output, self.run_id)
        self.local = Path(tempfile.mkdtemp(prefix=f"fruits-{self.run_id}-"))
        self.group = f"fruits-{self.run_id}"  # this run's Spark jobs, for task retries
        self.lease = Lease(self.out_store, self.output, self.run_id)
        self.label_map: Any = None  # set by ingest when `--label-map` is given
        self.threads_per_task: int | None = None  # set by the featurize stage

    @property
    def input(self) -> str:
        return self.inputs[0]

    def stage(self, name: str) -> Any:
        return self.timer(name)

    def __enter__(self) -> RunContext:
        try:
            self.io.check_input(self.spark)
            check_output(self.out_store, self.output, self.inputs)
            self.lease.acquire()
            recover(self.out_store, self.output)
            check_output(self.out_store, self.output, self.inputs)  # after a restore, again
        except BaseException:
            self._cleanup(failed=True)
            raise
        if is_connect(self.spark):  # Connect has tags where classic sessions have job groups
            self.spark.addTag(self.group)
        else:
            self.spark.sparkContext.setJobGroup(self.group, f"fruits run {self.run_id}")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cleanup(failed=kind is not None)

    def _cleanup(self, *, failed: bool) -> None:
        if failed:
            quietly(lambda: self.store.delete(self.staging))
        shutil.rmtree(self.local, ignore_errors=True)
        quietly(self.lease.release)
        if is_connect(self.spark):
            quietly(lambda: self.spark.removeTag(self.group))
        else:
            quietly(lambda: self.spark.sparkContext.setLocalProperty("spark.jobGroup.id", None))  # type: ignore[arg-type]
        self.io.cleanup()

    def uri(self, *parts: str) -> str:
        """A path inside this run's staging folder."""
        return join(self.staging, *parts)

    def publish(self, report: dict[str, Any]) -> None:
        """Copy the driver-made files into staging, the marker last, and swap it into place."""
        write_json(report, self.local / "report.json")
        models = self.local / "models"
        # models/ already holds Spark's saved models: put files into it one by one (a Hadoop
        # copy of the whole folder would land in models/models/)
        items = [f"models/{p.name}" for p in sorted(models.iterdir())] if models.exists() else []
        for item in (*items, "plots", "report.json"):
            if (self.local / item).exists():
                self.store.put(self.local / item, self.uri(item))
        self.store.delete(self.uri("_work"))
        marker = {"run_id": self.run_id, "finished_at": report.get("finished_at")}
        write_json(marker, self.local / MARKER)
        self.store.put(self.local / MARKER, self.uri(MARKER))
        publish(self.store, self.staging, self.io.work_output, self.run_id)
        self.io.finish(self.run_id)  # fsspec output: upload the published run; no-op with Hadoop
        log.info("run %s published to %s", self.run_id, self.output)
