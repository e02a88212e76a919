"""Progress of a long Spark job in images, not tasks: done, rate and time left, logged while
the featurize stage runs (Spark's console bar counts tasks of one stage and says nothing of
images or of when the run will end)."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


def describe(done: int, total: int, seconds: float) -> str:
    """'1,200 of 20,000 images (6%), 140 images/s, about 2 min left'."""
    share = done / total if total else 0.0
    rate = done / seconds if seconds > 0 else 0.0
    text = f"{done:,} of {total:,} images ({share:.0%})"
    if rate > 0:
        text += f", {rate:,.0f} images/s"
        left = (total - done) / rate
        text += f", about {_duration(left)} left" if done < total else ""
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Logs `what: <describe(...)>` every `every` seconds while the `with` block runs.

    Images done are estimated from the tasks Spark finished in the newest stage of this job
    group's new jobs (tasks are evenly filled: ingest packs a fixed number of files per task),
    read from the driver's status tracker; rate and time left come from that stage's own done
    tasks over the time since it started. The featurize write runs a quick shuffle stage (the
    listing spread over tasks) before the CNN stage: counted together, as before, the shuffle's
    finished tasks made the run look far along, and the time left was a quarter of the truth
    (12 min said 3). Nothing is logged before the stage has finished a task. Where there is no
    status tracker (a Spark Connect session), it stays silent.
    """

    def __init__(
        self, tracker: Any | None, group: str, *, what: str, total: int, every: float = 10.0
    ) -> None:
        """`tracker`: Spark's status tracker (`spark.Session.status_tracker()`), or None."""
        self.what, self.total, self.every, self.group = what, total, every, group
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stage: int | None = None  # the stage followed, and when it was first seen
        self._stage_t0 = 0.0
        self._tracker = tracker  # None through Spark Connect
        if self._tracker is not None:
            self._before = set(self._tracker.getJobIdsForGroup(group))

    def _newest_stage(self) -> Any:
        """Status of the newest running or finished stage of this group's jobs started since
        entering, or None."""
        if self._tracker is None:
            return None
        newest = None
        for job in set(self._tracker.getJobIdsForGroup(self.group)) - self._before:
            info = self._tracker.getJobInfo(job)
            for stage in info.stageIds if info is not None else []:
                st = self._tracker.getStageInfo(stage)
                started = st is not None and st.numActiveTasks + st.numCompletedTasks > 0
                if started and (newest is None or st.stageId > newest.stageId):
                    newest = st  # a stage planned but not started yet (AQE) is not followed
        if newest is not None and newest.stageId != self._stage:
            self._stage, self._stage_t0 = newest.stageId, time.perf_counter()
        return newest

    def fraction(self) -> float:
        """Share of the tasks of the newest stage done (see the class); 0 if none."""
        st = self._newest_stage()
        return st.numCompletedTasks / st.numTasks if st is not None and st.numTasks else 0.0

    def __enter__(self) -> Progress:
        self._t0 = time.perf_counter()
        if self._tracker is not None and self.total > 0:
            self._thread = threading.Thread(target=self._loop, name="fruits-progress", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        tick = min(1.0, self.every)  # notice a new stage within a second of its start
        last = time.perf_counter()
        while not self._stop.wait(tick):
            try:
                share = self.fraction()
            except Exception:  # the session went away under us: nothing more to say
                return
            now = time.perf_counter()
            if now - last < self.every or not 0.0 < share < 1.0:
                continue
            last = now
            done = round(share * self.total)
            log.info("%s: %s", self.what, describe(done, self.total, now - self._stage_t0))

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if kind is None and self._thread is not None:
            elapsed = time.perf_counter() - self._t0
            log.info("%s: %s", self.what, describe(self.total, self.total, elapsed))
