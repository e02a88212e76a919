"""A Spark standalone cluster on loopback for tests: a master and workers started with the
pyspark installation's `bin/spark-class` (pip's pyspark ships no `sbin` scripts).

Each daemon runs in its own process group, so `kill_worker` takes down a worker with its
executor and Python workers at once (a machine dying), and `stop` leaves nothing behind.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def spark_env() -> dict[str, str]:
    """Daemons, executors and Python workers all use this interpreter (the venv's)."""
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_NO_DAEMONIZE="1",
        # A killed worker is declared dead after 30 s instead of 60 (shorter timeouts make
        # workers of a loaded 2-core machine miss heartbeats and get dropped).
        SPARK_MASTER_OPTS="-Dspark.worker.timeout=30",
    )
    return env


class StandaloneCluster:
    def __init__(self, workdir: Path, *, workers: int = 2, cores: int = 1, memory: str = "2g"):
        self.workdir = workdir
        self.n_workers = workers
        self.cores = cores
        self.memory = memory
        self.port = free_port()
        self.web_port = free_port()
        self.master: subprocess.Popen | None = None
        self.workers: dict[int, subprocess.Popen] = {}
        atexit.register(self.stop)  # even if pytest dies without running teardown

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.workdir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [str(SPARK_HOME / "bin" / "spark-class"), *args],
                env=spark_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.workdir,
            )  # fmt: skip

    def start(self, timeout: float = 120) -> StandaloneCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.master = self._spawn(
            "master", "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.web_port),
        )  # fmt: skip
        for i in range(self.n_workers):
            self.start_worker(i)
        self.wait_workers(self.n_workers, timeout)
        return self

    def start_worker(self, i: int) -> None:
        work = self.workdir / f"worker{i}"
        work.mkdir(exist_ok=True)
        self.workers[i] = self._spawn(
            f"worker{i}", "org.apache.spark.deploy.worker.Worker",
            "--host", "127.0.0.1", "--cores", str(self.cores), "--memory", self.memory,
            "--webui-port", str(free_port()), "--work-dir", str(work), self.url,
        )  # fmt: skip

    def state(self) -> dict[str, Any]:
        return get_json(f"http://127.0.0.1:{self.web_port}/json/")

    def alive_workers(self) -> int:
        try:
            return sum(w["state"] == "ALIVE" for w in self.state()["workers"])
        except (OSError, ValueError):  # not up yet, or not JSON yet
            return 0

    def wait_workers(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master is not None and self.master.poll() is not None:
                raise RuntimeError(f"master exited; see {self.workdir / 'master.log'}")
            if self.alive_workers() >= n:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{n} workers not alive after {timeout}s; logs in {self.workdir}")

    def wait_idle(self, timeout: float = 60) -> None:
        """No application holds executors (a killed driver's app is gone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.state().get("activeapps"):
                    return
            except (OSError, ValueError):  # not up yet, or not JSON yet
                pass
            time.sleep(0.5)
        raise TimeoutError("an application is still registered at the master")

    def kill_worker(self, i: int) -> None:
        """SIGKILL a worker, its executor and their Python workers: a node lost mid-job."""
        proc = self.workers.pop(i)
        _killpg(proc, signal.SIGKILL)

    def ensure_workers(self) -> None:
        for i in range(self.n_workers):
            if i not in self.workers or self.workers[i].poll() is not None:
                self.start_worker(i)
        self.wait_workers(self.n_workers)

    def stop(self) -> None:
        procs = [*self.workers.values(), *([self.master] if self.master else [])]
        for proc in procs:
            _killpg(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc, signal.SIGKILL)  # whatever is left of the group (executors)
        self.workers.clear()
        self.master = None


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    if sig == signal.SIGKILL:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def running_job(ui: str, description: str) -> dict[str, Any] | None:
    """The running job whose description contains `description`, from the driver's REST API
    (`ui` = http://127.0.0.1:<spark.ui.port>)."""
    try:
        apps = get_json(f"{ui}/api/v1/applications")
        if not apps:
            return None
        jobs = get_json(f"{ui}/api/v1/applications/{apps[0]['id']}/jobs?status=running")
    except (OSError, ValueError):  # not up yet, or not JSON yet
        return None
    for job in jobs:
        if description in (job.get("description") or ""):
            return job
    return None
