"""The Databricks Asset Bundle and notebook refer only to things that exist in the package:
entry point, CLI command and options, job parameters, variables, and the wheel the build makes;
the job and cluster are valid by Databricks' own models (`databricks-bundles`), and storage is a
Unity Catalog volume reached without a key."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extra")
tomllib = pytest.importorskip("tomllib", reason="Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "deploy" / "databricks"


@pytest.fixture(scope="module")
def bundle() -> dict:
    main = yaml.safe_load((BUNDLE / "databricks.yml").read_text())
    merged = {**main, "resources": {}}
    for pattern in main["include"]:
        files = sorted(BUNDLE.glob(pattern))
        assert files, f"include {pattern} matches nothing"
        for f in files:
            for kind, items in yaml.safe_load(f.read_text())["resources"].items():
                merged["resources"].setdefault(kind, {}).update(items)
    return merged


@pytest.fixture(scope="module")
def job(bundle) -> dict:
    return bundle["resources"]["jobs"]["fruits_pipeline"]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_entry_point_exists(job, pyproject):
    task = job["tasks"][0]["python_wheel_task"]
    assert task["package_name"] == pyproject["project"]["name"]
    target = pyproject["project"]["scripts"][task["entry_point"]]
    module, _, func = target.partition(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_cli_command_and_options_exist(job):
    import typer.main

    from fruits.cli import app

    params = job["tasks"][0]["python_wheel_task"]["parameters"]
    group = typer.main.get_command(app)
    command = group.commands[params[0]]  # type: ignore[attr-defined]
    options = {opt for p in command.params for opt in p.opts}
    flags = [p for p in params[1:] if p.startswith("--")]
    assert flags and set(flags) <= options, set(flags) - options
    declared = {p["name"] for p in job["parameters"]}
    used = set(re.findall(r"\{\{job\.parameters\.(\w+)\}\}", " ".join(params)))
    assert used and used <= declared
    storage = next(p for p in job["parameters"] if p["name"] == "storage")
    assert storage["default"] in ("auto", "hadoop", "fsspec")


def test_variables_are_defined(bundle):
    text = (BUNDLE / "databricks.yml").read_text() + "".join(
        f.read_text() for f in (BUNDLE / "resources").glob("*.yml")
    )
    used = set(re.findall(r"\$\{var\.(\w+)\}", text))
    assert used <= set(bundle["variables"]), used - set(bundle["variables"])


def test_cluster_scales_and_stops(job, bundle):
    cluster = job["job_clusters"][0]["new_cluster"]
    assert cluster["autoscale"]["min_workers"] >= 1
    assert job["timeout_seconds"] > 0  # a job cluster ends with the run; this bounds a hang
    interactive = bundle["resources"]["clusters"]["fruits_interactive"]
    assert 0 < interactive["autotermination_minutes"] <= 60
    assert int(bundle["variables"]["max_workers"]["default"]) >= 1


def test_runtime_matches_the_spark_the_package_needs(bundle, pyproject):
    runtime = bundle["variables"]["spark_version"]["default"]
    major = int(runtime.split(".")[0])
    assert major >= 17, "Databricks Runtime 17+ ships Spark 4.0"
    extras = pyproject["project"]["optional-dependencies"]
    assert any(d.startswith("pyspark>=4.0") for d in extras["spark"])


def test_wheel_is_built_and_installed(job, bundle):
    artifact = bundle["artifacts"]["fruits_wheel"]
    assert (BUNDLE / artifact["path"]).resolve() == ROOT
    out = re.search(r"-w (\S+)", artifact["build"]).group(1)
    libs = [lib["whl"] for lib in job["tasks"][0]["libraries"]]
    jobfile = BUNDLE / "resources"
    assert any((jobfile / lib).resolve().parent == (ROOT / out).resolve() for lib in libs), libs


def test_wheel_library_lies_inside_the_sync_root(job, bundle):
    """The CLI refuses a library path outside the sync root ("not contained in sync root
    path"); the sync root is the bundle folder unless `sync.paths` widens it."""
    roots = [(BUNDLE / p).resolve() for p in bundle.get("sync", {}).get("paths", ["."])]
    for lib in job["tasks"][0]["libraries"]:
        path = (BUNDLE / "resources" / lib["whl"]).resolve()
        assert any(path.is_relative_to(root) for root in roots), (lib, roots)
    # built, not committed: git ignores the wheel folder, so `bundle sync` skips it too
    ignore = (BUNDLE / ".gitignore").read_text().split()
    assert "dist/" in ignore


def test_no_storage_key_in_the_bundle(job, bundle):
    """Storage access is Unity Catalog grants (volume or external location), not a key."""
    text = "".join(f.read_text() for f in BUNDLE.rglob("*") if f.suffix in (".yml", ".py"))
    assert "fs.azure.account.key" not in text and "{{secrets/" not in text
    clusters = [job["job_clusters"][0]["new_cluster"], *bundle["resources"]["clusters"].values()]
    for cluster in clusters:
        assert cluster["data_security_mode"] == "SINGLE_USER"  # a Unity Catalog access mode
        for key in cluster.get("spark_conf", {}):
            assert not re.search(r"key|secret|sas|oauth|fs\.azure", key, re.I), key


def test_job_and_cluster_are_valid_bundle_resources(job, bundle):
    """Databricks' Python models of bundle resources refuse unknown fields, missing required
    fields and wrong types: a malformed job fails here, not at `bundle deploy`."""
    pytest.importorskip("databricks.bundles", reason="databricks-bundles (dev)")
    from databricks.bundles.clusters import Cluster
    from databricks.bundles.experiments import MlflowExperiment
    from databricks.bundles.jobs import Job

    assert Job.from_dict(job).as_dict() == job
    for cluster in bundle["resources"]["clusters"].values():
        assert Cluster.from_dict(cluster).as_dict() == cluster
    for experiment in bundle["resources"]["experiments"].values():
        assert MlflowExperiment.from_dict(experiment).as_dict() == experiment


def test_resource_references_exist_and_the_job_is_tracked(job, bundle):
    text = "".join(f.read_text() for f in (BUNDLE / "resources").glob("*.yml"))
    refs = set(re.findall(r"\$\{resources\.(\w+)\.(\w+)\.\w+\}", text))
    assert refs and all(key in bundle["resources"].get(kind, {}) for kind, key in refs), refs
    from fruits.tracking import TRACKING_ENV

    env = job["job_clusters"][0]["new_cluster"]["spark_env_vars"]
    assert env[TRACKING_ENV] == "databricks" and env["MLFLOW_EXPERIMENT_ID"]


def test_a_malformed_job_fails_the_models(job):
    pytest.importorskip("databricks.bundles", reason="databricks-bundles (dev)")
    from databricks.bundles.jobs import Job

    task = job["tasks"][0]
    misspelt = {**job, "tasks": [{**task, "python_wheel_tsk": task["python_wheel_task"]}]}
    wheel = {k: v for k, v in task["python_wheel_task"].items() if k != "package_name"}
    incomplete = {**job, "tasks": [{**task, "python_wheel_task": wheel}]}
    for bad in (misspelt, incomplete, {**job, "timeout_seconds": "two hours"}):
        with pytest.raises((ValueError, TypeError)):
            Job.from_dict(bad)


def test_input_and_output_are_unity_catalog_volumes(bundle):
    """The defaults are volume paths the storage plan recognises (storage.plan.volume_path),
    so the job lists them with Spark as dbfs:/Volumes/... instead of walking them."""
    from fruits.storage.plan import volume_path

    names = {"catalog": "main", "schema": "fruits", "volume": "data"}
    for name in ("input", "output"):
        default = bundle["variables"][name]["default"]
        path = re.sub(r"\$\{var\.(\w+)\}", lambda m: names[m.group(1)], default)
        assert path.startswith("/Volumes/main/fruits/data/") and volume_path(path) == path
    for name in ("catalog", "schema", "volume"):
        assert name in bundle["variables"]


def test_eu_region_is_stated():
    text = (BUNDLE / "databricks.yml").read_text()
    assert "GDPR" in text and re.search(r"westeurope|northeurope", text)


def test_notebook_calls_the_package_and_holds_no_logic():
    path = BUNDLE / "notebooks" / "fruits_pipeline.py"
    source = path.read_text()
    assert source.startswith("# Databricks notebook source\n")
    assert source.count("# COMMAND ----------") >= 5
    tree = ast.parse(source)
    defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not defs, "the notebook should call the package, not define its own logic"
    imported = [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fruits")
        for alias in node.names
    ]
    assert {m for m, _ in imported} >= {"fruits.pipeline", "fruits.config", "fruits.storage.plan"}
    for module, name in imported:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def test_databricks_wheel_needs_neither_pyspark_nor_torch(bundle, pyproject):
    build = bundle["artifacts"]["fruits_wheel"]["build"]
    assert "pip wheel" in build and "--no-deps" in build
    runtime = " ".join(pyproject["project"]["dependencies"])
    assert "pyspark" not in runtime and "torch" not in runtime
    extras = pyproject["project"]["optional-dependencies"]
    assert any(r.startswith("pyspark") for r in extras["spark"])
    assert "torch==2.13.0" in extras["export"]
