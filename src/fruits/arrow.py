"""Arrow batches of the featurize stage: the bytes each row carries in, and the output batch
(keys passed through, content version, features as one float32 buffer) out. Spark-free: pyarrow
only, imported where used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

KEY_COLUMNS = ("path", "label", "split", "length", "modification_time")


@dataclass(frozen=True)
class BatchLayout:
    """What the featurizer's Arrow function reads and writes: the bytes column (a local
    walk's `_local` path read where `content` is null), the columns passed through, and the
    names of the content version (None: not written), features and error columns."""

    content: str = "content"
    keep: tuple[str, ...] = KEY_COLUMNS
    hash: str | None = "content_hash"
    features: str = "features"
    error: str = "reason"


STAGE = BatchLayout()  # `fruits run`'s featurize stage


def batch_contents(rows: Any, layout: BatchLayout = STAGE) -> list[bytes | None]:
    """The bytes of each row: the reader's `content`, else the local file `_local` read here
    (null when the read fails: reported as unreadable, like a storage read error)."""
    from fruits.common import read_file

    contents: list[bytes | None] = rows.column(layout.content).to_pylist()
    if "_local" in rows.schema.names:
        for i, name in enumerate(rows.column("_local").to_pylist()):
            if contents[i] is None and name is not None:
                contents[i] = read_file(name)
    return contents


def stage_batch(
    rows: Any,
    contents: list[bytes | None],
    feats: list[Any],
    errs: list[str | None],
    layout: BatchLayout = STAGE,
) -> Any:
    """The output batch: `layout.keep` passed through as Arrow arrays, the content version
    (the listing's, e.g. an ETag, else a SHA-1 of the bytes read, the same text as Spark's
    `sha1`) where `layout.hash` names it, and the features as one float32 buffer with offsets
    (`list_column`)."""
    import hashlib

    import pyarrow as pa

    columns = [rows.column(name) for name in layout.keep]
    fields = [rows.schema.field(name) for name in layout.keep]
    if layout.hash is not None:
        listed = (
            rows.column("content_hash").to_pylist()
            if "content_hash" in rows.schema.names
            else [None] * len(contents)
        )
        hashes = [
            h if h is not None else None if c is None else "sha1:" + hashlib.sha1(c).hexdigest()
            for h, c in zip(listed, contents, strict=True)
        ]
        columns.append(pa.array(hashes, pa.string()))
        fields.append(pa.field(layout.hash, pa.string()))
    present = [f for f in feats if f is not None]
    matrix = np.stack(present) if present else np.zeros((0, 0), np.float32)
    columns += [list_column(matrix, [f is not None for f in feats]), pa.array(errs, pa.string())]
    fields += [
        pa.field(layout.features, pa.list_(pa.float32())),
        pa.field(layout.error, pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))


def feature_matrix(column: Any, dim: int) -> np.ndarray:
    """An Arrow array<float> column's non-null rows as an (n, dim) float32 matrix, straight
    from its flat values buffer (no per-row objects)."""
    if column.null_count:
        column = column.filter(column.is_valid())
    return np.asarray(column.flatten(), dtype=np.float32).reshape(-1, dim)


def list_column(rows: np.ndarray, valid: Any) -> Any:
    """(n, k) float32 rows back into an Arrow array<float> column, null where `valid` is
    false (`rows` holds the valid rows only, in order)."""
    import pyarrow as pa

    mask = ~np.asarray(valid, dtype=bool)
    lengths = np.where(mask, 0, rows.shape[1] if rows.ndim == 2 else 0).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = pa.array(rows.reshape(-1).astype(np.float32, copy=False), pa.float32())
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(mask))
