"""The backbone registry: the bundled network and a second one from user-supplied weights."""

import numpy as np
import pytest
import torch

from fruits.config import FeaturizerConfig
from fruits.features import Featurizer, build_artifact
from fruits.images import decode_image
from fruits.models import get_spec, mobilenet_v2_module


def _pixels(sample_dir, n=3, size=224):
    files = sorted((sample_dir / "Training" / "Banana 1").iterdir())[:n]
    return np.stack([decode_image(f.read_bytes(), size=size) for f in files])


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        get_spec("resnet9000")


def test_mobilenet_v2_from_a_torchvision_style_weights_file(tmp_path, sample_dir):
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
