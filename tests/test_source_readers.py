"""Sources re-read a set of paths their own way (`Ingested.only`), with a real SparkSession,
real files and Azurite: the incremental run's "featurise only the new files" step.

Bugs these catch: a union of sources re-read through Spark's binaryFile alone (an `az://` path
Spark has no connector for failed the run; before `sources/`, any listing that `may_drop`
sent every path there), a source handed paths of another (binaryFile refuses a path it
cannot find), and columns lost or reordered on the way back.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from PIL import Image

from fruits.ingest import labelled
from fruits.sources import content
from fruits.sources.fsspec import FsspecSource
from fruits.sources.hadoop import HadoopSource
from fruits.sources.local import LocalSource


def images(root: Path, label: str, names: list[str]) -> dict[str, bytes]:
    """JPEGs at root/Training/label/name, each with its own bytes; name -> bytes."""
    wrote = {}
    for n, name in enumerate(names):
        path = root / "Training" / label / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (n * 40, 90, 200)).save(path, format="JPEG")
        wrote[name] = path.read_bytes()
    return wrote


def rows_of(df) -> dict[str, tuple[str, bytes]]:
    got = df.select("path", "label", content(df).alias("bytes")).collect()
    return {r["path"].rpartition("/")[2]: (r["label"], r["bytes"]) for r in got}


def test_a_union_of_a_walk_and_binaryfile_rereads_each_its_own(spark, tmp_path):
    a = images(tmp_path / "a", "Kiwi", ["a1.jpg", "a2.jpg", "a3.jpg"])
    b = images(tmp_path / "b", "Lime", ["b1.jpg", "b2.jpg"])
    walked = labelled(LocalSource(str(tmp_path / "a")).read(spark))
    scanned = labelled(HadoopSource(str(tmp_path / "b")).read(spark))
    both = walked.union(scanned)
    assert both.may_drop  # binaryFile can drop a file: the pipeline compares
    paths = {r["path"].rpartition("/")[2]: r["path"] for r in both.files.collect()}

    got = both.only(spark, [paths["a2.jpg"], paths["b1.jpg"]])
    assert got.columns == both.files.columns  # labels, splits and the walk's `_local` kept
    assert rows_of(got) == {"a2.jpg": ("Kiwi", a["a2.jpg"]), "b1.jpg": ("Lime", b["b1.jpg"])}
    assert both.only(spark, []).count() == 0


@pytest.mark.azure
def test_an_fsspec_source_rereads_without_binaryfile(spark, azurite, monkeypatch, tmp_path):
    """Spark here has no `az://` FileSystem: the old binaryFile re-read failed the run, and
    so does a binaryFile source handed the fsspec source's paths."""
    for name in ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    container = f"src-{uuid.uuid4().hex[:10]}"
    blobs = azurite.service().create_container(container)
    for name in ("x1.jpg", "x2.jpg", "x3.jpg"):
        blobs.upload_blob(f"in/Training/Kiwi/{name}", name.encode())
    source = FsspecSource(f"az://{container}/in")
    listed = labelled(source.read(spark))
    assert not listed.may_drop  # an unreadable blob is a row with null content, not a gap
    wanted = [r["path"] for r in listed.files.collect() if r["path"].endswith("x2.jpg")]

    got = listed.only(spark, wanted)
    assert got.columns == listed.files.columns
    assert rows_of(got) == {"x2.jpg": ("Kiwi", b"x2.jpg")}

    local = images(tmp_path / "b", "Lime", ["b1.jpg", "b2.jpg"])
    both = listed.union(labelled(HadoopSource(str(tmp_path / "b")).read(spark)))
    wanted += [r["path"] for r in both.files.collect() if r["path"].endswith("b2.jpg")]
    got = both.only(spark, wanted)
    assert rows_of(got) == {"x2.jpg": ("Kiwi", b"x2.jpg"), "b2.jpg": ("Lime", local["b2.jpg"])}


def test_binaryfile_rereads_names_spark_hides_or_cannot_open(spark, tmp_path):
    """Spark's listing hides `_x.jpg` and cannot open `a:b.jpg`; the source reads those on the
    driver when listing, so re-reading them (a new file in an incremental run) must not name
    them to binaryFile."""
    wrote = images(tmp_path / "in", "Kiwi", ["plain.jpg", "_hidden.jpg", "12:30.jpg"])
    listed = labelled(HadoopSource(str(tmp_path / "in")).read(spark))
    paths = {r["path"].rpartition("/")[2]: r["path"] for r in listed.files.collect()}
    assert set(paths) == set(wrote)

    got = listed.only(spark, [paths["_hidden.jpg"], paths["12:30.jpg"], paths["plain.jpg"]])
    assert got.columns == listed.files.columns
    assert rows_of(got) == {name: ("Kiwi", data) for name, data in wrote.items()}
