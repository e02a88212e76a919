"""Azure (or any fsspec) paths when Spark itself cannot write them, e.g. a laptop without the
hadoop-azure connector: which fsspec file system opens a URI (`locate`), the fsspec `Store` and
output. Reading such inputs is `fruits.sources.fsspec`.

Output: the run is written to a local temporary folder as usual and uploaded at publish time,
into a staging prefix that is then renamed into place, with `_SUCCESS.json` uploaded last.

`plan.plan_storage` picks Hadoop or fsspec per location (`--storage auto|hadoop|fsspec`); the
pipeline only calls the plan's methods. A `FsSpec`'s `repr` is redacted: it travels to the
executors inside the reading UDF's closure, never through Spark conf.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pyspark.sql import SparkSession

from fruits import azure
from fruits.cache import LruCache
from fruits.common import InputError
from fruits.storage.base import MARKER, publish, quietly, split_parent, staging_uri

log = logging.getLogger(__name__)

_FILESYSTEMS: LruCache[Any] = LruCache(8)  # per Python worker: one client per account


# --- which file system opens a location -------------------------------------------------------


@dataclass(frozen=True, repr=False)
class FsSpec:
    """A picklable recipe for an fsspec file system: Azure credentials, or a protocol."""

    credentials: azure.Credentials | None = None
    protocol: str = "file"

    def __repr__(self) -> str:
        return f"FsSpec({self.credentials!r}, protocol={self.protocol!r})"

    def open(self) -> Any:
        """The file system, built once per process (executors reuse it across tasks)."""

        def build() -> Any:
            if self.credentials is not None:
                return self.credentials.filesystem()
            import fsspec

            return fsspec.filesystem(self.protocol)

        return _FILESYSTEMS.get_or_create(self, build)[0]


@dataclass(frozen=True)
class Location:
    """A user-facing URI, the file system that serves it, and its path on that file system."""

    uri: str
    spec: FsSpec
    root: str  # path for fsspec calls

    def fs(self) -> Any:
        return self.spec.open()

    def to_fs(self, uri: str) -> str:
        """Map a URI below this location (user form) to its fsspec path."""
        base = self.uri.rstrip("/")
        if uri.rstrip("/") == base:
            return self.root
        if not uri.startswith(base + "/"):
            raise ValueError(f"{azure.redact(uri)} is not below {azure.redact(self.uri)}")
        return self.root.rstrip("/") + "/" + uri[len(base) + 1 :]

    def to_uri(self, fs_path: str) -> str:
        root = self.root.rstrip("/")
        rel = fs_path[len(root) :].lstrip("/") if fs_path.startswith(root) else fs_path
        return self.uri.rstrip("/") + ("/" + rel if rel else "")


def locate(uri: str, env: Any = None) -> Location:
    """Azure URIs get credentials from the environment; other URIs use fsspec's own protocols."""
    if azure.is_azure_uri(uri):
        loc = azure.parse_uri(uri)
        creds = azure.resolve_credentials(loc, env)
        return Location(uri, FsSpec(credentials=creds), loc.blob_prefix)
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return Location(uri, FsSpec(protocol=protocol), path)


# --- Store ----------------------------------------------------------------------------------------


class FsspecStore:
    """The `storage.Store` operations on fsspec, for URIs below one root location.

    Blob storage has no real folders: a "folder" exists while a blob exists below it, and a
    rename is a server-side copy then a delete (atomic per blob, not per folder, so readers
    rely on `_SUCCESS.json` as everywhere else).
    """

    def __init__(self, root: Location) -> None:
        self.root = root

    def _loc(self, uri: str) -> tuple[Any, str]:
        return self.root.fs(), self.root.to_fs(uri)

    def exists(self, uri: str) -> bool:
        fs, p = self._loc(uri)
        fs.invalidate_cache()
        return bool(fs.exists(p))

    def delete(self, uri: str) -> None:
        fs, p = self._loc(uri)
        fs.invalidate_cache()
        if fs.exists(p):
            fs.rm(p, recursive=True)

    def rename(self, src: str, dst: str) -> None:
        fs, s = self._loc(src)
        _, d = self._loc(dst)
        fs.invalidate_cache()
        if self.root.spec.credentials is None:  # local and other real file systems
            fs.makedirs(fs._parent(d), exist_ok=True)
            fs.mv(s, d, recursive=True)
        elif fs.isdir(s):
            # A blob "rename" is copy + delete: the marker is copied strictly last and deleted
            # from the source first, so neither side ever holds a marker beside partial data.
            files = fs.find(s)
            marker = [f for f in files if f.rpartition("/")[2] == MARKER]
            rest = [f for f in files if f not in marker]
            fs.copy(rest, [d + f[len(s) :] for f in rest])  # one batch, concurrent in adlfs
            for f in marker:
                fs.copy(f, d + f[len(s) :])
            for f in marker:
                fs.rm(f)
            fs.rm(s, recursive=True)
        else:
            fs.mv(s, d)
        fs.invalidate_cache()

    def put(self, local: str | Path, uri: str) -> None:
        fs, p = self._loc(uri)
        src = Path(local)
        pairs = (
            [(f, p + "/" + f.relative_to(src).as_posix()) for f in sorted(src.rglob("*"))]
            if src.is_dir()
            else [(src, p)]
        )
        for f, target in pairs:
            if f.is_file():
                if self.root.spec.credentials is None:  # blob stores have no folders to make
                    fs.makedirs(fs._parent(target), exist_ok=True)
                fs.put_file(str(f), target)

    def get(self, uri: str, local: str | Path) -> None:
        fs, p = self._loc(uri)
        dst = Path(local)
        if fs.isdir(p):
            for f in fs.find(p):
                target = dst / f[len(p) :].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f, str(target))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(p, str(dst))

    def list(self, uri: str) -> list[str]:
        fs, p = self._loc(uri)
        fs.invalidate_cache()
        if not fs.exists(p):
            return []
        return [self.root.to_uri(e.rstrip("/")) for e in fs.ls(p, detail=False)]

    def is_file(self, uri: str) -> bool:
        fs, p = self._loc(uri)
        fs.invalidate_cache()
        return bool(fs.isfile(p))

    def read_text(self, uri: str) -> str:
        fs, p = self._loc(uri)
        return bytes(fs.cat_file(p)).decode("utf-8")

    def create_new(self, uri: str, text: str) -> bool:
        """Create `uri` unless it exists (False then): the lease primitive, truly conditional.

        Azure: adlfs uploads with `overwrite=False`, which the SDK sends as `If-None-Match: *`,
        so the service admits one of several simultaneous writers (a check-then-write let both
        of two writers in 20 times out of 20 on Azurite). Local files: `O_EXCL`. Other fsspec
        file systems: check then write, the best they offer.
        """
        fs, p = self._loc(uri)
        fs.invalidate_cache()
        data = text.encode("utf-8")
        if self.root.spec.credentials is not None:
            try:
                fs.pipe_file(p, data, overwrite=False)
            except FileExistsError:
                return False
            finally:
                fs.invalidate_cache()
            return True
        if self.root.spec.protocol in ("file", "local"):
            os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
            try:
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if fs.exists(p):
            return False
        fs.makedirs(fs._parent(p), exist_ok=True)
        fs.pipe_file(p, data)
        return True

    def write_text(self, uri: str, text: str) -> None:
        """Replace `uri` with `text` (the lease's heartbeat)."""
        fs, p = self._loc(uri)
        fs.pipe_file(p, text.encode("utf-8"))
        fs.invalidate_cache()

    def modified(self, uri: str) -> float | None:
        """Seconds since the epoch of the last write, None when `uri` is missing."""
        fs, p = self._loc(uri)
        fs.invalidate_cache()
        try:
            info = fs.info(p)
        except FileNotFoundError:
            return None
        when = _mtime(info)
        return when.timestamp() if when is not None else None


# --- helpers -----------------------------------------------------------------------------------


def _mtime(info: dict[str, Any]) -> datetime | None:
    value = info.get("last_modified") or info.get("mtime") or info.get("LastModified")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC)
    return None


# --- the output the plan holds ---------------------------------------------------------------


@dataclass
class FsspecTarget:
    """An output Spark cannot write: the run is written and published in a local temporary
    folder (`work_output`), then uploaded to `uri` by `finish`."""

    uri: str
    work_output: str
    tmp: str | None = field(default=None, repr=False)
    mode: ClassVar[str] = "fsspec"

    @classmethod
    def create(cls, uri: str, name: str) -> FsspecTarget:
        """Check the output before any work, then make the local folder named `name`."""
        _check_fsspec_output(uri)
        tmp = tempfile.mkdtemp(prefix="fruits-upload-")
        return cls(uri, os.path.join(tmp, name or "output"), tmp)

    def out_store(self, spark: SparkSession) -> FsspecStore:
        return FsspecStore(locate(split_parent(self.uri)[0]))  # the lease sits beside the output

    def finish(self, run_id: str) -> None:
        """Upload the locally published run to `uri`: staging prefix, `_SUCCESS.json` last,
        then the same publish protocol as local runs."""
        store = FsspecStore(locate(split_parent(self.uri)[0]))  # staging is a sibling
        staging = staging_uri(self.uri, run_id)
        if azure.is_azure_uri(self.uri):
            from fruits.transfer import upload

            summary = upload(
                self.work_output,
                staging,
                progress=False,
                last=(MARKER,),
                credentials=store.root.spec.credentials,
            )
            if not summary.ok:
                quietly(lambda: store.delete(staging))
                raise OSError("; ".join(f"{r}: {why}" for r, why in summary.failures[:3]))
        else:
            store.put(self.work_output, staging)
        publish(store, staging, self.uri, run_id)
        log.info("uploaded the run to %s", azure.redact(self.uri))

    def cleanup(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _check_fsspec_output(uri: str) -> None:
    """Before any work: an Azure output's container must exist (`fruits upload
    --create-container` or the portal makes it), so a run never computes for nothing."""
    if not azure.is_azure_uri(uri):
        return
    loc = azure.parse_uri(uri)
    try:
        fs = locate(uri).fs()
        found = fs.exists(loc.container)
    except azure.AzureError as exc:
        raise InputError(f"cannot access output: {exc}") from None
    except Exception as exc:
        raise InputError(f"cannot access output: {azure.explain(exc, loc, None)}") from None
    if not found:
        raise InputError(
            f"output container {loc.container!r} not found ({azure.redact(uri)}): create it"
            f" first (e.g. `az storage container create --name {loc.container}`)"
        )
