"""`csv_output.write_csv`: one plain file up to `single_csv_max_rows`, a folder of CSV parts written
in parallel above it (a real local SparkSession and the HadoopStore local runs use)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fruits.csv_output import write_csv
from fruits.storage import HadoopStore

HEADER = "path,label,value"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"/images/{i:03d}.jpg" for i in range(n)],
            "label": [f"class {i % 4}" for i in range(n)],
            "value": [i * 0.5 for i in range(n)],
        }
    )


def sorted_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("path").reset_index(drop=True)


@pytest.mark.parametrize(("n", "max_rows"), [(7, 10), (10, 10)])
def test_at_or_below_the_threshold_one_file_with_every_row(spark, tmp_path: Path, n, max_rows):
    expected = frame(n)
    out = tmp_path / "pca.csv"
    form = write_csv(
        HadoopStore(spark),
        spark.createDataFrame(expected).repartition(3),
        f"file:{out}",
        rows=n,
        max_rows=max_rows,
    )
    assert form == "file"
    assert out.is_file()
    assert out.read_text().splitlines()[0] == HEADER
    pd.testing.assert_frame_equal(sorted_rows(pd.read_csv(out)), expected)
    assert not (tmp_path / "pca.csv.parts").exists()  # the temporary folder is gone


def test_above_the_threshold_a_folder_of_parts_each_with_a_header(spark, tmp_path: Path):
    expected = frame(50)
    out = tmp_path / "pca.csv"
    form = write_csv(
        HadoopStore(spark),
        spark.createDataFrame(expected).repartition(3),
        f"file:{out}",
        rows=50,
        max_rows=10,
    )
    assert form == "folder"
    assert out.is_dir()
    parts = sorted(out.glob("part-*.csv"))
    assert len(parts) == 3  # one part per partition: no coalesce(1)
    for part in parts:
        assert part.read_text().splitlines()[0] == HEADER
    together = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)
    assert len(together) == 50  # each header read as a header, never as a data row
    pd.testing.assert_frame_equal(sorted_rows(together), expected)


def test_zero_means_always_one_file(spark, tmp_path: Path):
    expected = frame(50)
    out = tmp_path / "quarantine.csv"
    form = write_csv(
        HadoopStore(spark),
        spark.createDataFrame(expected).repartition(3),
        f"file:{out}",
        rows=50,
        max_rows=0,
    )
    assert form == "file"
    assert out.is_file()
    lines = out.read_text().splitlines()
    assert lines[0] == HEADER
    assert len(lines) == 51
    pd.testing.assert_frame_equal(sorted_rows(pd.read_csv(out)), expected)


NASTY = [
    'say "cheese"',
    "comma, inside",
    "two\nlines",
    'all of "it", at\nonce',
    '=HYPERLINK("http://x","click")',
    "+1+2",
    "-3",
    "@SUM(A1)",
    "plain",
    "back\\slash",
]


def reference_cell(value: str) -> str:
    """Written by hand: what a spreadsheet-safe CSV must show for a text cell."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


@pytest.mark.parametrize("max_rows", [0, 3])  # one file; a folder of parts
def test_csv_is_rfc4180_and_reads_back_like_the_parquet(spark, tmp_path: Path, max_rows):
    """Quotes, commas and newlines in names read back with Python's csv module and pandas as
    the Parquet output holds them; formula-like text is prefixed with `'` in the CSV only."""
    import csv

    rows = [(f"file:/in/{v}/{i}.jpg", v, float(i) - 0.5) for i, v in enumerate(NASTY)]
    df = spark.createDataFrame(rows, "path string, label string, value double").repartition(3)
    df.write.parquet(str(tmp_path / "images.parquet"))
    parquet = pd.read_parquet(tmp_path / "images.parquet").sort_values("value")
    out = tmp_path / "pca.csv"
    write_csv(HadoopStore(spark), df, f"file:{out}", rows=len(rows), max_rows=max_rows)
    files = [out] if out.is_file() else sorted(out.glob("part-*.csv"))
    assert files and (max_rows == 0) == out.is_file()

    read: list[dict[str, str]] = []
    for f in files:
        with open(f, newline="", encoding="utf-8") as fh:
            read += list(csv.DictReader(fh))
    read.sort(key=lambda r: float(r["value"]))
    assert [r["label"] for r in read] == [reference_cell(v) for v in parquet["label"]]
    assert [r["path"] for r in read] == list(parquet["path"])  # `file:` paths untouched
    assert [float(r["value"]) for r in read] == list(parquet["value"])  # -0.5 stays a number
    assert list(parquet["label"]) == NASTY  # Parquet keeps the raw values

    frame = pd.concat([pd.read_csv(f, keep_default_na=False) for f in files]).sort_values("value")
    assert list(frame["label"]) == [reference_cell(v) for v in NASTY]
    assert list(frame["value"]) == list(parquet["value"])
