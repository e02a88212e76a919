"""The non-CNN stages at growing sizes, on synthetic feature tables (no images, no CNN).

For each size: a Parquet table of `rows` x 1280 float features (ReLU-like, low-rank + noise, like
CNN features) with 100 classes is written once, then each stage of `fruits run` that follows
featurization is timed on it, with the pipeline's own functions:

- reduce: `reduce.fit_reducer` (one pass of moments + eigendecomposition) on the train split;
- project: `Reducer.transform` + `images.parquet` write (what `outputs.write_images` does);
- csv: the single-file `pca.csv` (`csv_output.single_csv`, one task by design);
- classify: `classify.fit_classifier` (Spark's multinomial logistic regression, 100 classes).

One Spark session per size (`local[*]`, 2 GB driver heap, like `fruits run`). Idle machine only:

    .venv/bin/python bench/stages.py --sizes 10000 50000 200000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from featurize import machine  # bench/featurize.py: CPU model, cores, load average

DIM, CLASSES = 1280, 100


def child(rows: int, work: Path) -> dict:
    import numpy as np
    import pandas as pd
    from pyspark.sql import functions as F

    from fruits.classify import fit_classifier
    from fruits.config import ClassifierConfig, PipelineConfig, ReduceConfig
    from fruits.csv_output import single_csv
    from fruits.pipeline import session_for
    from fruits.reduce import fit_reducer
    from fruits.storage import HadoopStore

    spark = session_for(PipelineConfig())
    spark.sparkContext.setLogLevel("ERROR")

    def synth(batches):
        mix = np.random.default_rng(0).normal(size=(64, DIM)).astype(np.float32)
        centres = np.random.default_rng(1).normal(size=(CLASSES, 64)).astype(np.float32)
        for batch in batches:
            ids = batch["id"].to_numpy()
            rng = np.random.default_rng(int(ids[0]) if len(ids) else 0)
            label = ids % CLASSES
            latent = centres[label] + rng.normal(size=(len(ids), 64)).astype(np.float32)
            x = np.maximum(latent @ mix + rng.normal(size=(len(ids), DIM)), 0).astype(np.float32)
            yield pd.DataFrame(
                {
                    "path": [f"file:/synthetic/{i}.jpg" for i in ids],
                    "label": [f"class_{c:03d}" for c in label],
                    "split": np.where(ids % 10 == 0, "test", "train"),
                    "features": list(x),
                }
            )

    table = str(work / "features.parquet")
    schema = "path string, label string, split string, features array<float>"
    spark.range(0, rows, 1, max(2, rows // 5000)).mapInPandas(synth, schema).write.parquet(table)
    feats = spark.read.parquet(table)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    reducer = fit_reducer(feats.where(F.col("split") == "train"), ReduceConfig())
    seconds["reduce"] = time.perf_counter() - t
    t = time.perf_counter()
    images = str(work / "images.parquet")
    reducer.transform(feats).select("path", "label", "split", "pca").write.parquet(images)
    seconds["project"] = time.perf_counter() - t
    projected = spark.read.parquet(images)
    t = time.perf_counter()
    pcs = [F.element_at("pca", i + 1).alias(f"pc_{i + 1}") for i in range(reducer.k)]
    csv = projected.select("path", "label", "split", *pcs)
    single_csv(HadoopStore(spark), csv, "file:" + str(work / "pca.csv"))
    seconds["csv"] = time.perf_counter() - t
    t = time.perf_counter()
    fit_classifier(projected.where(F.col("split") == "train"), ClassifierConfig())
    seconds["classify"] = time.perf_counter() - t
    spark.stop()
    return {"rows": rows, "k": reducer.k, **{k: round(v, 2) for k, v in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000, 200000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.work))))
        return
    print(machine(), flush=True)
    print(f"{'rows':>8} {'k':>4} {'reduce s':>9} {'project s':>10} {'csv s':>7} {'classify s':>11}")
    results = []
    for rows in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="fruits-stages-"))
        cmd = [sys.executable, __file__, "--child", str(rows), "--work", str(work)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{r['rows']:>8} {r['k']:>4} {r['reduce']:>9.1f} {r['project']:>10.1f}"
            f" {r['csv']:>7.1f} {r['classify']:>11.1f}",
            flush=True,
        )
    print(machine())


if __name__ == "__main__":
    main()
