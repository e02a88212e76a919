"""`pip install fruits` with no extras, as a Databricks cluster installs the wheel: no torch, no
pyspark, a bounded size, and the bundled graph featurizes an image.

It builds the wheel and installs every dependency from PyPI into a fresh venv: about 70 s here
(figures in docs/databricks.md), hence `slow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_INSTALLED_MB = 700


PROBE = """
import importlib.util, json, sys
from pathlib import Path
import fruits
from fruits.config import FeaturizerConfig, bundled_sample
from fruits.artifact import build_artifact
from fruits.engine import Featurizer, featurize_contents
artifact = build_artifact(FeaturizerConfig())
images = sorted(Path(bundled_sample()).rglob("*.jpg"))[:4]
feats, errs = featurize_contents(
    Featurizer(artifact), [p.read_bytes() for p in images], size=100, max_pixels=10**7
)
print(json.dumps({
    "version": fruits.__version__,
    "engine": artifact.engine,
    "errors": errs,
    "dims": [len(f) for f in feats],
    "torch_imported": "torch" in sys.modules,
    "installed": {m: importlib.util.find_spec(m) is not None for m in ("torch", "pyspark", "onnx")},
}))
"""


def _mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _lock(name: str) -> dict[str, str]:
    """Pins of a uv lock (a universal lock may pin one name twice, by marker: the names count)."""
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        pin, sep, version = line.partition("==")
        if sep and not line.startswith((" ", "#")):
            pins[pin.lower()] = version.split(";")[0].strip()
    return pins


def _names(requirements: list[str]) -> set[str]:
    import re

    names = (re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in requirements)
    return {n.lower().replace("_", "-") for n in names}


@pytest.mark.parametrize(
    ("lock", "extras"),
    [
        ("requirements.lock", ("spark",)),
        ("requirements-dev.lock", ("spark", "serve", "azure", "mlflow", "dev")),
    ],
)
def test_locks_pin_every_requirement_and_no_torch(lock, extras):
    """Both locks resolve on the public index alone: no torch (its CPU build is not on PyPI, its
    PyPI build drags several GB of CUDA wheels), and nothing a user's pip could not find."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock(lock)
    assert not [n for n in pins if n == "torch" or n.startswith(("nvidia-", "triton"))]
    assert not [v for v in pins.values() if "+" in v], "a local version label: not on PyPI"
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    missing = _names(wanted) - set(pins) - {"fruits"}
    assert not missing, f"{lock} is stale (make lock): {missing}"


@pytest.mark.slow
def test_plain_install_has_no_torch_and_fits(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    started = time.monotonic()
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    seconds = time.monotonic() - started
    site = next((venv / "lib").glob("python3*/site-packages"))
    packages = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True
    )
    names = {p["name"].lower() for p in json.loads(packages.stdout)}
    assert not {n for n in names if n == "torch" or n.startswith(("nvidia-", "triton"))}
    assert "pyspark" not in names
    size = _mb(site)
    largest = sorted(((_mb(d), d.name) for d in site.iterdir() if d.is_dir()), reverse=True)[:8]
    print(f"\npip install . (no extras): {seconds:.0f} s, site-packages {size:.0f} MB")
    print("largest:", ", ".join(f"{name} {mb:.0f}" for mb, name in largest))
    assert size <= MAX_INSTALLED_MB

    out = subprocess.run(
        [str(py), "-c", PROBE], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["engine"] == "onnx"
    assert probe["errors"] == [None] * 4 and probe["dims"] == [1280] * 4
    assert not probe["torch_imported"]
    assert probe["installed"] == {"torch": False, "pyspark": False, "onnx": False}
    version = subprocess.run(
        [str(venv / "bin" / "fruits"), "--version"], check=True, capture_output=True, text=True
    )
    assert version.stdout.strip() == f"fruits {probe['version']}"
