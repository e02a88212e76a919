"""The MLflow pyfunc model of a run (logged by `chain.log_model`): the same `Predictor` as
`fruits serve`, so a model served from the registry answers as the API does. Imported only
when MLflow is in use (the `mlflow` extra)."""

from __future__ import annotations

import json
from typing import Any

from mlflow.pyfunc.model import PythonModel  # defined there; mlflow.pyfunc re-exports it

from fruits.predictor import Predictor

COLUMNS = ("species", "species_probability", "verdict", "variety", "top_labels", "error")


class FruitsModel(PythonModel):
    """MLflow pyfunc: a DataFrame with a binary `content` column (encoded photos) -> one row per
    photo: `species`, `species_probability`, `verdict` (known/unsure), `variety`, `top_labels`
    (JSON) and `error` (why a photo could not be read; the other columns are then null)."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor.load(context.artifacts["run"], threads=1)

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
        """Photos in, answers out. No type hints on purpose: MLflow would infer the signature
        from them (and warns on `Any`); `chain.log_model` logs the signature itself."""
        import pandas as pd

        from fruits.images import ImageError

        rows = []
        for data in model_input["content"]:
            try:
                p = self.predictor.predict(_photo_bytes(data))
            except ImageError as exc:
                rows.append(dict.fromkeys(COLUMNS) | {"error": exc.reason})
                continue
            rows.append(
                {
                    "species": p.species,
                    "species_probability": p.species_probability,
                    "verdict": p.verdict,
                    "variety": p.variety,
                    "top_labels": json.dumps(dict(zip(p.labels, p.probabilities, strict=True))),
                    "error": None,
                }
            )
        return pd.DataFrame(rows, columns=list(COLUMNS))


def _photo_bytes(data: Any) -> bytes:
    """A photo as bytes: MLflow hands a `binary` column over as bytes in Python and as base64
    text from a JSON request (`mlflow models serve`), depending on how the signature is applied."""
    if data is None or (isinstance(data, float) and data != data):  # a missing value (NaN)
        return b""  # the photo's error row says "empty file", the batch goes on
    if isinstance(data, str):
        import base64
        import binascii

        try:
            return base64.b64decode(data)  # MIME base64 may wrap lines
        except (binascii.Error, ValueError):
            return data.encode()
    return bytes(data)
