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
def jobs(bundle) -> dict:
    return bundle["resources"]["jobs"]


@pytest.fixture(scope="module")
def serverless(jobs) -> dict:
    return jobs["fruits_pipeline_serverless"]


def job_clusters(jobs: dict) -> list[dict]:
    return [c["new_cluster"] for j in jobs.values() for c in j.get("job_clusters", [])]


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


def test_cluster_scales_and_stops(job, jobs, bundle):
    cluster = job["job_clusters"][0]["new_cluster"]
    assert cluster["autoscale"]["min_workers"] >= 1
    assert int(bundle["variables"]["max_workers"]["default"]) >= 1
    for name, each in jobs.items():
        # a job cluster ends with the run; this bounds a hang
        assert each["timeout_seconds"] > 0, name


def test_no_all_purpose_cluster_by_default(jobs, bundle):
    """Nothing idles between runs: no `clusters` resource; every task runs on a job cluster
    of its own job or in a serverless environment, never on an existing cluster."""
    assert not bundle["resources"].get("clusters"), "an all-purpose cluster bills while idle"
    for name, each in jobs.items():
        clusters = {c["job_cluster_key"] for c in each.get("job_clusters", [])}
        environments = {e["environment_key"] for e in each.get("environments", [])}
        for task in each["tasks"]:
            assert "existing_cluster_id" not in task, name
            assert task.get("job_cluster_key") in clusters or (
                task.get("environment_key") in environments
            ), (name, task["task_key"])


def test_runtime_matches_the_spark_the_package_needs(bundle, pyproject):
    runtime = bundle["variables"]["spark_version"]["default"]
    major = int(runtime.split(".")[0])
    assert major >= 17, "Databricks Runtime 17+ ships Spark 4.0"
    extras = pyproject["project"]["optional-dependencies"]
    assert any(d.startswith("pyspark>=4.0") for d in extras["spark"])


def wheel_references(jobs: dict) -> list[str]:
    """Every place a job names the wheel: task libraries and serverless dependencies."""
    refs = [lib["whl"] for j in jobs.values() for t in j["tasks"] for lib in t.get("libraries", [])]
    for each in jobs.values():
        for env in each.get("environments", []):
            refs += [d for d in env["spec"]["dependencies"] if d.endswith(".whl")]
    return refs


def test_wheel_is_built_where_the_bundle_looks_for_it(jobs, bundle):
    """The CLI runs `build` in the artifact's `path` and then takes the files that `files`
    names, relative to the YAML file that declares the artifact (databricks.yml here); without
    `files` it looks in <path>/dist, the repo root's dist/, where nothing was built."""
    artifact = bundle["artifacts"]["fruits_wheel"]
    assert (BUNDLE / artifact["path"]).resolve() == ROOT
    out = (ROOT / re.search(r"-w (\S+)", artifact["build"]).group(1)).resolve()
    sources = [BUNDLE / f["source"] for f in artifact["files"]]
    assert sources and all(src.parent.resolve() == out for src in sources), (sources, out)
    assert all(src.name.startswith("fruits-") and src.suffix == ".whl" for src in sources)
    refs = wheel_references(jobs)
    assert len(refs) >= 3, refs  # classic job, serverless job, notebook job
    for ref in refs:
        assert (BUNDLE / "resources" / ref).resolve() == sources[0].resolve(), ref


def test_the_build_command_writes_the_wheel_files_names(bundle, tmp_path):
    """The artifact's build, run as the CLI runs it (in `path`), with the output folder
    redirected to a temp folder: one wheel, matching the `files` glob."""
    import fnmatch
    import shlex
    import subprocess
    import sys

    artifact = bundle["artifacts"]["fruits_wheel"]
    argv = shlex.split(artifact["build"])
    argv[argv.index("-w") + 1] = str(tmp_path)
    assert argv[:3] == ["python3", "-m", "pip"]
    argv[0] = sys.executable  # the venv's python, which has pip
    done = subprocess.run(argv, cwd=BUNDLE / artifact["path"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    built = [p.name for p in tmp_path.glob("*.whl")]
    pattern = Path(artifact["files"][0]["source"]).name
    assert len(built) == 1 and fnmatch.fnmatch(built[0], pattern), built


def test_wheel_library_lies_inside_the_sync_root(jobs, bundle):
    """The CLI refuses a library path outside the sync root ("not contained in sync root
    path"); the sync root is the bundle folder unless `sync.paths` widens it."""
    roots = [(BUNDLE / p).resolve() for p in bundle.get("sync", {}).get("paths", ["."])]
    for ref in wheel_references(jobs):
        path = (BUNDLE / "resources" / ref).resolve()
        assert any(path.is_relative_to(root) for root in roots), (ref, roots)
    # built, not committed: git ignores the wheel folder, so `bundle sync` skips it too
    ignore = (BUNDLE / ".gitignore").read_text().split()
    assert "dist/" in ignore


def test_no_storage_key_in_the_bundle(jobs):
    """Storage access is Unity Catalog grants (volume or external location), not a key."""
    text = "".join(f.read_text() for f in BUNDLE.rglob("*") if f.suffix in (".yml", ".py"))
    assert "fs.azure.account.key" not in text and "{{secrets/" not in text
    for cluster in job_clusters(jobs):
        assert cluster["data_security_mode"] == "SINGLE_USER"  # a Unity Catalog access mode
        for key in cluster.get("spark_conf", {}):
            assert not re.search(r"key|secret|sas|oauth|fs\.azure", key, re.I), key


def test_every_resource_is_valid_by_the_bundle_models(bundle):
    """Databricks' Python models of bundle resources refuse unknown fields, missing required
    fields and wrong types: a malformed job fails here, not at `bundle deploy`. Every kind of
    resource the bundle declares has its model here, so none goes unchecked."""
    pytest.importorskip("databricks.bundles", reason="databricks-bundles (dev)")
    from databricks.bundles.experiments import MlflowExperiment
    from databricks.bundles.jobs import Job
    from databricks.bundles.model_serving_endpoints import ModelServingEndpoint
    from databricks.bundles.registered_models import RegisteredModel

    models = {
        "jobs": Job,
        "experiments": MlflowExperiment,
        "registered_models": RegisteredModel,
        "model_serving_endpoints": ModelServingEndpoint,
    }
    assert set(bundle["resources"]) <= set(models), set(bundle["resources"]) - set(models)
    for kind, items in bundle["resources"].items():
        for name, item in items.items():
            assert models[kind].from_dict(item).as_dict() == item, (kind, name)


def test_serverless_variant_runs_the_same_task(job, serverless, bundle):
    """Serverless: an environment (version + the wheel as a dependency) instead of a cluster,
    and the same wheel task and job parameters as the classic job."""
    (env,) = serverless["environments"]
    version = env["spec"]["environment_version"]
    resolved = re.sub(
        r"\$\{var\.(\w+)\}", lambda m: bundle["variables"][m.group(1)]["default"], version
    )
    assert int(resolved) >= 4, "environment 4 brings Spark Connect 4.0, the pyspark we need"
    assert "job_clusters" not in serverless
    (task,) = serverless["tasks"]
    assert task["environment_key"] == env["environment_key"] and "libraries" not in task
    assert task["python_wheel_task"] == job["tasks"][0]["python_wheel_task"]
    assert serverless["parameters"] == job["parameters"]


def test_model_is_registered_in_unity_catalog_and_served(job, bundle):
    """Each tracked run registers its model in the bundle's UC registered model, and the
    serving endpoint serves that model (by reference, so dev mode's prefixed name follows)."""
    resources = bundle["resources"]
    (name,) = resources["registered_models"]
    model = resources["registered_models"][name]
    assert model["catalog_name"] == "${var.catalog}" and model["schema_name"] == "${var.schema}"
    full = f"${{var.catalog}}.${{var.schema}}.${{resources.registered_models.{name}.name}}"
    env = job["job_clusters"][0]["new_cluster"]["spark_env_vars"]
    from fruits.tracking import MODEL_NAME_ENV

    assert env[MODEL_NAME_ENV] == full and env["MLFLOW_REGISTRY_URI"] == "databricks-uc"
    (endpoint,) = resources["model_serving_endpoints"].values()
    (served,) = endpoint["config"]["served_entities"]
    assert served["entity_name"] == full
    assert served["entity_version"] == "${var.model_version}"
    assert served["scale_to_zero_enabled"] is True  # no cost while nobody asks


def test_no_user_paths_in_the_bundle_or_notebook():
    """A deployment names no person: paths come from variables, job parameters and widgets."""
    for f in [*BUNDLE.rglob("*.yml"), *BUNDLE.rglob("*.py")]:
        text = f.read_text()
        assert "/Users/" not in text, f
        assert not re.search(r"[\w.]+@[\w-]+\.\w+", text), f


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


@pytest.mark.slow  # a whole `fruits run` on the 320 sample images, in its own JVM
def test_wheel_task_runs_locally_as_the_bundle_says(job, bundle, pyproject, tmp_path):
    """The job's wheel task, read from the YAML (entry point, parameters, job parameter and
    variable defaults), run with the installed console script against a temp folder standing
    in for the volume, the bundled sample copied in as the input. Checked against a count of
    the sample's JPEGs and class folders made here by walking the files."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import pandas as pd

    from fruits.config import bundled_sample

    task = job["tasks"][0]["python_wheel_task"]
    assert task["entry_point"] in pyproject["project"]["scripts"]
    script = Path(sys.executable).parent / task["entry_point"]
    assert script.exists(), f"console script {script} is not installed"
    names = {"catalog": "main"}  # the one variable without a default: given at deploy time
    variables = {k: v.get("default") for k, v in bundle["variables"].items()}

    def resolve(text: str) -> str:
        for _ in range(3):  # variables refer to variables (input -> catalog, schema, volume)
            text = re.sub(
                r"\$\{var\.(\w+)\}", lambda m: names.get(m.group(1)) or variables[m.group(1)], text
            )
        return text

    job_params = {p["name"]: resolve(p["default"]) for p in job["parameters"]}
    volume = tmp_path / "Volumes"  # /Volumes/... here is tmp_path/Volumes/...

    def local(value: str) -> str:
        value = re.sub(r"\{\{job\.parameters\.(\w+)\}\}", lambda m: job_params[m.group(1)], value)
        return (
            str(volume / value.removeprefix("/Volumes/"))
            if value.startswith("/Volumes/")
            else value
        )

    argv = [local(p) for p in task["parameters"]]
    input_dir = Path(argv[argv.index("--input") + 1])
    output_dir = Path(argv[argv.index("--output") + 1])
    assert input_dir.is_relative_to(volume) and output_dir.is_relative_to(volume)
    shutil.copytree(bundled_sample(), input_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FRUITS_"))}
    done = subprocess.run(
        [str(script), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]

    jpegs = sorted(p for p in input_dir.rglob("*.jpg"))
    classes = {p.parent.name for p in jpegs}
    images = pd.read_parquet(output_dir / "images.parquet", columns=["path", "label", "split"])
    assert len(images) == len(jpegs) == 320
    assert set(images["label"]) == classes
    assert sorted(Path(p.removeprefix("file:")).name for p in images["path"]) == sorted(
        p.name for p in jpegs
    )
    report = json.loads((output_dir / "report.json").read_text())
    assert report["images_ok"] == len(jpegs) and report["images_quarantined"] == 0
