"""Sources: one reader per kind of input, each owning its listing, its content column, how it
re-reads a set of paths, and its drop rule (`Source.may_drop`).

- `local.LocalSource`: a local folder walked on the driver (every file counted, whatever its
  name; bytes read where used);
- `hadoop.HadoopSource`: Spark's binaryFile source (local, `abfss://`, `s3a://`, `dbfs:/`,
  Unity Catalog volumes as `dbfs:/Volumes/...`), listed and read on the executors;
- `fsspec.FsspecSource`: Azure or any fsspec URI Spark cannot open, listed by fsspec on the
  driver and read by a pandas UDF.

`storage.plan.plan_storage` picks one per input (a volume is the local folder it is, or
`dbfs:/Volumes/...` where the JVM reads dbfs); `fruits.ingest` labels what they list. Every
source yields the same columns (`base.listing_rows`) and the same `Ingested`.
"""

from fruits.sources.base import Ingested, Source, listing_rows, split_by_size
from fruits.sources.local import content

__all__ = ["Ingested", "Source", "content", "listing_rows", "split_by_size"]
