"""A run's fitted chain for other runtimes: one ONNX graph (pixels -> normalise -> CNN ->
scaler -> PCA -> logistic regression) and an MLflow model a Databricks user can register and
serve.

Why both: the ONNX graph is the whole maths in one portable file (ONNX Runtime in any language,
Azure ML, a phone), for images that are already decoded, upright and resized; the MLflow model
is the product's answer for a photo as the API gives it (EXIF, the 8 views of a large photo,
calibrated probabilities, the species and "not sure"), because it wraps the same `Predictor`.
Both are built from the run's `models/` folder, never from Spark, so they equal what
`fruits serve` answers. Needs the `mlflow` extra (mlflow-skinny and onnx).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fruits.predictor import Predictor, read_run

OPSET = 17  # the bundled backbone's opset
CHAIN_FILE = "chain.onnx"


def chain_onnx(run: str | Path) -> bytes:
    """The run's chain as one ONNX graph: input `image` uint8 (N, size, size, 3) RGB, outputs
    `probability` (N, R), Spark's probability vector (see `predictor.ServingArrays`), and
    `features` (N, d), the CNN's."""
    import onnx
    from onnx import compose, helper, numpy_helper

    meta, arrays, artifact = read_run(run)
    backbone = compose.add_prefix(onnx.load_from_string(artifact.payload), "cnn/")
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
            helper.make_node("MatMul", ["scaled", "pca_components"], ["pca"]),
            helper.make_node("MatMul", ["pca", "lr_coef_t"], ["raw"]),
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
            const("pca_components", arrays.pc),
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
    onnx.checker.check_model(chain)
    return chain.SerializeToString()


def log_model(run: str | Path, *, name: str = "model", registered_name: str | None = None) -> Any:
    """Log the run's chain to the active MLflow run: the pyfunc model (the `models/` folder as
    its artifact) with `chain.onnx` beside it; registered under `registered_name` when given
    (Unity Catalog: `catalog.schema.model`). Returns MLflow's ModelInfo."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from fruits.pyfunc import FruitsModel

    root = Path(run)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "run"
        shutil.copytree(root / "models", bundle / "models")
        (bundle / "models" / CHAIN_FILE).write_bytes(chain_onnx(root))
        example = pd.DataFrame({"content": [b"\xff\xd8 a JPEG"]})
        out = pd.DataFrame(
            [
                {
                    "species": "Apple",
                    "species_probability": 0.9,
                    "verdict": "known",
                    "variety": "Apple Red 1",
                    "top_labels": "{}",
                    "error": "",
                }
            ]
        )
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=FruitsModel(),
            artifacts={"run": str(bundle)},
            signature=infer_signature(example, out),
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
