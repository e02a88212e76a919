"""Spark's Python worker daemon for the sessions `fruits.spark` starts locally
(`spark.python.daemon.module=fruits.daemon`): Spark's own `pyspark.daemon`, imported from the
installed pyspark package instead of the `pyspark.zip` and `py4j-*.zip` that Spark puts first
on the workers' PYTHONPATH.

Why: profiled with py-spy (`fruits run` on the 11,280 dev images at 100 px, every process), a
third of the Python workers' CPU went to zipimport. pyspark's worker calls
`importlib.invalidate_caches()` for every task, and since Python 3.10 that makes each zip
importer re-read its archive's directory (pyspark.zip: 3 MB); modules imported from a zip are
also compiled from source in every new worker, where the installed package has its `.pyc`.
The zips are dropped only when the same packages import without them (a pip-installed
pyspark: they are copies inside it), so a Spark distribution without one keeps its path.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import PathFinder


def bundled_zips(path: list[str]) -> list[str]:
    """Spark's copies of pyspark and py4j on `path` (`.../python/lib/*.zip`)."""
    lib = os.sep + os.path.join("python", "lib") + os.sep
    return [p for p in path if p.endswith(".zip") and lib in p]


def without_bundled_zips(path: list[str]) -> list[str]:
    """`path` minus Spark's zips when pyspark and py4j import from the rest of it."""
    zips = bundled_zips(path)
    rest = [p for p in path if p not in zips]
    if zips and all(PathFinder.find_spec(name, rest) for name in ("pyspark", "py4j")):
        return rest
    return path


if __name__ == "__main__":
    sys.path[:] = without_bundled_zips(sys.path)  # before pyspark is imported: forks inherit it
    from pyspark.daemon import manager

    manager()  # type: ignore[no-untyped-call]  # pyspark.daemon has no annotations
