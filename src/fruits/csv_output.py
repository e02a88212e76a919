"""CSV outputs a person opens in a spreadsheet: one file or a folder of parts, RFC 4180 quoting,
formula-like cells neutralised. Used for `pca.csv` (outputs.py) and `quarantine.csv`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

if TYPE_CHECKING:
    from fruits.storage import Store

log = logging.getLogger(__name__)

CsvForm = Literal["file", "folder"]  # how a CSV output was written: one file or a part folder


def csv_form(rows: int, max_rows: int) -> CsvForm:
    """`file` up to `max_rows` rows (0: no limit), else `folder`: the one rule `write_csv` and
    the report both read, so the report says what was written without listing the output."""
    return "file" if max_rows == 0 or rows <= max_rows else "folder"


def write_csv(store: Store, df: DataFrame, uri: str, *, rows: int, max_rows: int) -> CsvForm:
    """A CSV with a header at `uri`: one plain file while `rows` <= `max_rows` (or `max_rows`
    is 0), which is what a person opens; above it, Spark's CSV folder, one part per partition
    written in parallel, each part with its own header, because one file means `coalesce(1)`:
    one task writing every row (docs/scaling.md). Returns the form written."""
    form = csv_form(rows, max_rows)
    df = neutralise_formulas(df)
    if form == "file":
        single_csv(store, df, uri)
    else:
        csv_writer(df).csv(uri)
    log.info("csv: %s written as a %s (%d rows, limit %d)", uri, form, rows, max_rows)
    return form


# Cells a spreadsheet would run as a formula (OWASP "CSV injection"): `=`, `+`, `-`, `@`, and a
# leading tab or carriage return that some programs strip before looking.
FORMULA_START = "^[=+\\-@\t\r]"


def neutralise_formulas(df: DataFrame) -> DataFrame:
    """Text cells starting like a formula get a leading `'`, so a spreadsheet shows the text
    instead of running it (a folder named `=HYPERLINK(...)` becomes a label). CSV only: the
    Parquet outputs keep the raw values, which is what programs read."""
    cols = []
    for field in df.schema.fields:
        col = F.col(field.name)
        if isinstance(field.dataType, StringType):
            col = F.when(col.rlike(FORMULA_START), F.concat(F.lit("'"), col)).otherwise(col)
        cols.append(col.alias(field.name))
    return df.select(*cols)


def csv_writer(df: DataFrame) -> Any:
    """Spark's CSV writer set for RFC 4180: a header, fields quoted with `"` and a `"` inside
    one doubled (Spark's default escapes it with a backslash, which Python's `csv`, pandas and
    spreadsheets read as two broken fields)."""
    return (
        df.write.option("header", "true")
        .option("quote", '"')
        .option("escape", '"')
        .option("encoding", "UTF-8")
    )


def single_csv(store: Store, df: DataFrame, uri: str) -> None:
    """One plain CSV file with a header (a Spark CSV folder, renamed to a file)."""
    tmp = uri + ".parts"
    csv_writer(df.coalesce(1)).csv(tmp)
    parts = [p for p in store.list(tmp) if p.rstrip("/").rpartition("/")[2].startswith("part-")]
    if len(parts) != 1:
        raise RuntimeError(f"expected one CSV part in {tmp}, found {len(parts)}")
    store.rename(parts[0], uri)
    store.delete(tmp)
