"""The `fruits` root options and the choice-typed `run` options (CliRunner, no Spark)."""

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
