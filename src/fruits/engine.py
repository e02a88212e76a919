"""The per-image maths, Spark-free: encoded images -> pooled CNN features, in batches, with one
network per process. `Featurizer` and `featurize_contents` (numpy in, numpy out) are the one
code path the Spark stage (features.py), the API and the MLflow model all call; each Python
worker keeps its network in `_FEATURIZERS` for every later batch and task (workers are reused
by Spark). `reduce_features` is the scaler + PCA step of the same path."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from fruits.artifact import ModelArtifact
from fruits.cache import LruCache
from fruits.config import FeaturizerConfig
from fruits.images import UNDECODABLE, ImageError, decode_views
from fruits.models import BackboneSpec, build_torch

log = logging.getLogger(__name__)

GPU_BATCH_FACTOR = 4  # a GPU wants larger batches than a CPU core (Arrow batches bound them)
UNREADABLE = "unreadable: the file could not be read (permissions, I/O error or deleted mid-run)"


def reduce_features(
    features: np.ndarray, mean: np.ndarray, scale: np.ndarray, pc: np.ndarray
) -> np.ndarray:
    """(N, d) CNN features -> (N, k) float32 PCA coordinates: Spark's StandardScalerModel
    (`(x - mean) * scale`) then PCAModel (`pc^T x`), in float64. The one code path of this
    step: the pipeline's Spark stage (`reduce.Reducer.transform`) and serving both call it."""
    x = np.asarray(features, dtype=np.float32).astype(np.float64)
    return cast(np.ndarray, (((x - mean) * scale) @ pc).astype(np.float32))  # numpy's stubs: Any


def normalise(pixels: np.ndarray, spec: BackboneSpec) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, scaled as the network was trained."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
    x = (pixels.astype(np.float32) - mean) * inv_std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class Engine(Protocol):
    """Runs a network on a normalised float32 NCHW batch; returns float32 (N, feature_dim)."""

    device: str
    precision: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class OnnxEngine:
    """ONNX Runtime: the default on CPU (about 8x eager PyTorch, same features) and on GPUs
    where onnxruntime-gpu is installed."""

    precision = "fp32"

    def __init__(self, graph: bytes, *, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list[Any] = ["CPUExecutionProvider"]
        self.device = "cpu"
        if "CUDAExecutionProvider" in ort.get_available_providers():
            gpu = _gpu_index()  # one session per GPU: the one Spark gave this task
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu}))
            self.device = f"cuda:{gpu}"
        self._session = ort.InferenceSession(graph, opts, providers=providers)
        self._input = self._session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input: x})[0], dtype=np.float32)


class TorchEngine:
    """PyTorch (the `export` extra): CUDA where ONNX Runtime has no CUDA provider, and bf16 on
    CPUs with native bf16."""

    def __init__(
        self,
        spec: BackboneSpec,
        weights: bytes | None,
        *,
        threads: int = 1,
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self._model = build_torch(spec.name, weights)
        self.device = f"cuda:{_gpu_index()}" if torch.cuda.is_available() else "cpu"
        self._model.to(self.device)
        self._channels_last = channels_last
        if channels_last:
            self._model = self._model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from torch's stubs
        self.precision = "fp32"
        if precision == "bf16":
            if self.device != "cpu" or _cpu_has_bf16():
                self.precision = "bf16"
            else:
                log.warning("bf16 requested but this CPU has no native bf16; using fp32")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(x).to(self.device)
        if self._channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(t.device.type, dtype=torch.bfloat16):
                    out = self._model(t)
            else:
                out = self._model(t)
        return cast(np.ndarray, out.float().cpu().numpy())  # a torch Module's call is Any


class Featurizer:
    """One loaded network: uint8 pixels -> normalised -> engine -> features. Build once per
    process (see `get_featurizer`), call per batch."""

    def __init__(
        self,
        artifact: ModelArtifact,
        *,
        threads: int = 1,
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        self.spec = artifact.spec
        self.engine = artifact.engine
        self._run: Engine = (
            OnnxEngine(artifact.payload, threads=threads)
            if artifact.engine == "onnx"
            else TorchEngine(
                artifact.spec,
                artifact.payload or None,
                threads=threads,
                precision=precision,
                channels_last=channels_last,
            )
        )
        self.device, self.precision = self._run.device, self._run.precision

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, feature_dim)."""
        if len(pixels) == 0:
            return np.zeros((0, self.spec.feature_dim), dtype=np.float32)
        return self._run(normalise(pixels, self.spec))


def _cpu_has_bf16() -> bool:
    """Native bf16 only (AVX512-BF16 or AMX): elsewhere bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:  # not Linux: trust torch's view of the CPU
        import torch

        return "AMX" in torch.backends.cpu.get_cpu_capability().upper()


def _gpu_index() -> int:
    """The GPU Spark assigned to this task (spark.task.resource.gpu.amount), else 0."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None and "gpu" in ctx.resources():
            return int(ctx.resources()["gpu"].addresses[0])
    except Exception:
        pass
    return 0


_FEATURIZERS: LruCache[Featurizer] = LruCache(3)  # per process: Spark's ModelCache size
_BUILDS: dict[tuple[Any, ...], int] = {}  # networks built in this process, per cache key


def featurizer_builds() -> dict[tuple[Any, ...], int]:
    """How many times this process built each network (1 per key when the cache works)."""
    return dict(_BUILDS)


def get_featurizer(key: tuple[Any, ...], artifact: Any, **kwargs: Any) -> Featurizer:
    """Per-process cache. `artifact` may be a Broadcast: `.value` is only read on a miss, so a
    worker unpickles the network once, not once per task."""

    def build() -> Featurizer:
        value = artifact.value if hasattr(artifact, "value") else artifact
        return Featurizer(value, **kwargs)

    fz, built = _FEATURIZERS.get_or_create(key, build)
    if built:
        _BUILDS[key] = _BUILDS.get(key, 0) + 1
    return fz


def featurize_contents(
    featurizer: Featurizer,
    contents: Sequence[bytes | None],
    *,
    size: int,
    max_pixels: int,
    batch_size: int = 64,
    views: int = 1,
) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Decode and featurize; a bad image gets a reason and no features, the rest go on: no
    exception from one image's bytes ever leaves the batch (it used to stop a whole run).

    With `views` > 1 a photo larger than the model input is seen as several views
    (`images.decode_views`) whose features are averaged: one vector per image either way.
    """
    features: list[np.ndarray | None] = [None] * len(contents)
    errors: list[str | None] = [None] * len(contents)
    for start in range(0, len(contents), batch_size):
        chunk = list(contents[start : start + batch_size])
        stacks: list[np.ndarray] = []
        owners: list[int] = []
        for i, data in enumerate(chunk):
            if data is None:  # the storage layer could not read the file, not a bad image
                errors[start + i] = UNREADABLE
                continue
            try:
                views_i = decode_views(data, size=size, views=views, max_pixels=max_pixels)
            except ImageError as exc:
                errors[start + i] = exc.reason
                continue
            except Exception as exc:  # decode_views maps decoder failures; one file, one reason
                log.warning("image failed outside the decoder's checks: %s", type(exc).__name__)
                errors[start + i] = UNDECODABLE
                continue
            stacks.append(views_i)
            owners += [i] * len(views_i)
        if not stacks:
            continue
        pixels = np.concatenate(stacks)
        out = np.concatenate(
            [featurizer(pixels[j : j + batch_size]) for j in range(0, len(pixels), batch_size)]
        )
        owner = np.asarray(owners)
        for i in np.unique(owner):
            rows = out[owner == i]
            features[start + int(i)] = rows[0] if len(rows) == 1 else rows.mean(axis=0)
    return features, errors


def worker_featurizer(
    artifact: Any, artifact_id: str, cfg: FeaturizerConfig, threads: int
) -> tuple[Featurizer, int]:
    """In a Python worker: this process's network for the artifact (built on first use, see
    `get_featurizer`) and the batch size for its device (larger on a GPU)."""
    fz = get_featurizer(
        (artifact_id, cfg.precision, cfg.channels_last, threads, _gpu_index()),
        artifact,
        threads=threads,
        precision=cfg.precision,
        channels_last=cfg.channels_last,
    )
    return fz, cfg.batch_size if fz.device == "cpu" else cfg.batch_size * GPU_BATCH_FACTOR
