"""Serving without Spark: the fitted scaler + PCA + classifier as plain numpy arrays.

export.py writes them when a run fits its classifier: `models/serving.npz` (the arrays) and
`models/serving.json` (classes and image settings) next to `models/backbone.onnx`. `Predictor`
loads a run folder and reproduces Spark's transform step by step: the image maths is
`images.decode_image` + `engine.Featurizer` (the code the Spark UDF runs), then the arrays
below, with the same float32 rounding of the PCA output that `images.parquet` stores. No Spark
session and no torch are needed at serve time.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from fruits.artifact import ModelArtifact, load_artifact
from fruits.calibration import Calibration
from fruits.engine import Featurizer, featurize_contents, reduce_features
from fruits.images import ImageError, decode_image, decode_views

FORMAT_VERSION = 1
# The variety is named only from this calibrated probability of its class: 81% of varieties
# named are right at 0.5 on the val_ photos, against 71% when always named (recognition study).
VARIETY_SURE = 0.5
ARRAYS_FILE = "serving.npz"
META_FILE = "serving.json"
SUCCESS_FILE = "_SUCCESS.json"  # written last by a run: without it, the run did not finish


class ServingError(RuntimeError):
    """A run folder that cannot be served (missing or inconsistent files)."""


@dataclass(frozen=True)
class ServingArrays:
    """Spark's fitted chain as arrays; shapes: d features, k components, R model outputs.

    R is the number of classes plus one when the label indexer keeps an "unknown" slot
    (classify.py's StringIndexer uses handleInvalid="keep", so Spark's logistic regression has
    an output for it that no training row ever had). The softmax runs over all R outputs, as
    Spark's does; only the first len(classes) are ever reported.
    """

    mean: np.ndarray  # (d,) subtracted first (StandardScaler withMean)
    scale: np.ndarray  # (d,) 1/std, 0 where std == 0, as Spark's StandardScalerModel does
    pc: np.ndarray  # (d, k) PCA loadings
    coef: np.ndarray  # (R, d) on the scaled features, or (R, k) on the PCA (`reads`)
    intercept: np.ndarray  # (R,)
    # What the classifier reads: "scaled" (the standardised CNN features, every run since the
    # leave-one-source-out study: 2-7 points better on every held-out source than the PCA)
    # or "pca" (older runs). The PCA stays the analysts' output either way.
    reads: str = "pca"

    def validate(self, classes: Sequence[str]) -> None:
        d, k = self.pc.shape
        r = self.coef.shape[0]
        width = d if self.reads == "scaled" else k
        ok = (
            self.reads in ("scaled", "pca")
            and self.mean.shape == (d,)
            and self.scale.shape == (d,)
            and self.coef.shape == (r, width)
            and self.intercept.shape == (r,)
            and len(classes) <= r <= len(classes) + 1
        )
        if not ok:
            raise ServingError(
                f"inconsistent serving arrays: pc {self.pc.shape}, mean {self.mean.shape}, "
                f"scale {self.scale.shape}, coef {self.coef.shape}, intercept "
                f"{self.intercept.shape}, {len(classes)} classes"
            )

    def reduce(self, features: np.ndarray) -> np.ndarray:
        """(N, d) CNN features -> (N, k) PCA coordinates, rounded to float32 like the stored
        `pca` column the classifier was trained on (the same function wrote it)."""
        return reduce_features(features, self.mean, self.scale, self.pc).astype(np.float64)

    def scaled(self, features: np.ndarray) -> np.ndarray:
        """(N, d) CNN features -> (N, d) standardised, as Spark's StandardScalerModel does."""
        x = np.asarray(features, dtype=np.float32).astype(np.float64)
        return cast(np.ndarray, (x - self.mean) * self.scale)  # numpy: Any

    def classifier_input(self, features: np.ndarray) -> np.ndarray:
        """(N, d) CNN features -> what the classifier reads (see `reads`)."""
        return self.scaled(features) if self.reads == "scaled" else self.reduce(features)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """(N, d or k) classifier input -> (N, R) softmax of the logits, max-shifted as Spark
        does."""
        logits = np.asarray(inputs, dtype=np.float64) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return cast(np.ndarray, e / e.sum(axis=1, keepdims=True))  # numpy's stubs: Any


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object; {} when the file is missing (older runs)."""
    try:
        return cast(dict[str, Any], json.loads(path.read_text()))  # json.loads: Any
    except FileNotFoundError:
        return {}


def check_run(run: str | Path) -> dict[str, Any]:
    """Read and cross-check a run's serving files before a server starts (`fruits serve`), so
    a bad folder fails with one line naming the file, not a traceback inside uvicorn's
    start-up: the run must be finished (`_SUCCESS.json`, written last), its arrays and JSON
    readable and consistent, its ONNX graph one ONNX Runtime can load. Returns the metadata;
    raises `ServingError`."""
    root = Path(run)
    # an MLflow model's copy of a run (`<model>/artifacts/run`, see `chain.run_folder`) holds only
    # its models/ folder: it was logged from a finished run, and has no marker of its own
    logged = (root.parent.parent / "MLmodel").is_file() and root.parent.name == "artifacts"
    if root.is_dir() and not logged and not (root / SUCCESS_FILE).exists():
        raise ServingError(
            f"{root / SUCCESS_FILE} is missing: {root} is not a finished `fruits run` output "
            "(still running, or it failed)"
        )
    meta, arrays, artifact = read_run(run)
    if arrays.pc.shape[0] != artifact.spec.feature_dim:
        raise ServingError(
            f"backbone gives {artifact.spec.feature_dim} features but the PCA expects "
            f"{arrays.pc.shape[0]}"
        )
    if artifact.engine == "onnx":
        import onnxruntime as ort

        try:
            ort.InferenceSession(artifact.payload, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime's own errors (InvalidProtobuf, Fail...)
            raise ServingError(
                f"{root / 'models' / 'backbone.onnx'} is corrupt: ONNX Runtime cannot load it "
                f"({type(exc).__name__})"
            ) from None
    return meta


def read_run(run: str | Path) -> tuple[dict[str, Any], ServingArrays, ModelArtifact]:
    """A run's serving files (metadata, arrays, backbone), checked; `ServingError` names what
    is missing. Shared by `Predictor.load` and `chain.chain_onnx`."""
    root = Path(run)
    models = root / "models"
    if not root.is_dir():
        raise ServingError(f"{root} is not a folder (give the output folder of `fruits run`)")
    for needed in (ARRAYS_FILE, META_FILE, "backbone.json"):
        if not (models / needed).exists():
            raise ServingError(
                f"{models / needed} is missing: is {root} the output of `fruits run` with a "
                "Test split (the classifier is only trained when one exists)?"
            )
    meta = _read_object(models / META_FILE)
    if meta.get("format") != FORMAT_VERSION:
        raise ServingError(f"unsupported serving format {meta.get('format')!r}")
    try:
        with np.load(models / ARRAYS_FILE, allow_pickle=False) as npz:
            kept = {name: npz[name] for name in npz.files}
            if "reads" in kept:
                kept["reads"] = str(kept["reads"])
            arrays = ServingArrays(**kept)
    except Exception as exc:  # not a zip, truncated, a pickle, wrong or missing arrays
        raise ServingError(
            f"{models / ARRAYS_FILE} is corrupt or not a serving file ({type(exc).__name__})"
        ) from None
    if not isinstance(meta.get("classes"), list):
        raise ServingError(f"{models / META_FILE} has no list of classes")
    arrays.validate(meta["classes"])
    _read_object(models / "backbone.json")  # a readable error before load_artifact parses it
    try:
        artifact = load_artifact(models)
    except (KeyError, TypeError, ValueError) as exc:
        raise ServingError(
            f"{models / 'backbone.json'} is not a backbone description ({type(exc).__name__})"
        ) from None
    if artifact.engine == "onnx" and not artifact.payload:
        raise ServingError(f"{models / 'backbone.onnx'} is missing")
    if not meta.get("run_id"):
        meta["run_id"] = read_json(root / "report.json").get("run_id")
    return meta, arrays, artifact


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON file's object; `ServingError` naming the file when it is not one."""
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServingError(f"{path} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise ServingError(f"{path} is not a JSON object")
    return value


@dataclass(frozen=True)
class Prediction:
    """Classes best first, with their calibrated probabilities, and the answer for a person:
    the species, its probability (every class of that species summed) and the verdict
    (`known`, or `unsure` below the run's calibrated threshold or for "not a fruit")."""

    labels: list[str]
    probabilities: list[float]
    species: str | None = None
    species_probability: float | None = None
    verdict: str = "known"
    variety: str | None = None  # the best class within the answered species


class Predictor:
    """One loaded run: CNN session + arrays. Thread-safe (ONNX Runtime sessions are), so one
    instance serves every request of a process."""

    def __init__(
        self,
        featurizer: Featurizer,
        arrays: ServingArrays,
        classes: Sequence[str],
        *,
        image_size: int,
        max_pixels: int,
        run_id: str | None = None,
        backbone: dict[str, Any] | None = None,
        calibration: Calibration | None = None,
        views: int = 1,
    ) -> None:
        arrays.validate(classes)
        if arrays.pc.shape[0] != featurizer.spec.feature_dim:
            raise ServingError(
                f"backbone gives {featurizer.spec.feature_dim} features but the PCA expects "
                f"{arrays.pc.shape[0]}"
            )
        self.featurizer = featurizer
        self.arrays = arrays
        self.classes = list(classes)
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.run_id = run_id
        self.backbone = backbone or {}
        self.calibration = calibration or Calibration.from_meta(None, classes)
        self.views = views
        self._batcher: MicroBatcher | None = None

    @classmethod
    def load(cls, run: str | Path, *, threads: int = 0) -> Predictor:
        """Load `run` (a local `fruits run` output folder). `threads`: ONNX Runtime intra-op
        threads, 0 = every core."""
        meta, arrays, artifact = read_run(run)
        featurizer = Featurizer(artifact, threads=threads or os.cpu_count() or 1)
        return cls(
            featurizer,
            arrays,
            meta["classes"],
            image_size=int(meta["image_size"]),
            max_pixels=int(meta["max_pixels"]),
            run_id=meta.get("run_id"),
            backbone=artifact.describe(),
            calibration=Calibration.from_meta(meta.get("recognition"), meta["classes"]),
            views=int(meta.get("views", 1)),
        )

    def pixels(self, data: bytes, *, max_pixels: int | None = None) -> np.ndarray:
        """Bytes -> (size, size, 3) uint8; raises `ImageError` with a readable reason."""
        limit = self.max_pixels if max_pixels is None else min(max_pixels, self.max_pixels)
        return decode_image(data, size=self.image_size, max_pixels=limit)

    def probabilities_from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, size, size, 3) uint8 -> (N, R): Spark's `probability` vector (see
        `ServingArrays`)."""
        return self.arrays.probabilities(self.arrays.classifier_input(self.featurizer(pixels)))

    def predict_proba(self, contents: Sequence[bytes]) -> tuple[np.ndarray, list[str | None]]:
        """A batch through `featurize_contents` (the Spark UDF's function): (N, R) probabilities
        with NaN rows where the image failed, and the failure reasons."""
        feats, errors = featurize_contents(
            self.featurizer,
            list(contents),
            size=self.image_size,
            max_pixels=self.max_pixels,
            views=self.views,
        )
        out = np.full((len(contents), self.arrays.coef.shape[0]), np.nan)
        ok = [i for i, f in enumerate(feats) if f is not None]
        if ok:
            stacked = np.stack([feats[i] for i in ok])  # type: ignore[misc]
            out[ok] = self.arrays.probabilities(self.arrays.classifier_input(stacked))
        return out, errors

    def predict(self, data: bytes, *, top_k: int = 3, max_pixels: int | None = None) -> Prediction:
        """One encoded image -> its top-k classes. Raises `ImageError` for a bad image.

        The photo is seen as the pipeline saw its training photos (`images.decode_views`: one
        view, or eight averaged for a photo larger than the model input). Decoding runs in the
        caller's thread; with `start_batching`, the CNN call joins whatever other requests are
        waiting."""
        limit = self.max_pixels if max_pixels is None else min(max_pixels, self.max_pixels)
        pixels = decode_views(data, size=self.image_size, views=self.views, max_pixels=limit)
        batcher = self._batcher
        feats = batcher(pixels) if batcher is not None else self.featurizer(pixels)
        mean = np.asarray(feats, dtype=np.float32).mean(axis=0, keepdims=True)
        probs = self.arrays.probabilities(self.arrays.classifier_input(mean))
        return self.top(probs[0], top_k)

    def start_batching(self, *, max_batch: int = 16) -> None:
        """Serve concurrent `predict` calls through one CNN thread, in shared batches: no
        oversubscribed cores (N requests x T ONNX threads), and better throughput per core."""
        if self._batcher is None:
            self._batcher = MicroBatcher(self.featurizer, max_batch=max_batch)

    def stop_batching(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()

    def top(self, probs: np.ndarray, top_k: int) -> Prediction:
        """Best known classes first (the indexer's "unknown" slot is never a guess), with
        probabilities calibrated by the run's temperature, and the species-level answer."""
        from fruits.recognition import answer, softmax

        cal = self.calibration
        n = len(self.classes)
        logits = np.log(np.clip(np.asarray(probs[:n], dtype=np.float64), 1e-300, None))
        calibrated = softmax(logits[None], cal.temperature)[0]
        k = max(1, min(top_k, n))
        order = np.argsort(-calibrated, kind="stable")[:k]
        said = answer(calibrated[None], self.classes, cal.species or {}, cal.threshold)
        return Prediction(
            [self.classes[i] for i in order],
            [float(calibrated[i]) for i in order],
            species=said.species[0],
            species_probability=float(said.species_probability[0]),
            verdict="known" if bool(said.known[0]) else "unsure",
            variety=said.label[0]
            if calibrated[self.classes.index(said.label[0])] >= VARIETY_SURE
            else None,
        )


class BatcherClosed(RuntimeError):
    """A call reached a `MicroBatcher` that is closed (the server is shutting down): the API
    answers 503 instead of waiting for a worker that is gone."""


class MicroBatcher:
    """One worker thread owns `fn`; callers queue rows and block on a future. The worker takes
    everything already queued (up to `max_batch` rows) into one call, so under load batches
    form on their own and a lone request never waits for company.

    Closing is race-free: `closed` and the queue's end marker change under one lock, so no call
    can queue behind the marker (where no worker would ever take it and its caller would wait
    forever); a call after `close` raises `BatcherClosed`, and any call still queued when the
    worker stops fails with it too."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 16) -> None:
        self.fn = fn
        self.max_batch = max(1, max_batch)
        self._queue: queue.Queue[tuple[np.ndarray, Future[np.ndarray]] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="fruits-batcher", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        fut: Future[np.ndarray] = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is closed: the server is shutting down")
            self._queue.put((rows, fut))
        return fut.result()

    def close(self, *, timeout: float = 30) -> None:
        """Stop taking calls, let the worker finish those queued, then fail any left over (a
        worker stuck in `fn` past `timeout`) with `BatcherClosed`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join(timeout=timeout)
        self._fail_pending()

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[1].set_running_or_notify_cancel():
                item[1].set_exception(BatcherClosed("the server shut down before this request ran"))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._fail_pending()  # nothing can be queued after the marker; kept as a guard
                return
            batch = [item]
            size = len(item[0])
            while size < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
                size += len(nxt[0])
            try:
                out = self.fn(np.concatenate([rows for rows, _ in batch]))
            except BaseException as exc:
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            start = 0
            for rows, fut in batch:
                fut.set_result(out[start : start + len(rows)])
                start += len(rows)


__all__ = [
    "BatcherClosed",
    "ImageError",
    "MicroBatcher",
    "Prediction",
    "Predictor",
    "ServingArrays",
    "ServingError",
    "check_run",
    "read_json",
]
