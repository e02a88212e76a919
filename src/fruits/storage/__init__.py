"""Storage: the few file-system operations the pipeline needs, the staging-then-publish
protocol, and the choice of a reader and an output per run.

- `base`: the `Store`, `Reader` and `Target` protocols, URI helpers, `MARKER`, `publish`,
  `recover`, `quietly` (backend-neutral);
- `hadoop`: `HadoopStore`, `HadoopReader`, `HadoopTarget` and `hadoop_can_open` (the JVM);
- `fsspec`: `FsspecStore`, the fsspec ingest reader and the upload at publish time (Azure
  or any fsspec URI Spark cannot open);
- `local`: `LocalReader`, a local folder walked on the driver;
- `plan`: `StoragePlan` and `plan_storage`, the choice made once per run.

This package re-exports the backend-neutral names and `HadoopStore`; import the fsspec and
plan modules by their own names (they load pandas and the Azure helpers).
"""

from fruits.storage.base import (
    MARKER,
    Reader,
    Store,
    Target,
    join,
    new_run_id,
    publish,
    quietly,
    recover,
    split_parent,
    staging_uri,
)
from fruits.storage.hadoop import HadoopStore

__all__ = [
    "MARKER",
    "HadoopStore",
    "Reader",
    "Store",
    "Target",
    "join",
    "new_run_id",
    "publish",
    "quietly",
    "recover",
    "split_parent",
    "staging_uri",
]
