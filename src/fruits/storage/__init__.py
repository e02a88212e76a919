"""Storage: the few file-system operations the pipeline needs, the staging-then-publish
protocol, and the choice of a reader and an output per run.

- `base`: the `Store` and `Target` protocols, URI helpers, `MARKER`, `publish`,
  `recover`, `quietly` (backend-neutral);
- `hadoop`: `HadoopStore`, `HadoopTarget` and `hadoop_can_open` (the JVM);
- `fsspec`: `FsspecStore`, `locate` (which fsspec file system opens a URI) and the upload at
  publish time (Azure or any fsspec URI Spark cannot open);
- `plan`: `StoragePlan` and `plan_storage`, the choice made once per run of a source per
  input (`fruits.sources`, which sit between the stores and this plan) and of the output.

This package re-exports the backend-neutral names and `HadoopStore`; import the fsspec and
plan modules by their own names (they load pandas and the Azure helpers).
"""

from fruits.storage.base import (
    MARKER,
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
