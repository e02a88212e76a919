"""The ground floor: the errors and small helpers every stage may need.

It imports nothing of `fruits` (and nothing heavy), so any module can import it without
climbing: a stage raises `InputError`, turns a URI into a local path or writes a JSON file
without depending on the ingest stage or the report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """The input location is missing or holds no image: a user error, reported in one line."""


def has_scheme(uri: str) -> bool:
    """`abfss://...`, `file:/x`, `C:`-less URIs: a scheme before the first slash."""
    return ":" in uri.split("/", 1)[0]


def local_path(uri: str) -> str | None:
    """The local path of `uri` (a plain path or a `file:` URI), else None (a remote scheme)."""
    if uri.startswith("file:"):
        return "/" + uri[len("file:") :].lstrip("/")
    return None if has_scheme(uri) else os.path.abspath(uri)


def read_file(name: str) -> bytes | None:
    """A local file's bytes, None where the read fails (permissions, deleted mid-run)."""
    try:
        with open(name, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def write_json(data: Mapping[str, Any], path: str | Path) -> None:
    """A report-like dict as indented JSON; values JSON lacks (dates, paths) as their str."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def count_by_split(rows: Iterable[Any]) -> dict[str, int]:
    """{split: images} from (split, label, count) rows (Spark Rows or dicts)."""
    splits: dict[str, int] = {}
    for r in rows:
        splits[r["split"]] = splits.get(r["split"], 0) + int(r["count"])
    return splits
