"""Unity Catalog volumes in the storage plan (storage.plan: volume_path, choose, plan_storage).

On Databricks `/Volumes/<catalog>/<schema>/<volume>/...` is a FUSE folder on the driver, and
`dbfs:/Volumes/...` the same files for Spark, listed on the executors. Here there is no DBFS: the
choice is checked against the real JVM, once as it is (no `dbfs` FileSystem) and once with a real
Hadoop FileSystem class registered for the `dbfs` scheme, and a real folder under `/Volumes` on
this machine goes through the plan's ingest as the local folder it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fruits.ingest import labelled
from fruits.sources import content as file_content
from fruits.storage.hadoop import hadoop_can_open
from fruits.storage.plan import plan_storage, planned_input, volume_path

VOL = "/Volumes/main/fruits/data"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"{VOL}", VOL),
        (f"{VOL}/fruits-360/", f"{VOL}/fruits-360"),
        (f"dbfs:{VOL}/fruits-360", f"{VOL}/fruits-360"),
        (f"dbfs://{VOL}", VOL),
        (f"DBFS:{VOL}", VOL),
        ("/Volumes/Macintosh HD/images", None),  # a macOS disk: no catalog/schema/volume
        ("/Volumes//fruits/data", None),
        ("Volumes/main/fruits/data", None),  # relative
        (f"file:{VOL}", None),  # explicitly local
        (f"/tmp{VOL}", None),
        ("abfss://c@a.dfs.core.windows.net/Volumes/main/fruits/data", None),
    ],
)
def test_volume_paths_are_recognised_in_both_spellings(uri, expected):
    assert volume_path(uri) == expected


def test_without_dbfs_a_volume_is_the_local_folder_it_is(spark):
    """A laptop or a plain Spark cluster: no `dbfs` FileSystem, so `/Volumes/...` is walked on
    the driver like any local folder, and `dbfs:/Volumes/...` means that same folder."""
    assert not hadoop_can_open(spark, "dbfs:/")
    plan = plan_storage(spark, "auto", [f"{VOL}/in", f"dbfs:{VOL}/neg"], f"{VOL}/out")
    assert plan.inputs == [("local", f"{VOL}/in"), ("local", f"{VOL}/neg")]
    assert (plan.output_mode, plan.output, plan.work_output) == ("hadoop", *[f"{VOL}/out"] * 2)
    assert planned_input(plan.inputs, f"dbfs:{VOL}/neg") == ("local", f"{VOL}/neg")
    hadoop = plan_storage(spark, "hadoop", [f"dbfs:{VOL}/in"], f"{VOL}/out")
    assert hadoop.inputs == [("hadoop", f"{VOL}/in")]


@pytest.fixture()
def dbfs_registered(spark) -> Iterator[None]:
    """A real Hadoop FileSystem class for `dbfs`, as Databricks has one (there it is DBFS's).
    Set on the running session's Hadoop conf and removed after, so other tests never see it."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    conf.set("fs.dbfs.impl", "org.apache.hadoop.fs.RawLocalFileSystem")
    try:
        yield
    finally:
        conf.unset("fs.dbfs.impl")


def test_with_dbfs_a_volume_goes_to_spark_as_dbfs(spark, dbfs_registered):
    """Databricks: inputs and output in a volume are read and written by Spark as
    `dbfs:/Volumes/...`, so nothing is walked on the driver (local_path is None for them)."""
    from fruits.ingest import local_path

    assert hadoop_can_open(spark, "dbfs:/")
    for mode in ("auto", "hadoop"):
        plan = plan_storage(spark, mode, [f"{VOL}/in", f"dbfs:{VOL}/neg"], f"{VOL}/out")
        assert plan.inputs == [("hadoop", f"dbfs:{VOL}/in"), ("hadoop", f"dbfs:{VOL}/neg")]
        assert (plan.output_mode, plan.output) == ("hadoop", f"dbfs:{VOL}/out")
        assert plan.work_output == f"dbfs:{VOL}/out"
        assert all(local_path(uri) is None for _, uri in plan.inputs)
        # the run asks for an input by the name the user gave it
        assert planned_input(plan.inputs, f"{VOL}/in") == ("hadoop", f"dbfs:{VOL}/in")
    # --storage fsspec is a request for Python-side access: the FUSE path, as a local file
    plan = plan_storage(spark, "fsspec", [f"dbfs:{VOL}/in"], "/tmp/fruits-out")
    assert plan.inputs == [("fsspec", f"{VOL}/in")]
    plan.cleanup()
    # paths that only look alike keep their usual reader
    other = plan_storage(spark, "auto", ["/tmp/Volumes/main/fruits/data"], "/tmp/out")
    assert other.inputs == [("local", "/tmp/Volumes/main/fruits/data")]


@pytest.fixture()
def local_volume(sample_dir) -> Iterator[str]:
    """A real folder at /Volumes/<catalog>/<schema>/<volume>/fruits-360 with a few sample
    images, removed afterwards (and /Volumes itself when this test made it)."""
    made_root = not os.path.exists("/Volumes")
    catalog = f"fruits_test_{uuid.uuid4().hex[:8]}"
    base = Path("/Volumes") / catalog
    try:
        (base / "fruits" / "data").mkdir(parents=True)
    except OSError as exc:
        pytest.skip(f"cannot create a folder under /Volumes here: {exc}")
    try:
        images = base / "fruits" / "data" / "fruits-360"
        for split in ("Training", "Test"):
            for label in ("Apple Red 1", "Banana 1"):
                src = sorted((sample_dir / split / label).glob("*.jpg"))[:2]
                (images / split / label).mkdir(parents=True)
                for f in src:
                    shutil.copy(f, images / split / label / f.name)
        yield str(images)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if made_root:
            with contextlib.suppress(OSError):
                os.rmdir("/Volumes")


def test_a_local_folder_named_like_a_volume_still_runs_the_ingest(spark, local_volume):
    plan = plan_storage(spark, "auto", [local_volume], "/tmp/fruits-volume-out")
    assert plan.inputs == [("local", local_volume)]
    plan.check_input(spark)
    for name in (local_volume, "dbfs:" + local_volume):  # either spelling finds the same input
        got = labelled(plan.read_images(spark, name))
        content = file_content(got.files).alias("content")  # a local walk reads on use
        rows = got.files.select("path", "label", "split", "length", content).collect()
        assert len(rows) == 8 and got.too_large.count() == 0
        assert {(r["label"], r["split"]) for r in rows} == {
            (label, split) for label in ("Apple Red 1", "Banana 1") for split in ("train", "test")
        }
        for r in rows:
            path = r["path"].removeprefix("file:")
            assert path.startswith(local_volume + "/")
            assert len(r["content"]) == r["length"] == os.path.getsize(path)
