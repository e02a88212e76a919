"""`fruits run` on a real Spark standalone cluster (a master and two workers on loopback,
tests/cluster.py): same output as a local run, a worker killed mid-featurisation, a driver killed
mid-run and the command run again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cluster import StandaloneCluster, free_port, running_job, spark_env

from fruits.config import PipelineConfig, ReduceConfig
from fruits.pipeline import run_pipeline

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CLASSES = ("Apple Red 1", "Banana 1", "Kiwi 1", "Orange 1")
N_IMAGES = 40
# Each file counts as a full 128 MB split: one image per task, so featurisation is 40 tasks
# long and a kill lands while some are running and others wait.
# One image per task (a wide window to kill in): Spark's binaryFile source packs files by
# openCostInBytes; the default local walk packs by count, so these runs read through Spark.
ONE_FILE_PER_TASK = (
    "--storage",
    "hadoop",
    "--conf",
    "spark.sql.files.openCostInBytes=134217728",
)
RUN_TIMEOUT = 480


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from conftest import require_service

    has_java = shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))
    require_service("Java", has_java, "cannot start a Spark cluster")
    c = StandaloneCluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory, sample_dir) -> Path:
    """4 classes x (7 train + 3 test) = 40 images from the sample."""
    root = tmp_path_factory.mktemp("cluster-input") / "in"
    for label in CLASSES:
        for split, keep in (("Training", 7), ("Test", 3)):
            (root / split / label).mkdir(parents=True)
            for f in sorted((sample_dir / split / label).iterdir())[:keep]:
                shutil.copy(f, root / split / label / f.name)
    return root


DRIVERS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_driver_left_behind():
    """A failing test must not leave its `fruits run` (and driver JVM) running."""
    yield
    while DRIVERS:
        proc = DRIVERS.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def fruits_run(cluster: StandaloneCluster, inp: Path, out: Path, ui_port: int, *extra: str):
    cmd = [
        sys.executable, "-m", "fruits", "run", "--input", str(inp), "--output", str(out),
        "--master", cluster.url, "--pca-k", "5", "--no-classify",
        "--conf", "spark.driver.host=127.0.0.1", "--conf", f"spark.ui.port={ui_port}",
        "--conf", "spark.executor.memory=1g", "--conf", "spark.cores.max=2", *extra,
    ]  # fmt: skip
    with open(out.parent / f"{out.name}-driver.log", "ab") as log:
        proc = subprocess.Popen(
            cmd, env=spark_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    DRIVERS.append(proc)
    return proc


def finish(proc: subprocess.Popen, out: Path) -> None:
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = None
    if rc != 0:
        log = (out.parent / f"{out.name}-driver.log").read_text(errors="replace")
        pytest.fail(f"fruits run exited with {rc}:\n{log[-4000:]}")


def wait_featurizing(proc: subprocess.Popen, ui_port: int, *, both_busy: bool) -> dict:
    """Block until the featurize job runs with work done, work running and work waiting."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc={proc.returncode}) before featurisation was seen")
        job = running_job(f"http://127.0.0.1:{ui_port}", "featurize")
        if job:
            done, active = job["numCompletedTasks"], job["numActiveTasks"]
            waiting = job["numTasks"] - done - active
            if done >= 1 and active >= (2 if both_busy else 1) and waiting >= 4:
                return job
        time.sleep(0.1)
    pytest.fail("featurisation never observed")


def output_rows(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out / "images.parquet")
    assert df["path"].is_unique, "duplicate rows in the output"
    return df.set_index("path").sort_index()


def test_cluster_run_equals_local_run(cluster, images_dir, spark, tmp_path):
    out_cluster, out_local = tmp_path / "cluster", tmp_path / "local"
    finish(fruits_run(cluster, images_dir, out_cluster, free_port()), out_cluster)
    cfg = PipelineConfig(
        input=str(images_dir), output=str(out_local), classify=False, reduce=ReduceConfig(k=5)
    )
    run_pipeline(cfg, spark=spark)
    a, b = output_rows(out_cluster), output_rows(out_local)
    assert len(a) == N_IMAGES
    assert list(a.index) == list(b.index)
    assert (a[["label", "split", "length"]] == b[["label", "split", "length"]]).all().all()
    fa, fb = np.stack(a["features"]), np.stack(b["features"])
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-5)
    pa, pb = np.stack(a["pca"]), np.stack(b["pca"])
    signs = np.sign(np.sum(pa * pb, axis=0))  # a component's sign is arbitrary
    np.testing.assert_allclose(pa, pb * signs, rtol=1e-3, atol=1e-3 * np.abs(pb).max())
    report = json.loads((out_cluster / "report.json").read_text())
    assert report["spark"]["master"] == cluster.url
    assert report["task_retries"]["failed_tasks"] == 0


def test_worker_killed_while_featurizing_run_completes_exactly_once(cluster, images_dir, tmp_path):
    out, ui = tmp_path / "out", free_port()
    proc = fruits_run(cluster, images_dir, out, ui, *ONE_FILE_PER_TASK)
    try:
        wait_featurizing(proc, ui, both_busy=True)
        cluster.kill_worker(0)  # the worker, its executor and its Python workers
        finish(proc, out)
    finally:
        cluster.ensure_workers()
    rows = output_rows(out)
    assert len(rows) == N_IMAGES
    assert set(rows.index) == {f"file:{p}" for p in images_dir.rglob("*.jpg")}
    report = json.loads((out / "report.json").read_text())
    assert report["images_quarantined"] == 0
    retries = report["task_retries"]
    assert retries["failed_tasks"] + retries["stage_retries"] >= 1, retries


def test_driver_killed_then_rerun_gives_one_complete_output(cluster, images_dir, tmp_path):
    out = tmp_path / "out"
    proc = fruits_run(cluster, images_dir, out, free_port(), *ONE_FILE_PER_TASK)
    wait_featurizing(proc, int(_ui_port(proc)), both_busy=False)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver's Python and its JVM
    proc.wait(timeout=30)

    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert leftovers, "the killed run should have been caught while writing to staging"
    assert not list(tmp_path.rglob("_SUCCESS.json")), "a killed run left a finished-looking output"

    cluster.wait_idle()
    again = fruits_run(cluster, images_dir, out, free_port(), *ONE_FILE_PER_TASK)
    finish(again, out)
    rows = output_rows(out)
    assert len(rows) == N_IMAGES
    assert (out / "_SUCCESS.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # cleaned up


def _ui_port(proc: subprocess.Popen) -> str:
    args = proc.args
    assert isinstance(args, list)
    return next(a.split("=", 1)[1] for a in args if str(a).startswith("spark.ui.port="))
