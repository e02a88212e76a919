"""A run's fitted chain for other runtimes: one ONNX graph (pixels -> normalise -> CNN ->
scaler -> PCA -> logistic regression) and an MLflow model a Databricks user can register and
serve.

Why both: the ONNX graph is the whole maths in one portable file (ONNX Runtime in any language,
Azure ML, a phone), for images that are already decoded, upright and resized; the MLflow model
is the product's answer for a photo as the API gives it (EXIF, the 8 views of a large photo,
calibrated probabilities, the species and "not sure"), because it wraps the same `Predictor`.
Both are built from the run's `models/` folder, never from Spark, so they equal what
`fruits serve` answers. Needs the `mlflow` extra (mlflow-skinny and onnx); without onnx the
MLflow model is still logged, without `chain.onnx`, and a warning says so.

The MLflow model is self-contained: the `fruits` package travels in the model (`code/`), so
its requirements name only public packages, pinned to the versions that logged it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from fruits.artifact import ModelArtifact
from fruits.models import fingerprint
from fruits.predictor import VARIETY_SURE, Predictor, read_run

log = logging.getLogger(__name__)

OPSET = 17  # the bundled backbone's opset
CHAIN_FILE = "chain.onnx"
# What the served model imports (pyfunc -> predictor): the project's own floors, pinned to the
# versions that logged the model. Not matplotlib, typer, fsspec: the pipeline's, not serving's.
SERVING_DEPS = ("numpy", "pandas", "pyarrow", "pillow", "onnxruntime")
# Left out of the package copy that travels with the model: the photos of `fruits demo` and the
# bundled graph (the run's own `models/backbone.onnx` is in the model).
CODE_EXCLUDE = ("sample_data", "__pycache__", "*.pyc", "*.onnx")


class ChainError(RuntimeError):
    """The run's chain cannot be exported; the message says why, in one line."""


def backbone_onnx(artifact: ModelArtifact) -> bytes:
    """The run's CNN as ONNX bytes, whatever engine ran it.

    A torch-engine run saved torch weights, or none (the weights installed with the package):
    then the bundled graph is that very network, exported once (same fingerprint). With user
    weights the network is exported here, which needs PyTorch. ONNX and torch features differ
    by float rounding only."""
    if artifact.engine == "onnx":
        if not artifact.payload:
            raise ChainError("the run's models/backbone.onnx is missing")
        return artifact.payload
    from fruits.artifact import EXPORT_HINT, bundled_graph, export_onnx

    name = artifact.spec.name
    bundled = None if artifact.payload else bundled_graph(name)
    if bundled is not None and artifact.fingerprint == fingerprint(name, None):
        return bundled.read_bytes()
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ChainError(
            f"this torch-engine run of {name} has its own weights; turning them into ONNX needs "
            f"PyTorch: {EXPORT_HINT}"
        ) from None
    from fruits.models import build_torch

    return export_onnx(build_torch(name, artifact.payload or None))


def chain_metadata(meta: dict[str, Any], outputs: int) -> dict[str, str]:
    """The ONNX model's metadata props: what a user of `chain.onnx` alone needs to turn its
    `probability` output into the API's answer (docs/chain-onnx.md shows how)."""
    from fruits.calibration import Calibration
    from fruits.recognition import NEGATIVE

    classes = list(meta["classes"])
    cal = Calibration.from_meta(meta.get("recognition"), classes)
    size = int(meta["image_size"])
    return {
        "fruits.run_id": str(meta.get("run_id") or ""),
        "fruits.classes": json.dumps(classes),
        "fruits.outputs": str(outputs),
        "fruits.unknown_slot": json.dumps(outputs == len(classes) + 1),
        "fruits.input": f"image: uint8 (N, {size}, {size}, 3), RGB, upright",
        "fruits.image_size": str(size),
        "fruits.resize": (
            "apply the EXIF orientation, convert to RGB, resize the whole photo to "
            f"{size}x{size} with bilinear filtering (aspect not kept; JPEG draft first). The "
            "API also averages 8 views of a photo larger than the input; one view here."
        ),
        "fruits.temperature": repr(float(cal.temperature)),
        "fruits.threshold": repr(float(cal.threshold)),
        "fruits.species": json.dumps(cal.species or {}),
        "fruits.negative_class": NEGATIVE,
        "fruits.variety_sure": repr(VARIETY_SURE),
        "fruits.answer": (
            "p = probability[:, :len(classes)]; calibrated = softmax(log(p) / temperature); "
            "species probability = sum of its classes; known if >= threshold and species is "
            "not the negative class; variety named if its calibrated probability >= variety_sure"
        ),
    }


def chain_onnx(run: str | Path) -> bytes:
    """The run's chain as one ONNX graph: input `image` uint8 (N, size, size, 3) RGB, outputs
    `probability` (N, R), Spark's probability vector (see `predictor.ServingArrays`), and
    `features` (N, d), the CNN's. Metadata props (`chain_metadata`): classes in order, the
    "unknown" slot, input size, resize rule, temperature, threshold, species map."""
    import onnx
    from onnx import compose, helper, numpy_helper

    meta, arrays, artifact = read_run(run)
    backbone = compose.add_prefix(onnx.load_from_string(backbone_onnx(artifact)), "cnn/")
    spec = artifact.spec

    def const(name: str, value: np.ndarray) -> Any:
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

    shape = np.array([1, 3, 1, 1])
    pre = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["as_float"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Transpose", ["as_float"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Sub", ["nchw", "pixel_mean"], ["centred"]),
            helper.make_node("Mul", ["centred", "pixel_inv_std"], ["normalised"]),
        ],
        "normalise",
        [helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("normalised", onnx.TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [
            const("pixel_mean", np.reshape(spec.mean, shape)),
            const("pixel_inv_std", 1.0 / np.reshape(spec.std, shape)),
        ],
    )
    head = helper.make_graph(
        [
            helper.make_node("Identity", ["cnn_features"], ["features"]),
            helper.make_node("Sub", ["cnn_features", "scaler_mean"], ["centred_features"]),
            helper.make_node("Mul", ["centred_features", "scaler_scale"], ["scaled"]),
            *(
                [helper.make_node("MatMul", ["scaled", "lr_coef_t"], ["raw"])]
                if arrays.reads == "scaled"  # the classifier reads the scaled features
                else [
                    helper.make_node("MatMul", ["scaled", "pca_components"], ["pca"]),
                    helper.make_node("MatMul", ["pca", "lr_coef_t"], ["raw"]),
                ]
            ),
            helper.make_node("Add", ["raw", "lr_intercept"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probability"], axis=1),
        ],
        "reduce_and_classify",
        [helper.make_tensor_value_info("cnn_features", onnx.TensorProto.FLOAT, ["N", None])],
        [
            helper.make_tensor_value_info("probability", onnx.TensorProto.FLOAT, ["N", None]),
            helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["N", None]),
        ],
        [
            const("scaler_mean", arrays.mean),
            const("scaler_scale", arrays.scale),
            *([] if arrays.reads == "scaled" else [const("pca_components", arrays.pc)]),
            const("lr_coef_t", arrays.coef.T),
            const("lr_intercept", arrays.intercept),
        ],
    )
    opset = [helper.make_opsetid("", OPSET)]

    def model(graph: Any) -> Any:
        return helper.make_model(graph, opset_imports=opset, ir_version=backbone.ir_version)

    (cnn_in,) = [i.name for i in backbone.graph.input]
    (cnn_out,) = [o.name for o in backbone.graph.output]
    first = compose.merge_models(model(pre), backbone, io_map=[("normalised", cnn_in)])
    chain = compose.merge_models(first, model(head), io_map=[(cnn_out, "cnn_features")])
    chain.doc_string = json.dumps(
        {"run_id": meta.get("run_id"), "classes": meta["classes"], "image_size": meta["image_size"]}
    )
    helper.set_model_props(chain, chain_metadata(meta, int(arrays.coef.shape[0])))
    onnx.checker.check_model(chain)
    return cast(bytes, chain.SerializeToString())  # onnx's protobuf message reads as Any here


def serving_requirements() -> list[str]:
    """pip requirements of the logged model: MLflow, cloudpickle and `SERVING_DEPS`, each pinned
    to the installed version (what the model was checked with); never `fruits` itself, which
    travels in the model as code."""
    from importlib import metadata

    def pin(name: str) -> str | None:
        try:
            return f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            return None

    mlflow = pin("mlflow") or pin("mlflow-skinny") or "mlflow-skinny>=3,<4"
    found = [pin(name) for name in ("cloudpickle", *SERVING_DEPS)]
    return [mlflow, *(r for r in found if r)]


def package_copy(target: Path) -> Path:
    """The installed `fruits` package copied under `target` (for `code_paths`), without
    `CODE_EXCLUDE`: the model then runs where fruits is not installed."""
    import fruits

    source = Path(fruits.__file__).parent
    dest = target / "fruits"
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*CODE_EXCLUDE))
    return dest


def example_photo() -> bytes:
    """A small real JPEG (a red disc on white) for the model's input example."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).ellipse((8, 8, 56, 56), fill=(200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def model_signature() -> Any:
    """Photos in, answers out. Every output is optional: an unreadable photo gets a row whose
    only value is `error`, and a readable one has no `error` and maybe no `variety`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [
        ColSpec("string", "species", required=False),
        ColSpec("double", "species_probability", required=False),
        ColSpec("string", "verdict", required=False),
        ColSpec("string", "variety", required=False),
        ColSpec("string", "top_labels", required=False),
        ColSpec("string", "error", required=False),
    ]
    return ModelSignature(Schema([ColSpec("binary", "content")]), Schema(list(outputs)))


def log_model(run: str | Path, *, name: str = "model", registered_name: str | None = None) -> Any:
    """Log the run's chain to the active MLflow run: the pyfunc model (the `models/` folder as
    its artifact, the `fruits` package as its code) with `chain.onnx` beside it; registered
    under `registered_name` when given (Unity Catalog: `catalog.schema.model`). Returns
    MLflow's ModelInfo.

    A torch-engine run's model serves its network as ONNX (`backbone_onnx`), so the model needs
    no PyTorch. Without the onnx package, the model is logged without `chain.onnx` (warned)."""
    import mlflow
    import pandas as pd

    from fruits.artifact import save_artifact
    from fruits.pyfunc import FruitsModel

    root = Path(run)
    artifact = read_run(root)[2]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "run"
        shutil.copytree(root / "models", bundle / "models")
        if artifact.engine != "onnx":
            for old in (bundle / "models").glob("backbone.pt"):
                old.unlink()
            onnx_artifact = ModelArtifact(
                artifact.spec, "onnx", backbone_onnx(artifact), artifact.fingerprint
            )
            save_artifact(onnx_artifact, bundle / "models")
        try:
            (bundle / "models" / CHAIN_FILE).write_bytes(chain_onnx(root))
        except ImportError as exc:
            log.warning(
                "MLflow model logged WITHOUT %s: %s is not installed (pip install onnx)",
                CHAIN_FILE,
                exc.name or "onnx",
            )
        code = package_copy(Path(tmp) / "code")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=FruitsModel(),
            artifacts={"run": str(bundle)},
            code_paths=[str(code)],
            pip_requirements=serving_requirements(),
            signature=model_signature(),
            input_example=pd.DataFrame({"content": [example_photo()]}),
            registered_model_name=registered_name,
        )


MODEL_URI_SCHEMES = ("models:/", "runs:/")


def run_folder(model_uri: str) -> Path:
    """A logged model (`models:/name/1`, `runs:/<id>/model`) as a local run folder that
    `Predictor.load` and `fruits serve --run` read: MLflow downloads it once."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(model_uri)
    return Path(local) / "artifacts" / "run"


def load_predictor(model_uri: str) -> Predictor:
    return Predictor.load(run_folder(model_uri))
