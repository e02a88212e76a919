"""The pipeline on Azure paths through fsspec (Spark here has no Azure connector), against a
real Azurite: upload the sample -> a second upload copies nothing -> `fruits run` reading and
writing Azurite -> download, and compare with the local run of the same sample."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from azurite_service import ACCOUNT, KEY, assert_no_secret
from typer.testing import CliRunner

from fruits.cli import app
from fruits.ingest import labelled
from fruits.sources import fsspec as fsspec_source
from fruits.storage import fsspec as fsspec_storage
from fruits.storage.hadoop import hadoop_can_open
from fruits.storage.plan import choose

pytestmark = pytest.mark.azure

AZURE_ENV = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_ACCOUNT_NAME",
)


@pytest.fixture
def azure_env(azurite, monkeypatch):
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return azurite


@pytest.fixture
def container(azurite) -> str:
    name = f"p-{uuid.uuid4().hex[:10]}"
    azurite.service().create_container(name)
    return name


def small_tree(sample_dir: Path, root: Path, per_class: int = 2) -> Path:
    """A few real JPEGs of two classes in Training/Test, copied from the bundled sample."""
    for split in ("Training", "Test"):
        for cls in sorted(p.name for p in (sample_dir / split).iterdir())[:2]:
            for img in sorted((sample_dir / split / cls).glob("*.jpg"))[:per_class]:
                dst = root / split / cls / img.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(img, dst)
    return root


def test_choose_falls_back_to_fsspec_without_connector(spark, azure_env):
    assert not hadoop_can_open(spark, "abfss://c@a.dfs.core.windows.net/x")
    assert hadoop_can_open(spark, "/tmp/x")
    assert choose(spark, "auto", "az://c/x") == ("fsspec", "az://c/x")
    assert choose(spark, "auto", "/tmp/x") == ("hadoop", "/tmp/x")
    # forced Hadoop turns az:// into the abfss:// URI Spark's connector expects
    assert choose(spark, "hadoop", "az://c/x") == (
        "hadoop",
        f"abfss://c@{ACCOUNT}.dfs.core.windows.net/x",
    )
    assert choose(spark, "fsspec", "/tmp/x") == ("fsspec", "/tmp/x")


def test_fsspec_ingest_matches_binaryfile_ingest(spark, azure_env, container, sample_dir, tmp_path):
    """Same columns, types, labels, splits, sizes and bytes as Spark's own binaryFile ingest."""
    from fruits.sources.hadoop import HadoopSource
    from fruits.transfer import upload

    local = small_tree(sample_dir, tmp_path / "imgs")
    (local / "Training" / "notes.txt").write_text("not an image")
    big = next(local.rglob("*.jpg"))
    assert upload(local, f"az://{container}/imgs", progress=False).ok

    limit = big.stat().st_size - 1  # at least one file is "too large"
    remote = labelled(
        fsspec_source.list_fsspec(spark, f"az://{container}/imgs", max_file_bytes=limit)
    )
    hadoop = labelled(HadoopSource(str(local)).read(spark, max_file_bytes=limit))
    # the same columns, plus the blob's ETag as the content version (incremental runs)
    versions = remote.files.select("content_hash").collect()
    assert versions and all(r[0].startswith("etag:") for r in versions)
    remote_cols = remote.files.drop("content_hash").schema.simpleString()
    assert remote_cols == hadoop.files.schema.simpleString()
    assert remote.too_large.schema.simpleString() == hadoop.too_large.schema.simpleString()

    def rows(ingested, prefix):
        out = {}
        for r in ingested.files.collect():
            out[r["path"].split(prefix, 1)[1]] = (r["label"], r["split"], r["length"], r["content"])
        return out

    assert rows(remote, f"az://{container}/imgs/") == rows(hadoop, str(local) + "/")
    too_large = {r["path"].rpartition("/imgs/")[2] for r in remote.too_large.collect()}
    assert too_large == {r["path"].rpartition("/imgs/")[2] for r in hadoop.too_large.collect()}
    assert too_large  # the size rule applied, before any byte was read
    mtimes = remote.files.select("modification_time").collect()
    assert all(r[0] is not None for r in mtimes)


class ChannelMeans:
    """A stand-in network (mean R, G, B) for tests about reading, not about the CNN."""

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return pixels.reshape(len(pixels), -1, 3).mean(axis=1).astype(np.float32)


def test_fsspec_unreadable_file_has_null_content(spark, azure_env, container, sample_dir, tmp_path):
    """A file deleted between listing and reading is not a crash: its row stays, with null
    content, which the featurizer reports as unreadable; every other file arrives byte for
    byte and is featurised."""
    from fruits.engine import UNREADABLE, featurize_contents
    from fruits.transfer import upload

    local = small_tree(sample_dir, tmp_path / "imgs", per_class=1)
    assert upload(local, f"az://{container}/imgs", progress=False).ok
    ingested = labelled(fsspec_source.list_fsspec(spark, f"az://{container}/imgs"))
    victim = ingested.files.select("path").orderBy("path").first()["path"]
    blob = victim.split(f"az://{container}/", 1)[1]
    azure_env.service().get_container_client(container).delete_blob(blob)
    rows = ingested.files.select("path", "content").orderBy("path").collect()
    content = {r["path"]: r["content"] for r in rows}
    assert len(content) == sum(1 for _ in local.rglob("*.jpg"))  # the listed row is not lost
    assert content[victim] is None
    for path, data in content.items():
        if path != victim:
            assert bytes(data) == (local / path.split("/imgs/", 1)[1]).read_bytes(), path
    feats, errs = featurize_contents(
        ChannelMeans(), [r["content"] for r in rows], size=8, max_pixels=10**6
    )
    by_path = dict(zip(content, errs, strict=True))
    assert by_path.pop(victim) == UNREADABLE
    assert set(by_path.values()) == {None}
    assert sum(f is None for f in feats) == 1


@pytest.mark.slow
def test_a_blob_deleted_between_listing_and_reading_is_quarantined_as_unreadable(
    spark, azure_env, container, sample_dir, tmp_path, monkeypatch
):
    """The whole run on Azure input: one blob disappears right after the listing (a real
    delete on Azurite, once the real listing has returned), so the run cannot read it. It must
    end in quarantine.parquet as unreadable, not vanish and not fail the run."""
    from fruits.config import PipelineConfig
    from fruits.engine import UNREADABLE
    from fruits.pipeline import run_pipeline
    from fruits.transfer import upload

    local = small_tree(sample_dir, tmp_path / "imgs")
    assert upload(local, f"az://{container}/imgs", progress=False).ok
    listed = fsspec_source.list_files
    deleted: list[str] = []

    def list_then_delete(location, extensions):
        rows = listed(location, extensions)
        uri, fs_path = rows[0][0], rows[0][1]
        azure_env.service().get_container_client(container).delete_blob(fs_path.split("/", 1)[1])
        deleted.append(uri)
        return rows

    monkeypatch.setattr(fsspec_source, "list_files", list_then_delete)
    out = tmp_path / "out"
    cfg = PipelineConfig(input=f"az://{container}/imgs", output=str(out), classify=False)
    report = run_pipeline(cfg, spark=spark).report
    n = sum(1 for _ in local.rglob("*.jpg"))
    assert len(deleted) == 1
    assert (report["images_total"], report["images_ok"], report["images_quarantined"]) == (
        n,
        n - 1,
        1,
    )
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    assert list(zip(quarantine["path"], quarantine["reason"], strict=True)) == [
        (deleted[0], UNREADABLE)
    ]
    assert deleted[0] not in set(pd.read_parquet(out / "images.parquet")["path"])


def test_fsspec_store_operations(azure_env, container, tmp_path):
    root = f"az://{container}/store"
    store = fsspec_storage.FsspecStore(fsspec_storage.locate(root))
    src = tmp_path / "dir"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("bb")
    assert not store.exists(f"{root}/x")
    store.put(src, f"{root}/x")
    store.put(src / "a.txt", f"{root}/single.txt")
    assert store.exists(f"{root}/x") and store.exists(f"{root}/single.txt")
    assert sorted(store.list(root)) == [f"{root}/single.txt", f"{root}/x"]
    store.rename(f"{root}/x", f"{root}/y")
    assert not store.exists(f"{root}/x")
    assert sorted(store.list(f"{root}/y")) == [f"{root}/y/a.txt", f"{root}/y/sub"]
    store.get(f"{root}/y", tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "b.txt").read_text() == "bb"
    store.delete(f"{root}/y")
    store.delete(f"{root}/never-there")
    assert store.list(root) == [f"{root}/single.txt"]


def test_missing_input_container_is_one_line(spark, azure_env):
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--input", "az://no-such-container/x", "--output", "o"])
    assert result.exit_code == 2
    assert "error: input container 'no-such-container' not found" in result.output
    assert "Traceback" not in result.output
    assert_no_secret(result.output)


def test_refused_credential_run_is_one_line(spark, azure_env, container, monkeypatch):
    bad = azure_env.connection_string.replace(KEY, KEY[:-8] + "AAAAAAA=")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", bad)
    result = CliRunner().invoke(app, ["run", "--input", f"az://{container}/x", "--output", "o"])
    assert result.exit_code == 2
    assert "credential refused by account 'devstoreaccount1'" in result.output
    assert "Traceback" not in result.output
    assert_no_secret(result.output, secrets=(bad,))


@pytest.mark.slow
def test_upload_run_download_round_trip(
    spark, azure_env, container, sample_dir, sample_run, tmp_path, caplog, capfd
):
    """The issue's acceptance path, as a new user would run it, compared with a local run."""
    caplog.set_level(logging.INFO)
    runner = CliRunner()
    data = f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/fruits-360-sample"
    out = f"az://{container}/runs/sample"

    first = runner.invoke(app, ["upload", str(sample_dir), data, "--no-progress"])
    assert first.exit_code == 0, first.output
    n_files = sum(1 for p in sample_dir.rglob("*") if p.is_file())
    assert f"transferred {n_files} " in first.output
    second = runner.invoke(app, ["upload", str(sample_dir), data, "--no-progress"])
    assert second.exit_code == 0 and "transferred 0 (0 B)" in second.output

    ran = runner.invoke(app, ["run", "--input", data, "--output", out])
    assert ran.exit_code == 0, ran.output
    assert f"outputs written to {out}" in ran.output

    blobs = [b.name for b in azure_env.service().get_container_client(container).list_blobs()]
    runs = {name.split("/")[1] for name in blobs if name.startswith("runs/")}
    assert runs == {"sample"}  # published; no staging or old folder left behind
    assert not any(name.endswith(".crc") for name in blobs)

    local = tmp_path / "downloaded"
    got = runner.invoke(app, ["download", out, str(local), "--no-progress"])
    assert got.exit_code == 0, got.output

    expected = Path(sample_run.output)
    report = json.loads((local / "report.json").read_text())
    base = sample_run.report
    assert (local / "_SUCCESS.json").exists()
    for key in ("images_total", "images_ok", "images_quarantined", "classes", "feature_dim"):
        assert report[key] == base[key], key
    assert report["images_by_split"] == base["images_by_split"]
    assert report["input"] == data and report["output"] == out
    k = report["pca_k"]
    assert k == base["pca_k"]  # same rows, same fit: the same k

    azure_images = spark.read.parquet(str(local / "images.parquet"))
    local_images = spark.read.parquet(str(expected / "images.parquet"))
    assert azure_images.columns == local_images.columns
    assert azure_images.count() == local_images.count() == base["images_ok"]

    def keyed(df, marker):
        return {
            (r["path"].split(marker, 1)[1], r["label"], r["split"], r["length"])
            for r in df.select("path", "label", "split", "length").collect()
        }

    assert keyed(azure_images, "fruits-360-sample/") == keyed(local_images, "fruits-360-sample/")

    def features(df):
        rows = df.select("path", "features").collect()
        return {r["path"].split("fruits-360-sample/", 1)[1]: r["features"] for r in rows}

    same, ref = features(azure_images), features(local_images)
    worst = max(float(np.max(np.abs(np.subtract(same[p], ref[p])))) for p in ref)
    assert worst < 1e-4, worst  # the same bytes reached the same CNN

    def pcas(df):
        rows = df.select("path", "pca").collect()
        return {r["path"].split("fruits-360-sample/", 1)[1]: r["pca"] for r in rows}

    names = sorted(ref)
    ours = np.asarray([pcas(azure_images)[p] for p in names], dtype=np.float64)
    theirs = np.asarray([pcas(local_images)[p] for p in names], dtype=np.float64)
    assert ours.shape == theirs.shape == (len(names), k)
    signs = np.sign(np.sum(ours * theirs, axis=0))  # a component's sign is arbitrary
    np.testing.assert_allclose(ours * signs, theirs, atol=1e-3)
    assert all(
        r["path"].startswith(data + "/") for r in azure_images.select("path").limit(5).collect()
    )
    pca_csv = (local / "pca.csv").read_text().splitlines()
    assert pca_csv[0] == ",".join(["path", "label", "split", *[f"pc_{i + 1}" for i in range(k)]])
    assert len(pca_csv) == base["images_ok"] + 1
    for plot in (expected / "plots").iterdir():
        assert (local / "plots" / plot.name).exists()
    assert sorted(p.name for p in (local / "models").iterdir()) == sorted(
        p.name for p in (expected / "models").iterdir()
    )

    # no secret anywhere: CLI output, logs, the driver's stdout/stderr, Spark conf, every file
    captured = capfd.readouterr()
    conf = "\n".join(f"{k}={v}" for k, v in spark.sparkContext.getConf().getAll())
    files = [p.read_bytes() for p in local.rglob("*") if p.is_file()]
    outputs = (first.output, second.output, ran.output, got.output, caplog.text)
    assert_no_secret(*outputs, captured.out, captured.err, conf, *files)
    assert KEY not in json.dumps(report)


def test_the_listing_carries_a_content_version_that_changes_on_a_same_size_rewrite(
    azure_env, container
):
    """Incremental runs compare it: a blob rewritten with the same size is not 'unchanged'."""
    blobs = azure_env.service().get_container_client(container)
    blobs.upload_blob("Training/Kiwi 1/a.jpg", b"x" * 64)
    location = fsspec_storage.locate(f"az://{container}/Training")
    (before,) = fsspec_source.list_files(location, ["jpg"])
    blobs.upload_blob("Training/Kiwi 1/a.jpg", b"y" * 64, overwrite=True)
    location.fs().invalidate_cache()
    (after,) = fsspec_source.list_files(location, ["jpg"])
    assert before[2] == after[2] == 64
    assert before[4].startswith("etag:") and after[4].startswith("etag:")
    assert before[4] != after[4]


def test_a_missing_output_container_is_refused_before_any_work(spark, azure_env, tmp_path):
    src = tmp_path / "in" / "Training" / "Kiwi 1"
    src.mkdir(parents=True)
    (src / "a.jpg").write_bytes(b"not read: the run stops before")
    res = CliRunner().invoke(
        app, ["run", "--input", str(tmp_path / "in"), "--output", "az://no-such-container/out"]
    )
    assert res.exit_code == 2, res.output
    assert "output container 'no-such-container' not found" in res.stderr
    assert "--create-container" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "kill_at", [2, 3, 4]
)  # copies: out->old, its marker, staging->out, its marker
def test_a_blob_publish_interrupted_mid_copy_never_looks_finished(azure_env, container, kill_at):
    """On blob storage a folder "rename" is a copy: kill it after some files and no reader
    finds a marker beside partial data; the next writer restores the previous output."""
    from fruits.storage import MARKER, publish, recover
    from fruits.storage.fsspec import FsspecStore, locate

    blobs = azure_env.service().get_container_client(container)
    for run, payload in (("out", b"old"), (".out.staging-0123456789ab", b"new")):
        for name in ("a.parquet", "b.parquet", "report.json"):
            blobs.upload_blob(f"runs/{run}/{name}", payload)
        blobs.upload_blob(f"runs/{run}/{MARKER}", b'{"run_id": "x"}')
    root = f"az://{container}/runs"
    store = FsspecStore(locate(root))
    fs = store.root.fs()
    real_copy = fs.copy
    calls = []

    def dying_copy(src, dst, **kw):  # the process dies once the first batch is copied
        calls.append(src)
        if len(calls) == kill_at:
            raise KeyboardInterrupt("killed mid-copy")
        return real_copy(src, dst, **kw)

    fs.copy = dying_copy
    try:
        with pytest.raises(KeyboardInterrupt):
            publish(store, f"{root}/.out.staging-0123456789ab", f"{root}/out", "0123456789ab")
    finally:
        fs.copy = real_copy
    names = {b.name for b in blobs.list_blobs(name_starts_with="runs/")}
    for folder in {n.split("/")[1] for n in names}:
        inside = {n for n in names if n.split("/")[1] == folder}
        if f"runs/{folder}/{MARKER}" in inside:  # a marker only beside a complete folder
            assert len(inside) == 4, (folder, inside)
    recover(store, f"{root}/out")  # the next writer, under the lease
    assert blobs.download_blob("runs/out/a.parquet").readall() == b"old"
    assert store.exists(f"{root}/out/{MARKER}")
    assert {b.name.split("/")[1] for b in blobs.list_blobs(name_starts_with="runs/")} == {"out"}
