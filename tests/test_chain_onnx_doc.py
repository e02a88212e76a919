"""docs/chain-onnx.md's example, run as written: chain.onnx with onnxruntime, numpy and Pillow
only (the fruits package made unimportable) gives the answer the run's `Predictor` gives."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from fruits.predictor import Predictor

pytest.importorskip("onnx", reason="the mlflow extra (in dev)")
DOC = Path(__file__).resolve().parents[1] / "docs" / "chain-onnx.md"


def example_code() -> str:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return code


def test_the_documented_example_answers_as_serving(sample_run, sample_dir, tmp_path):
    from fruits.chain import chain_onnx

    run_dir = Path(unquote(urlparse(sample_run.output).path))
    chain = tmp_path / "chain.onnx"
    chain.write_bytes(chain_onnx(run_dir))
    script = tmp_path / "chain_example.py"
    # The example may import only onnxruntime, numpy and Pillow: fruits is blocked.
    script.write_text("import sys\nsys.modules['fruits'] = None\n" + example_code())
    predictor = Predictor.load(run_dir, threads=1)
    photos = sorted((sample_dir / "Test").glob("*/*.jpg"))[::9]
    assert len(photos) >= 8
    for photo in photos:
        done = subprocess.run(
            [sys.executable, str(script), str(chain), str(photo)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        got = json.loads(done.stdout)
        want = predictor.predict(photo.read_bytes())
        assert (got["species"], got["verdict"], got["variety"]) == (
            want.species,
            want.verdict,
            want.variety,
        ), photo
        assert got["species_probability"] == pytest.approx(want.species_probability, abs=1e-4)
