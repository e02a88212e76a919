"""AzCopy-like copies between a local folder and Azure Storage: parallel, resumable, idempotent.

A file whose blob already has the same size and MD5 is skipped, so re-running an interrupted
copy finishes it and a second run transfers nothing. Uploads record each file's MD5 in the
blob's Content-MD5 property, which is what the next run compares against. Blobs are committed
atomically (Put Blob / Put Block List) and downloads land in a temporary file renamed into place,
so a killed copy never leaves a half-written file that looks complete.

Failures of single files are collected and listed at the end (non-zero exit in the CLI); a
problem with the whole location (missing container, refused credential, unreachable endpoint)
stops the copy with one secret-free line.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import os
import re
import sys
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fruits.azure import AzureError, AzureLocation, Credentials, explain, parse_uri, redact
from fruits.azure import resolve_credentials as _resolve

log = logging.getLogger(__name__)

CHUNK = 4 << 20
DEFAULT_WORKERS = 8
# Hadoop's local checksum side-files mean nothing in blob storage.
DEFAULT_EXCLUDE: tuple[str, ...] = (".crc",)


@dataclass(frozen=True)
class Item:
    """One file to copy: its path relative to the copied folder, size, and remote MD5 if known."""

    relative: str
    size: int
    remote_size: int | None = None
    remote_md5: bytes | None = None


@dataclass
class TransferSummary:
    """What a copy did; `lines()` is the end-of-run summary the CLI prints."""

    direction: str
    source: str
    destination: str
    dry_run: bool = False
    files: int = 0
    transferred: int = 0
    skipped: int = 0
    bytes_total: int = 0
    bytes_transferred: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # folders not copied, and why

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        verb = "would transfer" if self.dry_run else "transferred"
        rate = self.bytes_transferred / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"{self.direction} {redact(self.source)} -> {redact(self.destination)}",
            f"{self.files} file(s), {_human(self.bytes_total)}: {verb} {self.transferred} "
            f"({_human(self.bytes_transferred)}), skipped {self.skipped} (same size and MD5), "
            f"failed {len(self.failures)}, in {self.seconds:.1f}s ({_human(rate)}/s)",
        ]
        out += [f"FAILED {printable(rel)}: {reason}" for rel, reason in self.failures]
        out += [printable(note) for note in self.notes]
        return out


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def md5_file(path: str | Path) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.digest()


def local_files(
    root: Path,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    notes: list[str] | None = None,
    failed: list[tuple[str, str]] | None = None,
) -> dict[str, int]:
    """Relative posix path -> size, for a file or every file below a folder.

    Folder links are followed once: the real tree first, then each link whose target was not
    copied yet (by `(st_dev, st_ino)`), so a linked folder is neither skipped silently nor
    copied twice, and links between folders cannot loop. A link to a folder already copied is
    one line in `notes`; a folder that cannot be listed is a failure in `failed`."""
    suffixes = tuple(exclude)
    if root.is_file():
        return {root.name: root.stat().st_size}
    notes = [] if notes is None else notes
    failed = [] if failed is None else failed
    out: dict[str, int] = {}
    seen: dict[tuple[int, int], str] = {}
    links: list[Path] = []

    def cannot_list(exc: OSError) -> None:
        failed.append((str(exc.filename), f"folder not copied: cannot list it: {exc.strerror}"))

    def walk(top: Path) -> None:
        for dirpath, dirs, names in os.walk(top, onerror=cannot_list):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                dirs[:] = []
                continue
            seen[(st.st_dev, st.st_ino)] = dirpath
            links.extend(
                Path(dirpath) / d for d in sorted(dirs) if os.path.islink(Path(dirpath) / d)
            )
            for name in names:
                if suffixes and name.endswith(suffixes):
                    continue
                full = Path(dirpath) / name
                try:
                    size = full.stat().st_size
                except OSError:  # e.g. a broken link: listed, then reported as a failed file
                    size = 0
                out[full.relative_to(root).as_posix()] = size

    walk(root)
    while links:
        link = links.pop(0)
        try:
            st = link.stat()
        except OSError as exc:
            notes.append(f"not copied: folder link {link}: {exc.strerror}")
            continue
        first = seen.get((st.st_dev, st.st_ino))
        if first is not None:
            notes.append(f"not copied twice: folder link {link} -> {first}, copied there")
        else:
            walk(link)
    return dict(sorted(out.items()))


def remote_files(container: Any, location: AzureLocation) -> dict[str, tuple[int, bytes | None]]:
    """Relative name -> (size, Content-MD5) of every blob below `location`, in one listing."""
    prefix = location.path + "/" if location.path else ""
    out: dict[str, tuple[int, bytes | None]] = {}
    for blob in container.list_blobs(name_starts_with=prefix or None):
        name = blob.name
        if name.endswith("/") or (blob.metadata or {}).get("hdi_isfolder") == "true":
            continue
        rel = name[len(prefix) :]
        md5 = blob.content_settings.content_md5 if blob.content_settings else None
        out[rel] = (int(blob.size), bytes(md5) if md5 else None)
    if location.path and not out:  # the location may be one blob rather than a folder
        try:
            props = container.get_blob_client(location.path).get_blob_properties()
        except Exception as exc:
            if "BlobNotFound" in str(getattr(exc, "error_code", "")) or _status(exc) == 404:
                return out
            raise
        md5 = props.content_settings.content_md5 if props.content_settings else None
        out[""] = (int(props.size), bytes(md5) if md5 else None)
    return out


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def _container_missing(exc: BaseException) -> bool:
    """By the service's error code, not by our message (which may say "not found" about a
    credential, e.g. "Azure CLI not found on path")."""
    code = str(getattr(exc, "error_code", "") or "")
    return code == "ContainerNotFound" or "ContainerNotFound" in str(exc)


def _open(
    location: AzureLocation,
    credentials: Credentials,
    *,
    create: bool = False,
    dry_run: bool = False,
    upload: bool = True,
) -> tuple[Any, dict[str, tuple[int, bytes | None]]]:
    """The container client and the listing below `location` (see `remote_files`).

    The listing is also the check that the container exists and the credential may use it: a
    container-scoped SAS, the usual way to hand out one container, may list, read and write
    blobs but not call Get Container Properties (account-level), which used to be the check
    and refused such a SAS. A missing container is one line (created with `create`).
    """
    container = credentials.blob_service().get_container_client(location.container)
    try:
        return container, remote_files(container, location)
    except Exception as exc:
        reason = explain(exc, location, credentials.account)
        if not _container_missing(exc):
            raise AzureError(reason) from None
        if not create:
            hint = (
                "create it first, or pass --create-container" if upload else "nothing to download"
            )
            raise AzureError(f"{reason} ({hint})") from None
    if not dry_run:
        try:
            container.create_container()
        except Exception as exc:
            raise AzureError(explain(exc, location, credentials.account)) from None
        log.info("created container %s", location.container)
    return container, {}


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def _run(
    items: list[Item],
    summary: TransferSummary,
    worker: Callable[[Item], bool],
    *,
    workers: int,
    progress: bool,
) -> None:
    """Run `worker` (returns True when it copied, False when it skipped) over `items` in
    parallel, updating the bar with bytes and counts as files finish."""
    bar = _progress(summary.bytes_total, summary.direction, progress)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending: dict[Future[bool], Item] = {}
            queue = iter(items)

            def fill() -> None:
                for item in queue:
                    pending[pool.submit(worker, item)] = item
                    if len(pending) >= workers * 4:
                        return

            fill()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    item = pending.pop(fut)
                    try:
                        copied = fut.result()
                    except Exception as exc:
                        summary.failures.append((item.relative or "(file)", explain(exc)))
                        log.debug("transfer of %s failed", item.relative, exc_info=True)
                    else:
                        if copied:
                            summary.transferred += 1
                            summary.bytes_transferred += item.size
                        else:
                            summary.skipped += 1
                    bar.update(item.size)
                    bar.set_postfix(
                        done=summary.transferred,
                        skipped=summary.skipped,
                        failed=len(summary.failures),
                        refresh=False,
                    )
                fill()
    finally:
        bar.close()


def upload(
    source: str | Path,
    destination: str,
    *,
    workers: int = DEFAULT_WORKERS,
    dry_run: bool = False,
    progress: bool = True,
    create_container: bool = False,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    credentials: Credentials | None = None,
    env: Mapping[str, str] | None = None,
    last: Iterable[str] = (),
) -> TransferSummary:
    """Copy a local folder (or one file) into the folder `destination` (any URI form
    `azure.parse_uri` accepts).

    `last`: relative names uploaded only after everything else succeeded (a completion marker).
    """
    started = time.perf_counter()
    src = Path(source)
    if not src.exists():
        raise AzureError(f"source not found: {src}")
    location = parse_uri(destination)
    creds = credentials or _resolve(location, env)
    log.debug("upload: %s", creds.describe())
    container, remote = _open(location, creds, create=create_container, dry_run=dry_run)
    notes: list[str] = []
    failed: list[tuple[str, str]] = []
    files = local_files(src, exclude, notes, failed)  # a file goes into the destination folder
    remote.pop("", None)
    summary = TransferSummary("upload", str(src), destination, dry_run, len(files))
    summary.notes, summary.failures = notes, failed
    summary.bytes_total = sum(files.values())
    items = [
        Item(rel, size, *(remote.get(rel) or (None, None)))
        for rel, size in files.items()
        if rel not in set(last)
    ]
    final = [
        Item(rel, files[rel], *(remote.get(rel) or (None, None))) for rel in last if rel in files
    ]

    def one(item: Item) -> bool:
        path = src if src.is_file() else src / item.relative
        md5 = md5_file(path)
        if item.remote_size == item.size and item.remote_md5 == md5:
            return False
        if dry_run:
            return True
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(
            content_type=mimetypes.guess_type(item.relative)[0] or "application/octet-stream",
            content_md5=bytearray(md5),
        )
        with open(path, "rb") as f:
            container.get_blob_client(location.blob_name(item.relative)).upload_blob(
                f, length=item.size, overwrite=True, content_settings=settings, max_concurrency=2
            )
        return True

    _run(items, summary, one, workers=workers, progress=progress)
    if final and not summary.failures:
        _run(final, summary, one, workers=1, progress=False)
    elif final:
        summary.failures += [(i.relative, "not uploaded: earlier files failed") for i in final]
    summary.seconds = time.perf_counter() - started
    return summary


# --- blob names that must not become local paths ----------------------------------------------

# Blob names are free text; a local path is not. A name must map to a path below DEST on every
# OS we run on: POSIX separators only, no parent or current-folder segment (also when a tool
# later percent-decodes it), no empty segment (`a//b`, or a leading `/` that makes an absolute
# path), no drive letter (`C:`, which Windows reads as absolute), no control character (which
# could rewrite the terminal that prints the summary).
_DRIVE = re.compile(r"^[A-Za-z]:")
_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


def _bad_char(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" or ord(ch) in _BIDI


def printable(name: str) -> str:
    """`name` with control characters escaped as Python would (`\t`, `\x07`), for messages."""
    return "".join(repr(ch)[1:-1] if _bad_char(ch) or not ch.isprintable() else ch for ch in name)


def _check(name: str) -> str | None:
    bad = next((ch for ch in name if _bad_char(ch)), None)
    if bad is not None:
        return f"control character {repr(bad)[1:-1]}"
    if "\\" in name:
        return "backslash in the name (a separator on Windows)"
    segments = name.split("/")
    for dots in ("..", "."):
        if dots in segments:
            return f"'{dots}' segment"
    if "" in segments:
        return "empty segment ('//', or a leading or trailing '/')"
    drive = next((seg[:2] for seg in segments if _DRIVE.match(seg)), None)
    if drive:
        return f"Windows drive letter {drive!r}"
    return None


def unsafe_name(name: str) -> str | None:
    """Why the blob name `name` (relative to the downloaded folder) may not become a local
    path, or None when it may. Checked as given and percent-decoded (up to three times, for
    names encoded twice), since other tools decode what we write."""
    if not name:
        return "empty name"
    seen = name
    for round_ in range(4):
        reason = _check(seen)
        if reason:
            return reason if round_ == 0 else f"{reason} (percent-encoded)"
        decoded = unquote(seen)
        if decoded == seen:
            return None
        seen = decoded
    return None


def _outside(root: Path, relative: str) -> str | None:
    """A reason when `root / relative` resolves (through links already on disk) outside
    `root`, which must itself be resolved."""
    try:
        real = (root / relative).resolve()
    except (OSError, RuntimeError) as exc:  # a link loop (RuntimeError before Python 3.13)
        return f"cannot be resolved: {exc}"
    if not real.is_relative_to(root):
        return "resolves outside the destination (through a symbolic link)"
    return None


def download(
    source: str,
    destination: str | Path,
    *,
    workers: int = DEFAULT_WORKERS,
    dry_run: bool = False,
    progress: bool = True,
    credentials: Credentials | None = None,
    env: Mapping[str, str] | None = None,
) -> TransferSummary:
    """Copy every blob below `source` into the local folder `destination` (a single blob
    becomes `destination/<its name>`); files already there with the same size and MD5 stay."""
    started = time.perf_counter()
    location = parse_uri(source)
    creds = credentials or _resolve(location, env)
    log.debug("download: %s", creds.describe())
    container, remote = _open(location, creds, upload=False)  # --create-container: upload's
    if not remote:
        raise AzureError(f"nothing to download: no blob under {redact(source)}")
    # Real paths from here on: DEST may itself be a link, and a folder inside it may be one.
    dest = Path(destination).resolve()
    single = "" in remote
    if single:
        remote = {location.path.rpartition("/")[2]: remote[""]}
    summary = TransferSummary("download", source, str(dest), dry_run, len(remote))
    items = []
    for rel, (size, md5) in sorted(remote.items()):
        reason = unsafe_name(rel) or _outside(dest, rel)
        if reason:
            summary.failures.append((rel, f"not downloaded, unsafe name: {reason}"))
        else:
            items.append(Item(rel, size, size, md5))
    summary.bytes_total = sum(item.size for item in items)

    def one(item: Item) -> bool:
        target = dest / item.relative
        if (
            target.is_file()
            and item.remote_md5
            and target.stat().st_size == item.size
            and md5_file(target) == item.remote_md5
        ):
            return False
        if dry_run:
            return True
        name = location.path if single else location.blob_name(item.relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        # again now that the folders exist: a link may have appeared since the listing
        reason = _outside(dest, item.relative)
        if reason:
            raise OSError(f"not downloaded, unsafe name: {reason}")
        tmp = target.with_name(f".{target.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "xb") as f:  # x: never through a link planted at that name
                container.get_blob_client(name).download_blob(max_concurrency=2).readinto(f)
            if item.remote_md5 and md5_file(tmp) != item.remote_md5:
                got = base64.b64encode(md5_file(tmp)).decode()
                raise OSError(f"MD5 mismatch after download (got {got})")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    _run(items, summary, one, workers=workers, progress=progress)
    summary.seconds = time.perf_counter() - started
    return summary
