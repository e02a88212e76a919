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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from pyspark.sql import SparkSession

from fruits.common import InputError, has_scheme, write_json
from fruits.config import PipelineConfig
from fruits.preflight import overlap
from fruits.spark import Session
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

HEARTBEAT_SECONDS = 60.0  # a live run rewrites its lease this often (a daemon thread)
# No heartbeat for this long: the holder is dead (or cut off for 30 heartbeats). Judged from the
# last heartbeat, not the start: a live run keeps its lease however long it runs.
STALE_LEASE_SECONDS = 30 * 60
TAKEOVER_STALE_SECONDS = 120  # a take-over marker this old was left by a taker that died


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
    if Session(spark).reads_local_files():
        return os.path.abspath(uri)
    return uri


def check_output_name(output: str) -> None:
    """A `:` in the output's path (not its scheme or host) is a `URISyntaxException` in Hadoop
    and an odd name elsewhere: refused before the lease or any folder is created."""
    path = output
    if has_scheme(output):
        rest = output.split(":", 1)[1]
        path = rest[2:].partition("/")[2] if rest.startswith("//") else rest
    if ":" in path:
        raise OutputError(
            f"--output {output}: a ':' in a folder name cannot be written by Spark (Hadoop"
            " paths reject it): choose a name without ':'"
        )


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


def _busy(uri: str, holder: dict[str, Any] | None) -> OutputError:
    if holder is None:
        return OutputError(
            f"output is being written by another run (its lease {uri} is being written or is"
            f" unreadable): wait for it, or delete {uri} if that run is dead"
        )
    since = datetime.fromtimestamp(float(holder.get("started", 0)), tz=UTC)
    return OutputError(
        f"output is being written by run {holder.get('run_id')} (pid {holder.get('pid')}"
        f" on {holder.get('host')} since {since:%Y-%m-%d %H:%M:%S} UTC): wait for it,"
        f" or delete {uri} if that run is dead"
    )


class Lease:
    """`.NAME.lock` beside the output: one writer per output at a time.

    Taken with the store's exclusive create; kept alive by a heartbeat (a daemon thread rewrites
    the file every `heartbeat_seconds`); judged dead when its heartbeat is older than
    `STALE_LEASE_SECONDS` or its process is gone on this host. An empty or unreadable lease
    (a run between its create and its write) counts as held unless its file is that old too.
    A dead lease is taken over under a second exclusive create, `.NAME.lock.takeover`, so of
    several runs finding the same dead lease exactly one takes it; `taken_from` then names the
    dead holder, whose leftovers alone the new holder may clean (`recover`, `local_dirs`).
    """

    def __init__(
        self,
        store: Store,
        output: str,
        run_id: str,
        *,
        local_dirs: list[str] | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        parent, name = split_parent(output)
        self.store, self.uri, self.run_id = store, join(parent, f".{name}.lock"), run_id
        self.host, self.pid, self.started = socket.gethostname(), os.getpid(), time.time()
        self.local_dirs = list(local_dirs or [])
        self.heartbeat_seconds = heartbeat_seconds
        self.held = False
        self.lost = False
        self.taken_from: dict[str, Any] | None = None  # the dead holder, after a take-over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> str:
        return json.dumps(
            {
                "run_id": self.run_id,
                "host": self.host,
                "pid": self.pid,
                "started": self.started,
                "heartbeat": time.time(),
                "local_dirs": self.local_dirs,  # removed by whoever takes over a dead lease
            }
        )

    def acquire(self) -> None:
        if self.store.create_new(self.uri, self._record()):
            self._start()
            return
        holder = self._holder()
        if not self._dead(holder):
            raise _busy(self.uri, holder)
        self._take_over(holder)

    def _take_over(self, holder: dict[str, Any] | None) -> None:
        """Replace the dead lease `holder` with ours, one taker at a time: under the marker,
        the lease is read again and must still be that dead one."""
        marker = self.uri + ".takeover"
        mine = json.dumps({"run_id": self.run_id, "at": time.time()})
        if not self.store.create_new(marker, mine):
            at = self.store.modified(marker)
            if at is None or time.time() - at <= TAKEOVER_STALE_SECONDS:
                raise OutputError(
                    f"another run is taking over the dead lease {self.uri} right now: try again"
                )
            log.warning("removing the take-over marker %s of a taker that died", marker)
            self.store.delete(marker)
            if not self.store.create_new(marker, mine):
                raise OutputError(f"another run is taking over the dead lease {self.uri}")
        try:
            now = self._holder()
            if now != holder or not self._dead(now):
                raise _busy(self.uri, now)
            log.warning("taking over the dead lease %s (%s)", self.uri, holder)
            self.store.delete(self.uri)
            if not self.store.create_new(self.uri, self._record()):
                raise OutputError(f"could not take the lease {self.uri}: another run took it first")
        finally:
            quietly(lambda: self.store.delete(marker))
        self.taken_from = holder if holder is not None else {}
        self._start()

    def _start(self) -> None:
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat_forever, name=f"fruits-lease-{self.run_id}", daemon=True
        )
        self._thread.start()

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self.beat()
            except Exception:
                log.warning("could not renew the lease %s", self.uri, exc_info=True)
            if self.lost:
                return

    def beat(self) -> None:
        """Renew the lease (the heartbeat thread calls this), unless another run holds it now."""
        if not self.held or self._stop.is_set():
            return
        holder = self._holder()
        if holder is not None and holder.get("run_id") != self.run_id:
            self.lost = True
            log.error("lost the lease %s to run %s", self.uri, holder.get("run_id"))
            return
        self.store.write_text(self.uri, self._record())

    def verify(self) -> None:
        """Before publishing: still ours? (a run cut off past the stale age may have lost it)"""
        holder = self._holder()
        if self.lost or not self.held or (holder or {}).get("run_id") != self.run_id:
            self.lost = True
            raise OutputError(
                f"lost the lease {self.uri} to another run: this run's result is not published"
            )

    def _holder(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.store.read_text(self.uri))
        except Exception:
            return None
        return value if isinstance(value, dict) else None

    def _dead(self, holder: dict[str, Any] | None) -> bool:
        now = time.time()
        if holder is None:  # empty or unreadable: held, unless its file is old
            at = self.store.modified(self.uri)
            return at is not None and now - at > STALE_LEASE_SECONDS
        try:
            last = float(holder.get("heartbeat", holder.get("started", 0)))
        except (TypeError, ValueError):
            last = 0.0
        if now - last > STALE_LEASE_SECONDS:
            return True
        if holder.get("host") != socket.gethostname():
            return False  # another machine: only its heartbeat can tell
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, TypeError, OverflowError):
            return False
        return False

    def dead_runs(self) -> set[str] | None:
        """The runs whose leftovers this holder may remove: every run when the lease was free
        (no live run holds it), only the dead holder's after a take-over."""
        if self.taken_from is None:
            return None
        run = self.taken_from.get("run_id")
        return {run} if isinstance(run, str) else set()

    def dead_local_dirs(self) -> list[str]:
        """The dead holder's temporary folders on this host (left by a SIGKILL)."""
        holder = self.taken_from or {}
        dirs = holder.get("local_dirs")
        if holder.get("host") != socket.gethostname() or not isinstance(dirs, list):
            return []
        tmp = os.path.realpath(tempfile.gettempdir())
        return [
            d
            for d in dirs
            if isinstance(d, str)
            and os.path.basename(d).startswith("fruits-")
            and os.path.dirname(os.path.realpath(d)) == tmp
        ]

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None
        if self.held and (self._holder() or {}).get("run_id") == self.run_id:
            self.store.delete(self.uri)
        self.held = False


class RunContext:
    """Everything a run needs besides the stages: use as `with RunContext(cfg, spark) as run:`."""

    def __init__(self, cfg: PipelineConfig, spark: SparkSession) -> None:
        self.cfg, self.spark = cfg, spark
        self.session = Session(spark)  # the one place that knows classic from Connect
        self.run_id = new_run_id()
        self.started = datetime.now(UTC)
        self.t0 = time.perf_counter()
        self.timer = StageTimer()
        self.inputs = [resolve_uri(uri, spark) for uri in cfg.inputs]
        self.output = resolve_uri(cfg.output, spark)
        check_output_name(self.output)  # before the plan makes any folder
        self.io: StoragePlan = plan_storage(  # Hadoop where the JVM reads the scheme, else fsspec
            spark,
            cfg.storage,
            self.inputs,
            self.output,
            files_per_partition=cfg.files_per_partition,
        )
        self.out_store: Store = self.io.target.out_store(spark)
        # Spark writes here (the output or a local folder); a Connect client reaches it itself
        has_jvm = self.session.hadoop() is not None
        self.store: Store = HadoopStore(spark) if has_jvm else self.out_store
        self.staging = staging_uri(self.io.work_output, self.run_id)
        self.local = Path(tempfile.mkdtemp(prefix=f"fruits-{self.run_id}-"))
        self.group = f"fruits-{self.run_id}"  # this run's Spark jobs, for task retries
        tmp = getattr(self.io.target, "tmp", None)  # an fsspec output's local folder
        self.lease = Lease(
            self.out_store,
            self.output,
            self.run_id,
            local_dirs=[str(self.local), *([tmp] if tmp else [])],
        )

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
            for folder in self.lease.dead_local_dirs():  # a SIGKILLed run's temporary folders
                log.info("removing the temporary folder %s of a dead run", folder)
                shutil.rmtree(folder, ignore_errors=True)
            recover(self.out_store, self.output, self.lease.dead_runs())
            check_output(self.out_store, self.output, self.inputs)  # after a restore, again
        except BaseException:
            self._cleanup(failed=True)
            raise
        self.session.tag_jobs(self.group, f"fruits run {self.run_id}")
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
        quietly(lambda: self.session.untag_jobs(self.group))
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
        self.lease.verify()  # never publish over a run that took the lease from us
        publish(self.store, self.staging, self.io.work_output, self.run_id)
        self.io.finish(self.run_id)  # fsspec output: upload the published run; no-op with Hadoop
        log.info("run %s published to %s", self.run_id, self.output)
