"""Contributed photos: the feedback loop from the web page back to the training data.

A user who was answered can say "yes" or "it is a ...", and, only after ticking consent, give
the photo. The API (`POST /v1/contributions`) hands it here:

- the photo is decoded with the pipeline's own bounds (`images.decode_upright`: pixel limit,
  decode budget, EXIF orientation applied, RGB on white), shrunk to at most `STORE_SIDE` and
  re-encoded as a plain JPEG: no EXIF (GPS, camera, dates), no ICC profile, no comments survive;
- it waits in `DIR/pending/<id>.jpg` with a JSON sidecar (`<id>.json`: label, time, SHA-256 of
  the upload, the model's answer, the votes);
- confirmed (by `fruits contributions review`, or automatically once `agree` independent
  clients gave the same photo the same label) it moves to `DIR/confirmed/Training/<label>/`,
  where `fruits run --input DIR/confirmed` reads it as a labelled training photo (the label is
  the parent folder, the split the `Training` ancestor: `ingest.label_col`, `ingest.split_col`;
  the sidecar is not an image extension, so ingest never lists it).

The id is an HMAC of the upload's SHA-256 under a random secret kept in the folder: the same
photo again gets the same id (one copy, one more vote), yet nobody without the photo and the
secret can guess an id to delete someone else's contribution. Ids are 32 lowercase hex digits
and checked before they touch a path, so an id can never walk out of the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

PENDING = "pending"
CONFIRMED = "confirmed"
TRAINING = "Training"  # ingest.SPLIT_NAMES: the nearest `Training` ancestor means split train
SECRET_FILE = ".secret"
LOCK_FILE = ".lock"
ID_PATTERN = re.compile(r"[0-9a-f]{32}")
DEFAULT_AGREE = 3  # independent clients agreeing on a photo's label confirm it
STORE_SIDE = 1024  # longest side kept: training decodes to 224-280 px, a 12 MP original is waste
JPEG_QUALITY = 90
MAX_LABEL_CHARS = 100


class ContributionError(ValueError):
    """A contribution refused for a reason its giver can fix (bad id, unsafe label)."""


def valid_id(value: str) -> bool:
    """True for a well-formed id: checked before any id becomes part of a path."""
    return bool(ID_PATTERN.fullmatch(value))


def safe_label(label: str) -> bool:
    """A label usable as one folder name on every platform: no separators, no `..`, no control
    characters, not empty. The API also requires a class the model knows."""
    return (
        0 < len(label) <= MAX_LABEL_CHARS
        and label == label.strip()
        and label not in (".", "..")
        and not any(c in label for c in '/\\:*?"<>|')
        and all(c.isprintable() for c in label)
    )


def content_hash(data: bytes) -> str:
    """SHA-256 of the upload as sent: the same file sent again is the same contribution."""
    return hashlib.sha256(data).hexdigest()


def reencode(data: bytes, *, max_pixels: int, side: int = STORE_SIDE) -> bytes:
    """The photo as a fresh JPEG, upright, at most `side` pixels a side, with no metadata.

    Decoding goes through the pipeline's own bounded decoder, so a contribution costs no more
    memory than a prediction and an undecodable file fails with the same `ImageError` reason.
    Pillow writes no EXIF, ICC profile or comment unless asked: none is asked for."""
    from PIL import Image

    from fruits.images import DEFAULT_MAX_DECODE_BYTES, decode_upright

    img = decode_upright(data, side, max_pixels, DEFAULT_MAX_DECODE_BYTES)
    if max(img.size) > side:
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
    clean = Image.new("RGB", img.size)
    clean.paste(img)  # a new image: nothing of the original's `info` can travel along
    buf = io.BytesIO()
    clean.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: a reader (or a crash) never
    sees half a photo or half a sidecar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json(path: Path, record: dict[str, Any]) -> None:
    _write_atomic(path, (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode())


@dataclass(frozen=True)
class Added:
    """What `ContributionStore.add` did: `created` False for a photo already held."""

    id: str
    created: bool
    status: str  # "pending" or "confirmed"


class ContributionStore:
    """One contributions folder. Safe for the server's threads and for a `fruits contributions
    review` running beside it (a lock file serialises every change on POSIX)."""

    def __init__(self, root: str | Path, *, agree: int = DEFAULT_AGREE) -> None:
        self.root = Path(root)
        self.agree = max(1, agree)
        (self.root / PENDING).mkdir(parents=True, exist_ok=True)
        (self.root / CONFIRMED / TRAINING).mkdir(parents=True, exist_ok=True)
        self._secret = self._load_secret()
        self._lock = threading.Lock()

    @property
    def confirmed_dir(self) -> Path:
        """The folder to give `fruits run --input`."""
        return self.root / CONFIRMED

    def _load_secret(self) -> bytes:
        path = self.root / SECRET_FILE
        if not path.exists():
            with contextlib.suppress(FileExistsError):  # two processes starting at once
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self.root / LOCK_FILE, "a") as fh:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX)
            except ImportError:  # Windows: one process at a time is the user's job
                pass
            yield

    def id_for(self, digest: str) -> str:
        """The id of the photo whose SHA-256 is `digest` (see the module docstring)."""
        return hmac.new(self._secret, digest.encode(), hashlib.sha256).hexdigest()[:32]

    def client_tag(self, client: str) -> str:
        """A pseudonym for a client address: votes from one client count once, and no address
        is written to disk."""
        return hmac.new(self._secret, b"client:" + client.encode(), hashlib.sha256).hexdigest()[:16]

    def find(self, cid: str) -> tuple[Path, Path] | None:
        """(photo, sidecar) of a contribution, pending or confirmed; None when unknown.
        Raises `ContributionError` for a malformed id."""
        if not valid_id(cid):
            raise ContributionError(f"not a contribution id: {cid[:40]!r}")
        sidecar = self.root / PENDING / f"{cid}.json"
        if sidecar.exists():
            return sidecar.with_suffix(".jpg"), sidecar
        for sidecar in (self.root / CONFIRMED / TRAINING).glob(f"*/{cid}.json"):
            return sidecar.with_suffix(".jpg"), sidecar
        return None

    def add(
        self,
        photo: bytes,
        digest: str,
        label: str,
        *,
        client: str,
        answer: str | None = None,
    ) -> Added:
        """Store a consented photo (already `reencode`d) with its label, or add a vote to the
        same photo given before. Confirms it when `agree` distinct clients name one label."""
        if not safe_label(label):
            raise ContributionError(f"not a usable label: {label[:40]!r}")
        cid = self.id_for(digest)
        vote = {"label": label, "time": _now(), "client": self.client_tag(client)}
        if answer:
            vote["answer"] = answer
        with self._locked():
            found = self.find(cid)
            if found is not None:
                _, sidecar = found
                record = json.loads(sidecar.read_text())
                if record.get("status") == CONFIRMED:
                    return Added(cid, False, CONFIRMED)
                if all(v["client"] != vote["client"] for v in record["votes"]):
                    record["votes"].append(vote)
                    record["label"] = _leading(record["votes"])
                    _write_json(sidecar, record)
                status = self._maybe_agreed(cid, record)
                return Added(cid, False, status)
            record = {
                "id": cid,
                "label": label,
                "time": vote["time"],
                "sha256": digest,
                "answer": answer,
                "status": PENDING,
                "votes": [vote],
            }
            _write_atomic(self.root / PENDING / f"{cid}.jpg", photo)
            _write_json(self.root / PENDING / f"{cid}.json", record)  # last: marks it complete
            return Added(cid, True, self._maybe_agreed(cid, record))

    def _maybe_agreed(self, cid: str, record: dict[str, Any]) -> str:
        label = record["label"]
        agreeing = {v["client"] for v in record["votes"] if v["label"] == label}
        if len(agreeing) >= self.agree:
            self._confirm(cid, record, label, by="agreement")
            return CONFIRMED
        return PENDING

    def _confirm(self, cid: str, record: dict[str, Any], label: str, *, by: str) -> Path:
        """Move a pending photo into `confirmed/Training/<label>/` (caller holds the lock)."""
        if not safe_label(label):
            raise ContributionError(f"not a usable label: {label[:40]!r}")
        folder = self.root / CONFIRMED / TRAINING / label
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{cid}.jpg"
        os.replace(self.root / PENDING / f"{cid}.jpg", target)
        record = {**record, "label": label, "status": CONFIRMED, "confirmed": _now(), "by": by}
        _write_json(folder / f"{cid}.json", record)
        (self.root / PENDING / f"{cid}.json").unlink(missing_ok=True)
        return target

    def delete(self, cid: str) -> bool:
        """Remove a contribution's photo and sidecar, wherever it is (the right to erasure).
        False when the id is unknown; `ContributionError` when it is malformed."""
        with self._locked():
            found = self.find(cid)
            if found is None:
                return False
            for path in found:
                path.unlink(missing_ok=True)
            return True

    def pending(self) -> list[dict[str, Any]]:
        """Sidecars of the contributions awaiting review, oldest first."""
        records = []
        for sidecar in (self.root / PENDING).glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                records.append(json.loads(sidecar.read_text()))
        return sorted(records, key=lambda r: (r.get("time", ""), r.get("id", "")))

    def accept(self, cid: str, label: str | None = None) -> Path:
        """Confirm a pending contribution (as labelled, or as `label`): its photo's new path.
        `ContributionError` when it is not pending."""
        with self._locked():
            record = self._pending_record(cid)
            return self._confirm(cid, record, label or record["label"], by="review")

    def reject(self, cid: str) -> None:
        """Drop a pending contribution: photo and sidecar are deleted, nothing is kept."""
        with self._locked():
            self._pending_record(cid)
            (self.root / PENDING / f"{cid}.jpg").unlink(missing_ok=True)
            (self.root / PENDING / f"{cid}.json").unlink(missing_ok=True)

    def _pending_record(self, cid: str) -> dict[str, Any]:
        if not valid_id(cid):
            raise ContributionError(f"not a contribution id: {cid[:40]!r}")
        sidecar = self.root / PENDING / f"{cid}.json"
        if not sidecar.exists():
            raise ContributionError(f"no pending contribution {cid}")
        return cast(dict[str, Any], json.loads(sidecar.read_text()))  # json.loads: Any


def _leading(votes: list[dict[str, Any]]) -> str:
    """The label most clients gave; on a tie, the one given first."""
    counts: dict[str, int] = {}
    for v in votes:
        counts[v["label"]] = counts.get(v["label"], 0) + 1
    return max(counts, key=lambda label: counts[label])  # dicts keep first-seen order
