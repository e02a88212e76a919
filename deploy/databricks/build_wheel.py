"""Build the project's wheel for Databricks: the same wheel minus its pyspark requirement.

Databricks Runtime ships Spark; pip installing PyPI's pyspark on a cluster shadows it and breaks
the runtime. Every other dependency stays declared, so the cluster installs them with the wheel.
Run from the repository root (the bundle's artifact build does): writes dist/fruits-*.whl.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DROP = re.compile(r"^Requires-Dist: pyspark\b.*$\n?", re.MULTILINE)


def strip_requirement(wheel: Path, out_dir: Path) -> Path:
    """Copy `wheel` into `out_dir` with pyspark removed from METADATA (RECORD updated)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        metadata = DROP.sub("", src.read(meta).decode())
        digest = base64.urlsafe_b64encode(hashlib.sha256(metadata.encode()).digest()).rstrip(b"=")
        lines = []
        for line in src.read(record).decode().splitlines():
            if line.startswith(meta + ","):
                line = f"{meta},sha256={digest.decode()},{len(metadata.encode())}"
            lines.append(line)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
            for name in names:
                if name == meta:
                    dst.writestr(name, metadata)
                elif name == record:
                    dst.writestr(name, "\n".join(lines) + "\n")
                else:
                    dst.writestr(src.getinfo(name), src.read(name))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="dist")
    parser.add_argument("--project", default=".")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp, args.project],
            check=True,
        )
        for old in Path(args.out).glob("fruits-*.whl"):
            old.unlink()
        for wheel in Path(tmp).glob("fruits-*.whl"):
            print(strip_requirement(wheel, Path(args.out)))


if __name__ == "__main__":
    main()
