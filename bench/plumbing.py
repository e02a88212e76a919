"""The featurize stage's Spark plumbing: pandas UDFs against one mapInArrow, on the same files.

    .venv/bin/python bench/plumbing.py --images 2000 --size 100

`udfs`: the shape the stage had before (`old_udf` below, kept here only as this baseline): a
pandas UDF reads each local file, Spark hashes the bytes, a second (iterator) pandas UDF
featurises them, so the bytes cross the JVM twice and features come back as pandas objects.
`arrow`: the stage now, and `fruits.ml.ImageFeaturizer`'s one path (`ml.featurize_batches` in
`mapInArrow`): a local file is read, hashed and featurised in one Python hop, and features leave
as one flat Arrow buffer. Each also runs with a network that returns zeros (`*-zeros`), which
leaves the plumbing alone. Every variant runs twice in one warm session (the first run of each
also pays the session's first-use costs); the second is the one to compare.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "datasets" / "fruits-360-dev" / "Training"


def old_udf(artifact, artifact_id, cfg, threads):
    """The featurize stage's former pandas UDF: (path, content) -> struct<features, error>."""
    from typing import Tuple  # noqa: UP035 - Spark reads the UDF hints: typing.Tuple

    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    from fruits.engine import featurize_contents, worker_featurizer

    def featurize(batches):
        fz, step = worker_featurizer(artifact, artifact_id, cfg, threads)
        for _, contents in batches:
            feats, errs = featurize_contents(
                fz, list(contents), size=cfg.image_size, max_pixels=cfg.max_pixels,
                batch_size=step, views=cfg.views,
            )  # fmt: skip
            yield pd.DataFrame({"features": feats, "error": errs})

    # Spark reads the hints to pick the UDF kind; with `from __future__ import annotations`
    # they would be strings naming this function's locals, so they are set as objects here.
    featurize.__annotations__ = {
        "batches": Iterator[Tuple[pd.Series, pd.Series]],  # noqa: UP006
        "return": Iterator[pd.DataFrame],
    }
    return pandas_udf("struct<features: array<float>, error: string>")(featurize)


class Zeros:
    """Stands in for the network: what is left is decoding and the plumbing."""

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.zeros((len(pixels), 1280), np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from fruits import arrow, artifact, engine, ml
    from fruits.arrow import STAGE
    from fruits.config import FeaturizerConfig, PipelineConfig
    from fruits.ingest import labelled
    from fruits.pipeline import session_for
    from fruits.sources import content as file_content
    from fruits.sources.local import LocalSource

    if not DEV.is_dir():
        print(f"skipped: dev set not found at {DEV}")
        return
    work = Path(tempfile.mkdtemp(prefix="fruits-plumbing-"))
    files = sorted(DEV.glob("*/*.jpg"))
    for f in files[:: max(1, len(files) // args.images)][: args.images]:
        (work / "in" / "Training" / f.parent.name).mkdir(parents=True, exist_ok=True)
        (work / "in" / "Training" / f.parent.name / f.name).symlink_to(f)
    spark = session_for(PipelineConfig())
    spark.sparkContext.setLogLevel("ERROR")
    cfg = FeaturizerConfig(image_size=args.size)
    art = artifact.build_artifact(cfg)
    shipped = spark.sparkContext.broadcast(art)
    keys = arrow.KEY_COLUMNS

    def udfs(zeros: bool):
        listed = labelled(LocalSource(str(work / "in")).read(spark)).files
        content = file_content(listed)
        sha = F.concat(F.lit("sha1:"), F.sha1(content))
        udf = old_udf(shipped, art.fingerprint + str(zeros), cfg, threads=1)
        return (
            listed.withColumn("content", content)
            .select(*keys, sha.alias("content_hash"), udf("path", "content").alias("r"))
            .select(*keys, "content_hash", "r.features", F.col("r.error").alias("reason"))
        )

    def arrow(zeros: bool):
        listed = labelled(LocalSource(str(work / "in")).read(spark)).files
        fn = ml.featurize_batches(shipped, art.fingerprint + str(zeros), cfg, threads=1)
        frame = listed.select(*keys, "content", "_local")
        return frame.mapInArrow(fn, ml.output_schema(frame.schema, STAGE))

    def zeros_first(batches: Iterator) -> Iterator:
        # the cached featurizer's engine swapped for zeros, in the worker, before the stage runs
        engine._FEATURIZERS.get_or_create(
            (art.fingerprint + "True", cfg.precision, cfg.channels_last, 1, 0),
            lambda: engine.Featurizer(art, threads=1),
        )[0]._run = Zeros()
        yield from batches

    print(f"{args.images} images at {args.size} px, local[2]")
    for rep in (1, 2):
        for name, build, zeros in (
            ("udfs", udfs, False),
            ("arrow", arrow, False),
            ("udfs-zeros", udfs, True),
            ("arrow-zeros", arrow, True),
        ):
            if zeros:  # every worker swaps in the zero network for this cache key
                spark.range(0, 64, 1, 64).mapInArrow(zeros_first, "id long").collect()
            out = work / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            build(zeros).write.parquet(str(out))
            took = time.perf_counter() - start
            print(f"  run {rep} {name:12s} {took:6.2f} s  {args.images / took:7.1f} images/s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
