"""Checks made before a Spark session starts (fruits.preflight): no Spark in these tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from fruits.config import PipelineConfig, ReduceConfig
from fruits.preflight import PreflightError, check


def _cfg(tmp_path: Path, **kw: object) -> PipelineConfig:
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    return PipelineConfig(**{"input": str(src), "output": str(tmp_path / "out"), **kw})  # type: ignore[arg-type]


def test_a_good_configuration_passes(tmp_path: Path) -> None:
    check(_cfg(tmp_path))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: {"input": str(t / "nope")}, "input not found: {t}/nope"),
        (lambda t: {"negatives": (str(t / "neg"),)}, "input not found: {t}/neg"),
        (lambda t: {"label_map": str(t / "map.json")}, "--label-map {t}/map.json: file not found"),
        (lambda t: {"output": str(t / "in")}, "--output {t}/in is the input itself"),
        (lambda t: {"output": str(t / "in" / "o")}, "--output {t}/in/o is inside the input"),
        (lambda t: {"output": str(t)}, "--output {t} contains the input"),
        (lambda t: {"master": "local[1]", "remote": "sc://h"}, "--remote and --master"),
        (lambda t: {"verify_content": True}, "--verify-content only applies"),
        (lambda t: {"reduce": ReduceConfig(variance=1.5)}, "--pca-variance must be in (0, 1]"),
        (lambda t: {"reduce": ReduceConfig(k=0)}, "--pca-k must be at least 1"),
    ],
)
def test_each_mistake_is_one_line(tmp_path: Path, change, message: str) -> None:
    cfg = _cfg(tmp_path, **change(tmp_path))
    with pytest.raises(ValueError) as caught:
        check(cfg, remote=cfg.remote)
    text = str(caught.value)
    assert text.startswith(message.format(t=tmp_path)) and "\n" not in text


def test_a_label_map_that_is_not_json_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "map.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"--label-map .*map.json: not readable JSON"):
        check(_cfg(tmp_path, label_map=str(bad)))


def test_remote_inputs_are_left_to_the_stages(tmp_path: Path) -> None:
    check(_cfg(tmp_path, input="abfss://c@a.dfs.core.windows.net/x"))
    # a Connect server reads its own disks: a path missing here may exist there
    check(_cfg(tmp_path, input="/only/on/the/server"), remote="sc://server:15002")
    with pytest.raises(PreflightError):
        check(_cfg(tmp_path, input="/only/on/the/server"))


def test_a_password_in_a_spark_setting_is_refused_before_the_jvm_prints_it(tmp_path: Path) -> None:
    """Spark's JVM prints `spark.jars.repositories` on stderr before anything redacts it."""
    secret = "https://bob:PWSECRET@repo.example/maven"
    cfg = _cfg(tmp_path, spark_conf={"spark.jars.repositories": secret})
    with pytest.raises(PreflightError) as err:
        check(cfg)
    assert "spark.jars.repositories" in str(err.value) and "PWSECRET" not in str(err.value)
    check(
        _cfg(tmp_path, spark_conf={"spark.jars.repositories": "https://repo.example/maven"})
    )  # a URL without credentials is fine
