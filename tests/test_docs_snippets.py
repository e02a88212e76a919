"""Every ```python block of README.md and docs/*.md runs as written, on the bundled sample.

Each block runs in its own Python process from the repository root (so a cwd-relative path
such as `src/fruits/sample_data/...` works), the way a reader pastes it into a notebook: when a
block uses `spark` without making one, it gets a local session, as a Databricks or Jupyter
notebook provides. A block that cannot run here (it needs a workspace, Azure, an MLflow
server, or is a fragment) says so on its first line: `# not run: <why>`; it is reported as a
skip with that reason, never silently dropped.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"\A\s*#\s*not run:\s*(.+)")

# What a notebook gives a snippet before its first line: a SparkSession named `spark`.
NOTEBOOK_PRELUDE = """\
from pyspark.sql import SparkSession
spark = (
    SparkSession.builder.master("local[2]")
    .config("spark.ui.enabled", "false")
    .config("spark.ui.showConsoleProgress", "false")
    .config("spark.sql.shuffle.partitions", "4")
    .getOrCreate()
)
"""


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def snippets() -> list[tuple[str, int, str]]:
    """(file relative to the root, index of the python block in that file, code)."""
    found = []
    for path in doc_files():
        for i, match in enumerate(FENCE.finditer(path.read_text(encoding="utf-8"))):
            found.append((path.relative_to(ROOT).as_posix(), i, match.group(1)))
    return found


def needs_spark(code: str) -> bool:
    uses = re.search(r"\bspark\.", code) is not None
    makes = re.search(r"^\s*spark\s*=", code, re.M) is not None
    return uses and not makes


def test_the_fence_finder_finds_blocks_and_their_marks() -> None:
    text = "intro\n```python\nprint(1)\n```\n```bash\nls\n```\n```python\n# not run: x\n```\n"
    blocks = [m.group(1) for m in FENCE.finditer(text)]
    assert blocks == ["print(1)\n", "# not run: x\n"]
    assert NOT_RUN.match(blocks[1]).group(1) == "x"
    assert needs_spark("df = spark.read.parquet('x')") and not needs_spark("spark = make()\n")


# A snippet that starts Spark runs the CNN in a JVM of its own: minutes on two shared cores.
ALL = [
    pytest.param(
        doc, index, code, id=f"{doc}[{index}]", marks=[pytest.mark.slow] if "spark" in code else []
    )
    for doc, index, code in snippets()
]


@pytest.mark.parametrize(("doc", "index", "code"), ALL)
def test_snippet_runs(doc: str, index: int, code: str, tmp_path: Path) -> None:
    mark = NOT_RUN.match(code)
    if mark:
        pytest.skip(f"{doc}[{index}] not run: {mark.group(1).strip()}")
    script = tmp_path / f"snippet_{index}.py"
    script.write_text((NOTEBOOK_PRELUDE if needs_spark(code) else "") + code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    first = code.strip().splitlines()[0] if code.strip() else ""
    # The error's headlines (Python's, and the JVM's under a Py4JJavaError), not its stack.
    found = re.findall(r"^(?::\s)?([\w.$]*(?:Error|Exception)\b:.*)$", done.stderr, re.M)
    headlines = " | ".join(dict.fromkeys(h[:200] for h in found[-3:]))
    assert done.returncode == 0, (
        f"{doc} python block {index} (first line {first!r}) failed: {headlines}\n"
        f"{done.stderr[-2000:]}"
    )
