"""The package's shape (issue 20): no import circle, and a module imports only lower floors.

Imports are read from the source with `ast` (every `import`, at the top or inside a function,
except those under `if TYPE_CHECKING:`, which never run). A module's floor is 1 + the highest
floor it imports; the ground floor (`common`, `config`, ...) imports nothing of fruits.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FLOOR = 9  # the entry points (cli) at the top; `__main__` is cli's one-line shim
GROUND = ("fruits.common", "fruits.config", "fruits.stage")


def _modules() -> dict[str, Path]:
    mods = {}
    for f in (SRC / "fruits").rglob("*.py"):
        if "sample_data" in f.parts:
            continue
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _type_checking_only(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(x) for x in ast.walk(node))
    return skip


def imports_of(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the fruits modules it imports at run time."""
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_only(tree)
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found.update(t for t in targets if t in mods and t not in (name, "fruits"))
        edges[name] = found
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return imports_of(_modules())


def test_the_reader_finds_what_a_hand_count_says(edges):
    """The checker itself: known arrows present, a TYPE_CHECKING-only import absent."""
    assert "fruits.classify" in edges["fruits.pipeline"]  # from fruits import classify
    assert "fruits.common" in edges["fruits.ingest"]
    assert "fruits.stage" not in edges["fruits.ingest"]  # only under TYPE_CHECKING
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle(edges):
    assert circles(edges) == []


def test_modules_stand_on_at_most_nine_floors(edges):
    @cache
    def floor(m: str) -> int:
        return 1 + max((floor(w) for w in edges[m]), default=0)

    floors = {m: floor(m) for m in edges if m != "fruits.__main__"}
    assert max(floors.values()) <= MAX_FLOOR, sorted(floors.items(), key=lambda x: -x[1])[:5]
    for m in GROUND:
        assert floors[m] == 1, (m, edges[m])  # the ground floor imports nothing of fruits


def test_stages_get_a_typed_run(edges):
    """No stage takes the run as `Any`: they take `stage.Run`, so mypy checks what they use."""
    for name, path in _modules().items():
        assert "run: Any" not in path.read_text(), name


def test_the_session_kind_is_decided_in_one_module():
    """Classic or Spark Connect is known to `spark.Session` only: no other module calls
    `is_connect` or reaches for `.sparkContext` (where Connect would fail)."""
    offenders = []
    for name, path in _modules().items():
        if name == "fruits.spark":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "sparkContext":
                offenders.append(f"{name}:{node.lineno} .sparkContext")
            if isinstance(node, ast.Name) and node.id == "is_connect":
                offenders.append(f"{name}:{node.lineno} is_connect")
    assert offenders == []
