"""Credentials inside URLs (a password in `user:pw@`, `?token=`, Spark Connect's `;token=`) never
reach the terminal, the log, report.json or MLflow: the real CLI, real log handlers and a real
MLflow file store, each searched for the secret strings."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fruits.azure import install_log_redaction, redact

PASSWORD = "PWd0ntPrintMe7"
TOKEN = "T0kenNeverShown42"
SECRETS = (PASSWORD, TOKEN)


@pytest.fixture
def no_secret_env(monkeypatch):
    from fruits import azure

    for name in (*azure.SECRET_ENV, *azure.OTHER_SECRET_ENV):
        monkeypatch.delenv(name, raising=False)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://bob:PW1@host/w.pth", "https://bob:***@host/w.pth"),
        (
            "MLFLOW_TRACKING_URI=http://alice:PW2@mlflow:5000",
            "MLFLOW_TRACKING_URI=http://alice:***@mlflow:5000",
        ),
        ("GET https://h/w?token=T1&x=1 failed", "GET https://h/w?token=***&x=1 failed"),
        (
            "https://h/a?access_token=A&api_key=B&X-Amz-Signature=C&n=2",
            "https://h/a?access_token=***&api_key=***&X-Amz-Signature=***&n=2",
        ),
        ("sc://host:443/;token=XYZ;user_id=u1", "sc://host:443/;token=***;user_id=u1"),
        ("sc://h:15002/;user_id=u;token=XYZ", "sc://h:15002/;user_id=u;token=***"),
        ('{"password": "hunter2", "token": null}', '{"password": "***", "token": null}'),
        # not secrets: a container in abfss's userinfo, a port, an @ in a path, plain queries
        (
            "abfss://fruits@acct.dfs.core.windows.net/x",
            "abfss://fruits@acct.dfs.core.windows.net/x",
        ),
        ("https://h:8443/p@x", "https://h:8443/p@x"),
        (
            "https://x/list?restype=container&comp=list",
            "https://x/list?restype=container&comp=list",
        ),
    ],
)
def test_redact_url_credentials(no_secret_env, text, expected):
    assert redact(text) == expected


def test_redact_values_of_other_services_secret_variables(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "dapi0123456789abcdef")
    assert redact("Authorization failed for dapi0123456789abcdef") == "Authorization failed for ***"


def test_every_log_record_is_redacted_whichever_handler_prints_it(no_secret_env):
    """MLflow logs through its own handler with propagation off; a handler added after the
    CLI set logging up is not covered by handler filters: the record factory catches both."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    own = logging.getLogger("test_secrets.thirdparty")
    own.propagate = False
    own.setLevel(logging.DEBUG)
    handler = Keep()
    old_factory = logging.getLogRecordFactory()
    try:
        install_log_redaction()
        own.addHandler(handler)  # added after the install, as a library would
        own.debug("GET %s", f"https://h/w?token={TOKEN}")
        own.info("tracking at http://alice:%s@mlflow:5000", PASSWORD)
        try:
            raise RuntimeError(f"cannot reach sc://h:443/;token={TOKEN};user_id=u")
        except RuntimeError:
            own.exception("connect failed")
    finally:
        own.removeHandler(handler)
        logging.setLogRecordFactory(old_factory)
    joined = "\n".join(lines)
    assert not any(s in joined for s in SECRETS), joined
    assert "token=***" in joined and "alice:***@mlflow" in joined
    assert "RuntimeError: cannot reach sc://h:443/;token=***;user_id=u" in joined


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SPARK_REMOTE"))}
    env.update(extra)
    env["HOME"] = str(tmp_path)  # no user's ~/.fruits cache or mlflow config
    return env


def _fruits() -> str:
    return str(Path(sys.executable).with_name("fruits"))


def test_cli_run_never_prints_a_weights_url_password(tmp_path, no_secret_env, small_input):
    """The issue's case: `--weights https://bob:PW@host/w.pth` printed the password without -v
    (and `?token=` landed in the DEBUG log with -v)."""
    url = f"https://bob:{PASSWORD}@127.0.0.1:{closed_port()}/w.pth;token={TOKEN}"
    for verbose in ([], ["-v"]):
        args = ["--weights", url, "--backbone", "mobilenet_v2", "--input", str(small_input)]
        result = subprocess.run(
            [_fruits(), "run", *verbose, *args, "--output", str(tmp_path / "out")],
            capture_output=True,
            text=True,
            env=_env(tmp_path),
            timeout=600,
        )
        assert result.returncode != 0
        both = result.stdout + result.stderr
        assert not any(s in both for s in SECRETS), both
        assert "error:" in result.stderr


def test_cli_remote_token_never_printed(tmp_path, no_secret_env):
    """`--remote sc://host:port/;token=...` that Spark Connect refuses: one error line, with
    -v's debug log, and no token. (A URL that parses retries its connection for minutes.)"""
    pytest.importorskip("pyspark.sql.connect.client", reason="the Spark Connect client (dev)")
    url = f"sc://127.0.0.1:{closed_port()}/;token={TOKEN};user_id=alice;no-value"
    result = subprocess.run(
        [_fruits(), "run", "-v", "--remote", url, "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=600,
    )
    both = result.stdout + result.stderr
    assert result.returncode != 0 and "error:" in result.stderr
    assert TOKEN not in both, both


@pytest.fixture(scope="module")
def small_input(tmp_path_factory) -> Path:
    """Three classes of the bundled sample, 8 training and 4 test photos each."""
    from fruits.config import bundled_sample

    root = Path(bundled_sample())
    dest = tmp_path_factory.mktemp("small") / "fruits"
    for split, n in (("Training", 8), ("Test", 4)):
        for label in ("Apple Red 1", "Banana 1", "Kiwi 1"):
            (dest / split / label).mkdir(parents=True)
            for f in sorted((root / split / label).glob("*.jpg"))[:n]:
                shutil.copy(f, dest / split / label / f.name)
    return dest


@pytest.mark.slow
def test_cli_run_keeps_url_secrets_out_of_output_report_and_mlflow(
    tmp_path, small_input, monkeypatch
):
    """A full run with credentials in a setting (a URL with a password and a `?token=`),
    tracked to a real MLflow file store: the secrets appear nowhere."""
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (in dev)")
    store = tmp_path / "mlruns"
    repo = f"https://bob:{PASSWORD}@data.example/fruits?token={TOKEN}"
    env = _env(
        tmp_path,
        MLFLOW_TRACKING_URI=store.as_uri(),
        MLFLOW_ALLOW_FILE_STORE="true",
        MLFLOW_EXPERIMENT_NAME="secrets",
    )
    out = tmp_path / "out"
    args = ["--input", str(small_input), "--image-size", "64"]
    result = subprocess.run(
        [
            _fruits(),
            "run",
            "-v",
            *args,
            "--output",
            str(out),
            "--conf",
            f"spark.fruits.source={repo}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    both = result.stdout + result.stderr
    assert not any(s in both for s in SECRETS), both
    report = (out / "report.json").read_text()
    assert not any(s in report for s in SECRETS)
    assert "bob:***@data.example/fruits?token=***" in report
    everything = [p for p in store.rglob("*") if p.is_file() and p.stat().st_size < 1 << 20]
    assert any(p.parent.name == "params" for p in everything)
    for path in everything:
        text = path.read_bytes().decode("utf-8", "replace")
        assert not any(s in text for s in SECRETS), path
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: file store needs opting in
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert run.data.params["spark_conf.spark.fruits.source"].startswith("https://bob:***@")
    assert json.loads(report)["run_id"] == run.info.run_name
