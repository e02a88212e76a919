"""ImageFeaturizer through Spark Connect: a real local Connect server (the one pyspark ships in
`pyspark/jars/spark-connect_*.jar`), a client that only speaks gRPC to it, and the same numbers
as the classic session.

The client runs in its own Python process (this file, run as a script): one process cannot hold
a classic and a Connect session at once (`SparkSession.builder.remote` refuses while a
SparkContext is up), and `pyspark.ml` picks its Connect code paths from a process-wide variable
that would turn every later test in this run into a Connect test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from conftest import require_service

CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
START_TIMEOUT_S = 180  # measured: about 12 s on two shared cores; a loaded CI machine is slower


def pipeline_stages() -> list:
    """The user's pipeline, one definition for both sessions."""
    from pyspark.ml.feature import PCA, StandardScaler

    from fruits.ml import ImageFeaturizer

    return [
        ImageFeaturizer(),
        StandardScaler(inputCol="features", outputCol="scaled", withMean=True),
        PCA(k=8, inputCol="scaled", outputCol="pca"),
    ]


def run_pipeline(spark: Any, root: str) -> dict[str, dict[str, list[float]]]:
    """Fit and apply the pipeline on the sample's Test split: path -> features and PCA."""
    from pyspark.ml import Pipeline

    images = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "*.jpg")
        .load(os.path.join(root, "Test"))
    )
    model = Pipeline(stages=pipeline_stages()).fit(images)
    rows = model.transform(images).select("path", "features", "pca", "error").collect()
    assert all(r.error is None for r in rows), [r.error for r in rows if r.error]
    return {
        r.path: {"features": r.features.toArray().tolist(), "pca": r.pca.toArray().tolist()}
        for r in rows
    }


@dataclass(frozen=True)
class ConnectServer:
    url: str
    startup_s: float
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def connect_client_ready() -> str:
    """Why the Connect client cannot run here, or '' when it can (pyspark[connect] extras)."""
    try:
        import grpc  # noqa: F401
        import grpc_status  # noqa: F401
        from google.rpc import status_pb2  # noqa: F401
    except ImportError as exc:
        return f"the Connect client needs pyspark[connect] (grpcio, grpcio-status): {exc}"
    return ""


def _start_server(workdir: Path) -> Iterator[ConnectServer | str]:
    """Start the server with pyspark's own spark-submit; yield it, or why it did not start."""
    import pyspark

    home = Path(pyspark.__file__).parent
    submit = home / "bin" / "spark-submit"
    jars = sorted((home / "jars").glob("spark-connect_*.jar"))
    if shutil.which("java") is None or not submit.exists() or not jars:
        yield f"needs java and pyspark's spark-submit + spark-connect jar (jars: {jars})"
        return
    port = free_port()
    log = workdir / "connect-server.log"
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "PYSPARK_PYTHON": sys.executable,  # workers import fruits from this environment
    }
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    command = [
        str(submit),
        "--class",
        CONNECT_CLASS,
        "--master",
        "local[2]",
        "--conf",
        "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf",
        f"spark.connect.grpc.binding.port={port}",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.sql.shuffle.partitions=4",
        "--conf",
        "spark.driver.memory=2g",
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        # spark-class execs java, so this pid is the server's JVM; its own group, so a stop
        # reaches nothing else.
        server = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while not port_open(port):
            if server.poll() is not None:
                yield f"server exited with {server.returncode}: {log.read_text()[-2000:]}"
                return
            if time.monotonic() - started > START_TIMEOUT_S:
                yield f"server not listening after {START_TIMEOUT_S} s: {log.read_text()[-2000:]}"
                return
            time.sleep(0.25)
        yield ConnectServer(f"sc://127.0.0.1:{port}", time.monotonic() - started, log)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    why = connect_client_ready()
    if why:
        require_service("Spark Connect client", False, why)
    started = _start_server(tmp_path_factory.mktemp("connect-server"))
    server = next(started)
    if isinstance(server, str):
        started.close()
        require_service("Spark Connect server", False, server)
    assert isinstance(server, ConnectServer)
    print(f"\nSpark Connect server listening after {server.startup_s:.1f} s")
    yield server
    started.close()


def test_featurizer_pipeline_through_connect_equals_classic(
    spark: Any,
    sample_dir: Path,
    connect_server: ConnectServer,
    tmp_path: Path,
    record_property: Any,
) -> None:
    record_property("connect_server_startup_s", round(connect_server.startup_s, 1))
    out = tmp_path / "connect.json"
    drop = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "MASTER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYSPARK_PYTHON"] = sys.executable
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, __file__, connect_server.url, str(sample_dir), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    client_s = time.monotonic() - began
    assert done.returncode == 0, done.stderr[-4000:]
    remote = json.loads(out.read_text())
    classic = run_pipeline(spark, str(sample_dir))
    print(f"Connect client run {client_s:.1f} s (80 images, fit + transform)")

    assert sorted(remote) == sorted(classic)
    assert len(classic) == 80
    paths = sorted(classic)
    for column in ("features", "pca"):
        got = np.array([remote[p][column] for p in paths])
        want = np.array([classic[p][column] for p in paths])
        if column == "pca":  # a component's sign is arbitrary: align before comparing
            got *= np.sign((got * want).sum(axis=0))
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=column)


def test_fruits_run_through_connect_equals_classic(
    sample_run: Any, sample_dir: Path, connect_server: ConnectServer, tmp_path: Path
) -> None:
    """The whole `fruits run` on the sample through Spark Connect (`--remote`): the same
    report figures, features, PCA and served answers as the classic run of the same images."""
    import pandas as pd

    from fruits.predictor import Predictor

    out = tmp_path / "connect-out"
    drop = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "MASTER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fruits",
            "run",
            "--input",  # named: with no --input the bundled negatives join (not in sample_run)
            str(sample_dir),
            "--remote",
            connect_server.url,
            "--output",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    remote = json.loads((out / "report.json").read_text())
    classic = sample_run.report
    for key in ("images_ok", "images_quarantined", "classes", "pca_k", "accuracy", "macro_f1"):
        assert remote[key] == pytest.approx(classic[key], abs=1e-6), key
    assert remote["spark"]["master"].startswith("connect")
    assert remote["task_retries"] is None  # no status tracker on a Connect client

    classic_dir = Path(unquote(urlparse(sample_run.output).path))
    want = pd.read_parquet(classic_dir / "images.parquet").set_index("path").sort_index()
    got = pd.read_parquet(out / "images.parquet").set_index("path").sort_index()
    assert list(got.index) == list(want.index) and len(got) == 320
    np.testing.assert_allclose(np.stack(got["features"]), np.stack(want["features"]), atol=1e-5)
    g, w = np.stack(got["pca"]), np.stack(want["pca"])
    np.testing.assert_allclose(g * np.sign((g * w).sum(axis=0)), w, atol=1e-3)

    served, reference = Predictor.load(out, threads=1), Predictor.load(classic_dir, threads=1)
    for photo in sorted((sample_dir / "Test").glob("*/*.jpg"))[::8]:
        data = photo.read_bytes()
        assert served.predict(data).labels[0] == reference.predict(data).labels[0], photo


def client_main(url: str, root: str, out: str) -> None:
    """The user's side: only `SparkSession.builder.remote`, no JVM in this process."""
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).getOrCreate()
    try:
        Path(out).write_text(json.dumps(run_pipeline(spark, root)))
    finally:
        spark.stop()


if __name__ == "__main__":
    client_main(*sys.argv[1:4])
