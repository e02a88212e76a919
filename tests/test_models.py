"""The backbone registry: the bundled network and a second one from user-supplied weights."""

import numpy as np
import pytest

from fruits.artifact import build_artifact
from fruits.config import FeaturizerConfig
from fruits.engine import Featurizer
from fruits.images import decode_image
from fruits.models import get_spec, mobilenet_v2_module


def _pixels(sample_dir, n=3, size=224):
    files = sorted((sample_dir / "Training" / "Banana 1").iterdir())[:n]
    return np.stack([decode_image(f.read_bytes(), size=size) for f in files])


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        get_spec("resnet9000")


@pytest.mark.torch
def test_mobilenet_v2_from_a_torchvision_style_weights_file(tmp_path, sample_dir):
    import torch

    torch.manual_seed(0)
    state = mobilenet_v2_module().state_dict()
    assert "features.18.0.weight" in state and "features.1.conv.0.0.weight" in state
    state["classifier.1.weight"] = torch.zeros(1000, 1280)  # torchvision files carry a head
    state["classifier.1.bias"] = torch.zeros(1000)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(state, path)

    pixels = _pixels(sample_dir)
    feats = {}
    for engine in ("onnx", "torch"):
        cfg = FeaturizerConfig(backbone="mobilenet_v2", weights=str(path), engine=engine)
        feats[engine] = Featurizer(build_artifact(cfg))(pixels)
    assert feats["onnx"].shape == (3, 1280)
    cos = np.sum(feats["onnx"] * feats["torch"], 1) / (
        np.linalg.norm(feats["onnx"], axis=1) * np.linalg.norm(feats["torch"], axis=1)
    )
    assert cos.min() > 0.999


def test_mobilenet_v2_without_weights_is_refused():
    with pytest.raises(ValueError, match="needs --weights"):
        build_artifact(FeaturizerConfig(backbone="mobilenet_v2"))


def _cosine(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.torch
def test_bundled_graph_is_the_torch_export(sample_dir):
    import json

    from fruits.artifact import ModelArtifact, bundled_graph, export_onnx
    from fruits.models import build_torch, fingerprint

    path = bundled_graph("efficientnet_lite0")
    assert path is not None and 12e6 < path.stat().st_size < 15e6
    provenance = json.loads(path.with_suffix(".json").read_text())
    assert provenance["bytes"] == path.stat().st_size
    assert provenance["fingerprint"] == fingerprint("efficientnet_lite0", None)

    artifact = build_artifact(FeaturizerConfig(engine="onnx"))
    assert artifact.payload == path.read_bytes()
    assert artifact.fingerprint == fingerprint("efficientnet_lite0", None)  # old runs still match
    spec = get_spec("efficientnet_lite0")
    fresh = ModelArtifact(spec, "onnx", export_onnx(build_torch("efficientnet_lite0")), "fresh")
    for size in (100, 224):  # dynamic spatial axes: one graph for every --image-size
        pixels = _pixels(sample_dir, n=4, size=size)
        cos = _cosine(Featurizer(artifact)(pixels), Featurizer(fresh)(pixels))
        assert cos.min() >= 0.99999, cos


NO_TORCH = """
import sys
sys.modules["torch"] = None  # as if torch were not installed: import fails, find_spec is None
from fruits.config import FeaturizerConfig
from fruits.artifact import build_artifact
from fruits.engine import Featurizer
import numpy as np
artifact = build_artifact(FeaturizerConfig())
assert artifact.engine == "onnx", artifact.engine
assert Featurizer(artifact)(np.zeros((2, 64, 64, 3), np.uint8)).shape == (2, 1280)
for cfg in (FeaturizerConfig(engine="torch"), FeaturizerConfig(weights=sys.argv[1])):
    try:
        build_artifact(cfg)
    except ValueError as exc:
        assert "fruits[export]" in str(exc), exc
    else:
        raise AssertionError(cfg)
print("ok")
"""


def test_default_backbone_runs_without_torch(tmp_path):
    import subprocess
    import sys

    weights = tmp_path / "lite0.pth"
    weights.write_bytes(b"not used: refused before loading")
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(weights)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_unreadable_weights_are_one_line_naming_the_option_and_the_reason(tmp_path):
    """A refused host made fsspec raise FileNotFoundError(url): the user saw only the URL."""
    from fruits.models import read_weights

    for uri in ("http://127.0.0.1:9/w.pth", str(tmp_path / "missing.pth")):
        with pytest.raises(OSError) as err:
            read_weights(uri)
        message = str(err.value)
        assert message.startswith(f"--weights {uri}: cannot read it (") and "\n" not in message
