"""The `fruits` root options and the choice-typed `run` options (CliRunner, no Spark)."""

import json
import os
import subprocess
import sys
from typing import get_args

import pytest
from typer.testing import CliRunner

import fruits
from fruits.cli import Storage, app
from fruits.config import Engine, OnError, Precision

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"fruits {fruits.__version__}"


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    assert version("fruits") == fruits.__version__  # pyproject reads it from fruits/__init__.py


@pytest.mark.parametrize(
    ("option", "literal"),
    [
        ("--on-error", OnError),
        ("--engine", Engine),
        ("--precision", Precision),
        ("--storage", Storage),
    ],
)
def test_choices_come_from_the_config_literals(option, literal):
    help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "250"}).output
    line = next(ln for ln in help_text.splitlines() if f" {option} " in ln)
    assert f"<{'|'.join(get_args(literal))}>" in line

    result = runner.invoke(app, ["run", option, "nonsense"])
    assert result.exit_code == 2, result.output
    assert "nonsense" in result.output


def test_a_usage_error_is_one_line_and_exit_2():
    result = runner.invoke(app, ["run", "--on-error", "nope"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fruits: error: Invalid value for '--on-error'")
    assert "╭" not in result.output  # no rich box
    missing = runner.invoke(app, ["evaluate"])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == (
        "fruits: error: Missing option '--run'. (see 'fruits evaluate --help')"
    )


@pytest.mark.parametrize("command", ["run", "refit", "evaluate", "serve", "upload", "download"])
def test_help_fits_80_columns_without_python_type_names(command):
    text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}).output
    assert max(len(line) for line in text.splitlines()) <= 80
    for noise in ("<str>", "<list[str]>", "<int>", "<float>", "<bool>", "╭"):
        if command in ("upload", "download") and noise == "<str>":
            continue  # Typer names positional arguments' type; no option says it
        assert noise not in text, (noise, text)
    if command == "run":
        assert len(text.splitlines()) < 60


# Runs the CLI in a fresh interpreter, optionally with pyspark unimportable (the plain wheel),
# and reports the exit code, stderr and whether pyspark was imported at all.
CHILD = """
import json, sys
if {block}:
    sys.modules["pyspark"] = None  # `import pyspark` raises ModuleNotFoundError
from fruits.cli import main
sys.argv = ["fruits", *{args!r}]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "pyspark": "pyspark" in sys.modules
                  and sys.modules["pyspark"] is not None}}))
"""


def _cli(args: list[str], *, block: bool) -> tuple[dict, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SPARK_REMOTE"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(block=block, args=args)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout, out.stderr


def test_a_missing_input_is_reported_before_spark_is_even_imported(tmp_path):
    missing = tmp_path / "missing"
    got, _, err = _cli(
        ["run", "--input", str(missing), "--output", str(tmp_path / "o")], block=False
    )
    assert got == {"code": 2, "pyspark": False}
    assert err.strip() == f"error: input not found: {missing}"


@pytest.mark.parametrize("command", ["run", "refit"])
def test_without_pyspark_a_spark_command_says_what_to_install(tmp_path, command):
    got, _, err = _cli([command, "--output", str(tmp_path / "o")], block=True)
    assert got["code"] == 2
    assert err.strip() == "error: pyspark is missing: pip install 'fruits[spark]'"
    assert not (tmp_path / "o").exists()


def test_without_pyspark_upload_and_download_still_work(tmp_path):
    for command in ("upload", "download"):
        got, out, err = _cli([command, "--help"], block=True)
        assert got["code"] == 0 and "Usage: fruits " + command in out, err
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jpg").write_bytes(b"x")
    got, _, err = _cli(
        ["upload", str(tmp_path / "src"), "ftp://nowhere/x", "--dry-run"], block=True
    )
    assert got["code"] in (1, 2) and not got["pyspark"]
    assert len(err.strip().splitlines()) == 1 and "pyspark" not in err, err
