"""What every backend shares: the `Store` protocol (the few file-system operations the
pipeline needs), the URI helpers, and the staging-then-publish protocol that keeps
half-written runs from looking complete.

The backends implementing `Store` live beside this module: `hadoop.HadoopStore` (Spark's
Hadoop FileSystem, any scheme the cluster has a connector for) and `fsspec.FsspecStore`
(Azure or any fsspec URI when Spark itself cannot open it).
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


log = logging.getLogger(__name__)


class Store(Protocol):
    """What the pipeline asks of a file system."""

    def exists(self, uri: str) -> bool: ...
    def delete(self, uri: str) -> None: ...
    def rename(self, src: str, dst: str) -> None: ...
    def put(self, local: str | Path, uri: str) -> None: ...
    def get(self, uri: str, local: str | Path) -> None: ...
    def list(self, uri: str) -> list[str]: ...
    def is_file(self, uri: str) -> bool: ...
    def read_text(self, uri: str) -> str: ...
    def create_new(self, uri: str, text: str) -> bool: ...
    def write_text(self, uri: str, text: str) -> None: ...
    def modified(self, uri: str) -> float | None: ...


class Target(Protocol):
    """Where a run's output goes, chosen once by `plan.plan_storage`: `work_output` is where
    the pipeline writes and publishes, `finish` puts the published run at `uri` if it is not
    there already."""

    @property
    def mode(self) -> str:
        """`hadoop` or `fsspec`, as the plan reports it."""

    @property
    def uri(self) -> str:
        """The output as the user and the report know it."""

    @property
    def work_output(self) -> str: ...
    def out_store(self, spark: SparkSession) -> Store:
        """The store that holds `uri`: the lease, the output rules and the final publish."""

    def finish(self, run_id: str) -> None: ...
    def cleanup(self) -> None: ...


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[x.strip("/") for x in parts]])


def split_parent(uri: str) -> tuple[str, str]:
    """`abfss://c@a/x/out` -> (`abfss://c@a/x`, `out`); works for bare local paths too."""
    stripped = uri.rstrip("/")
    head, _, name = stripped.rpartition("/")
    if not name:
        raise ValueError(f"output must name a folder, got {uri!r}")
    if head.endswith(":") or head.endswith(":/"):  # e.g. "dbfs:/out" or "file:///out"
        head += "/"
    if not head:
        head = "/" if stripped.startswith("/") else "."
    return head, name


def staging_uri(output: str, run_id: str) -> str:
    """A sibling of the output, so the final publish is a rename on the same file system."""
    parent, name = split_parent(output)
    return join(parent, f".{name}.staging-{run_id}")


RUN_ID = re.compile(r"[0-9a-f]{12}")  # what `new_run_id` makes, and nothing else


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def leftover_run(output_name: str, entry_name: str) -> tuple[str, str] | None:
    """(`staging`|`old`, run id) when `entry_name` is exactly a folder this code makes beside
    the output `output_name` (`.NAME.staging-RUNID`, `.NAME.old-RUNID`), else None.

    Exact, because `recover` deletes what matches: a prefix test took `.o.v2.old-...` (the
    neighbour `o.v2`'s saved copy) for `o`'s and a user's own `.o.old-2024` backup for ours.
    """
    for kind in ("staging", "old"):
        head = f".{output_name}.{kind}-"
        if entry_name.startswith(head) and RUN_ID.fullmatch(entry_name[len(head) :]):
            return kind, entry_name[len(head) :]
    return None


MARKER = "_SUCCESS.json"  # written last: an output without it is not a finished run


def publish(store: Store, staging: str, output: str, run_id: str) -> None:
    """Swap the finished staging folder into place (the caller holds the output's lease).

    Where the store can exchange two folders in one step (`exchange`: Linux `renameat2`
    with `RENAME_EXCHANGE` on local disk), a reader sees the old complete output or the new
    one, never none; the old one is then deleted under the staging name. Elsewhere, two
    renames: on HDFS and ADLS Gen2 each is atomic, but between them (21 ms in a probe on
    local disk) a reader finds no output, and a kill there leaves `.NAME.old-RUNID` with the
    previous complete run, which `recover` (run by the next writer) renames back. On blob
    stores a "rename" is a copy: `FsspecStore.rename` copies the marker last and deletes the
    source's marker first, so a half-copied folder never looks finished.
    """
    exchange = getattr(store, "exchange", None)
    if exchange is not None and store.exists(output) and exchange(staging, output):
        store.delete(staging)  # now the previous output
        return
    parent, name = split_parent(output)
    old = join(parent, f".{name}.old-{run_id}")
    if store.exists(output):
        store.rename(output, old)
    store.rename(staging, output)
    store.delete(old)


def recover(store: Store, output: str, runs: set[str] | None = None) -> str | None:
    """Undo what a killed run left, under the output's lease (no other run writes here).

    Only folders named exactly as `staging_uri` and `publish` name them are touched
    (`leftover_run`). `runs` limits that further to the runs known dead: the one whose stale
    lease was taken over (None: every run, for a lease found free, which no live run holds).
    If the output has no marker but such an old folder from an interrupted publish has one, the
    previous complete output is put back; the other leftovers are removed. Returns the restored
    folder, if any.
    """
    parent, name = split_parent(output)
    leftovers: list[tuple[str, str]] = []
    for e in store.list(parent):
        entry = e.rstrip("/")
        found = leftover_run(name, entry.rpartition("/")[2])
        if found is not None and (runs is None or found[1] in runs):
            leftovers.append((found[0], entry))
    restored = None
    if not store.exists(join(output, MARKER)):
        for kind, entry in leftovers:
            if kind == "old" and store.exists(join(entry, MARKER)):
                if store.exists(output):
                    store.delete(output)  # a half-copied output without its marker
                store.rename(entry, output)
                restored = entry
                log.warning("restored the previous complete output from %s", entry)
                break
    for _, entry in leftovers:
        if entry != restored:
            log.info("removing leftover %s of a killed run", entry)
            store.delete(entry)
    return restored


def quietly(fn: Any) -> None:
    """Clean-up that must not hide the error being raised: failures are logged at debug."""
    try:
        fn()
    except Exception:
        log.debug("clean-up failed", exc_info=True)
