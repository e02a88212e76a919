"""Featurization benchmark: the common approach (A), our featurizer alone (B), `fruits run` (C).

    .venv/bin/python bench/featurize.py                 # full run, about 10-20 min on 2 cores
    .venv/bin/python bench/featurize.py --quick         # 300 / 1,000 images, a few minutes
    .venv/bin/python bench/featurize.py --levers        # micro-benchmarks of each lever

A  baseline: fp32 eager PyTorch, NCHW, EfficientNet-Lite0, model built in each iterator of a plain
   iterator pandas UDF, on a Spark session with default settings (what public solutions do).
B  ceiling: `fruits.engine.Featurizer` in one Python process, no Spark, all cores, decoding
   the next batch while the current one runs through the network.
C  product: `fruits run` end to end (ingest -> features -> PCA -> outputs) through Spark.

Every variant runs in its own subprocess, so peak resident memory is per run; a background thread
samples the process tree (driver JVM, Spark's Python workers, the Python driver) with psutil.
Images come from the dev set, replicated with symlinks (distinct names, same Training/Test/<class>
layout) to each requested volume. Timings are noisy when others share the CPU: compare the ratios,
which are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd  # module level: Spark resolves the baseline UDF's type hints here

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEV = ROOT.parent / "shared" / "datasets" / "fruits-360-dev"
PY = sys.executable
SPLITS = ("Training", "Test")


# ------------------------------------------------------------------ data


def dev_files(dev: Path) -> list[Path]:
    return sorted(p for s in SPLITS for p in (dev / s).glob("*/*") if p.suffix.lower() == ".jpg")


def replicate(files: list[Path], dev: Path, n: int, dest: Path) -> Path:
    """`n` images as symlinks under dest/Training|Test/<class>/, copy number in the name; a fixed
    shuffle, so every volume covers every class and both splits in the dev set's proportions."""
    order = list(files)
    random.Random(7).shuffle(order)
    for i in range(n):
        src = order[i % len(order)]
        rel = src.relative_to(dev)
        link = dest / rel.parent / f"c{i // len(order)}_{rel.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src)
    return dest


def image_paths(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpg"))


# ------------------------------------------------------------------ memory sampling


class TreeSampler:
    """Peak RSS per process of a process tree, by role (driver JVM, Python workers, driver)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._interval = interval
        self.peak: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def role(cmdline: list[str]) -> str:
        text = " ".join(cmdline)
        if cmdline and os.path.basename(cmdline[0]).startswith("java"):
            return "jvm"
        if "pyspark.daemon" in text or "pyspark.worker" in text:
            return "python_worker"
        return "driver_python"

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    role = self.role(p.cmdline())  # again each time: spark-submit execs java
                except psutil.Error:
                    continue
                seen = self.peak.get(p.pid, ("", 0))
                if rss > seen[1] or role != seen[0]:
                    self.peak[p.pid] = (role, max(rss, seen[1]))
            self._stop.wait(self._interval)

    def summary(self) -> dict[str, float]:
        """Largest single process of each role, in MB (sums would double-count forked pages)."""
        out: dict[str, float] = {}
        for role, rss in self.peak.values():
            out[role] = max(out.get(role, 0.0), rss / 1e6)
        out["python_workers"] = sum(1 for r, _ in self.peak.values() if r == "python_worker")
        return {k: round(v, 1) for k, v in out.items()}


def run_sampled(cmd: list[str], *, log: Path, env: dict[str, str] | None = None) -> dict:
    """Run one variant; returns wall seconds, peak memory and the JSON the child printed last."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=fh, text=True, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        with TreeSampler(proc.pid) as sampler:
            out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    fh_text = out.strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}); see {log}")
    result = json.loads(fh_text[-1]) if fh_text and fh_text[-1].startswith("{") else {}
    return {"wall_s": round(wall, 2), "memory_mb": sampler.summary(), **result}


# ------------------------------------------------------------------ A: the common approach


def child_baseline(images: str, out: str, size: int) -> None:
    """Runs in its own process: a default SparkSession and a plain iterator pandas UDF."""
    import io

    import numpy as np
    import torch
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf

    from fruits.engine import normalise
    from fruits.images import decode_image
    from fruits.models import build_torch, get_spec

    os.environ.setdefault("PYSPARK_PYTHON", PY)
    spark = SparkSession.builder.master("local[2]").appName("bench-baseline").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    spec = get_spec("efficientnet_lite0")
    buf = io.BytesIO()
    torch.save(build_torch("efficientnet_lite0").net.state_dict(), buf)
    t0 = time.perf_counter()
    weights = spark.sparkContext.broadcast(buf.getvalue())

    @pandas_udf("array<float>")
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        model = build_torch("efficientnet_lite0", weights.value)  # once per iterator (task)
        for contents in batches:
            pixels = np.stack([decode_image(c, size=size) for c in contents])
            with torch.no_grad():
                out = model(torch.from_numpy(normalise(pixels, spec))).numpy()
            yield pd.Series(list(out))

    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(images)
    df.select("path", featurize("content").alias("features")).write.parquet(out)
    seconds = time.perf_counter() - t0
    n = spark.read.parquet(out).count()
    spark.stop()
    print(json.dumps({"images": n, "seconds": round(seconds, 2), "torch_threads": "default"}))


# ------------------------------------------------------------------ B: the ceiling


def child_ceiling(images: str, size: int, batch: int) -> None:
    """Our featurizer alone: read + decode the next batch in a thread while the network runs."""
    from concurrent.futures import ThreadPoolExecutor

    from fruits.artifact import build_artifact
    from fruits.config import FeaturizerConfig
    from fruits.engine import Featurizer
    from fruits.images import decode_many

    cfg = FeaturizerConfig(image_size=size, batch_size=batch)
    artifact = build_artifact(cfg)
    paths = image_paths(Path(images))
    threads = os.cpu_count() or 1
    t0 = time.perf_counter()
    fz = Featurizer(artifact, threads=threads, precision=cfg.precision,
                    channels_last=cfg.channels_last)  # fmt: skip

    def load(chunk: list[Path]) -> tuple:
        return decode_many([p.read_bytes() for p in chunk], size=size, max_pixels=cfg.max_pixels)

    chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    n = 0
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(load, chunks[0])
        for i in range(len(chunks)):
            pixels, errs = nxt.result()
            if i + 1 < len(chunks):
                nxt = pool.submit(load, chunks[i + 1])
            ok = [j for j, e in enumerate(errs) if e is None]
            n += len(fz(pixels[ok]))
    seconds = time.perf_counter() - t0
    print(json.dumps({"images": n, "seconds": round(seconds, 2), "engine": fz.engine,
                      "threads": threads}))  # fmt: skip


# ------------------------------------------------------------------ C: the product


def product_cmd(images: Path, out: Path, size: int, classify: bool, extra: list[str]) -> list[str]:
    cmd = [str(Path(PY).parent / "fruits"), "run", "--input", str(images), "--output", str(out),
           "--master", "local[2]", "--image-size", str(size),
           "--classify" if classify else "--no-classify"]  # fmt: skip
    for item in extra:
        cmd += ["--conf", item]
    return cmd


def product_result(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    n = report["images_total"]
    stages = report["stage_seconds"]
    return {
        "images": n,
        "seconds": report["total_seconds"],
        "featurize_seconds": stages["featurize"],
        "stage_seconds": stages,
        "pca_k": report["pca_k"],
        "accuracy": report.get("accuracy"),
        "featurizer": report.get("featurizer"),
        "output_files": {
            "images.parquet": len(list((out / "images.parquet").glob("part-*"))),
        },
    }


# ------------------------------------------------------------------ fidelity


def fidelity(a_dir: Path, c_dir: Path) -> dict:
    """Cosine similarity of C's features against A's fp32 features, row by row on the same paths."""
    import numpy as np
    import pyarrow.parquet as pq

    a = pq.read_table(a_dir, columns=["path", "features"]).to_pydict()
    c = pq.read_table(c_dir / "images.parquet", columns=["path", "features"]).to_pydict()
    index = dict(zip(c["path"], c["features"], strict=True))
    pairs = [(fa, index[p]) for p, fa in zip(a["path"], a["features"], strict=True) if p in index]
    x = np.asarray([p[0] for p in pairs], dtype=np.float64)
    y = np.asarray([p[1] for p in pairs], dtype=np.float64)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return {"pairs": len(pairs), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


# ------------------------------------------------------------------ the run


def rate(r: dict, key: str = "seconds") -> float:
    return r["images"] / r[key]


def machine() -> str:
    """CPU model, cores and load average: every table says what it ran on and beside what."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, load average {load}"


def main_bench(args: argparse.Namespace) -> dict:
    dev = Path(args.dev)
    if not (dev / "Training").is_dir():
        print(f"skipped: dev set not found at {dev} (pass --dev)")
        return {}
    files = dev_files(dev)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fruits-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {"FRUITS_CACHE": os.environ.get("FRUITS_CACHE", "")} if os.environ.get("FRUITS_CACHE") \
        else {}  # fmt: skip
    sizes = sorted(set(args.sizes))
    base_n = args.baseline_size if args.baseline_size in sizes else sizes[0]
    print(f"dev set: {len(files)} images; volumes {sizes}; baseline on {base_n}; work dir {work}")
    print(f"machine: {machine()}", flush=True)
    res: dict = {"sizes": sizes, "image_size": args.image_size, "runs": {}, "cpu_count":
                 os.cpu_count()}  # fmt: skip
    try:
        data = {n: replicate(files, dev, n, work / f"images-{n}") for n in sizes}
        # Warm the ONNX export cache and the page cache, so no variant pays for them.
        subprocess.run([PY, __file__, "--child", "ceiling", str(data[sizes[0]]), "--size",
                        str(args.image_size), "--limit", "64"], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL, env={**os.environ, **env})  # fmt: skip
        for n in sizes:
            for p in image_paths(data[n]):
                p.read_bytes()

        def record(name: str, r: dict) -> None:
            r = {**r, "machine_after": machine()}
            res["runs"][name] = r
            extra = f", featurize stage {rate(r, 'featurize_seconds'):.1f}" if (
                "featurize_seconds" in r) else ""  # fmt: skip
            print(
                f"  {name:<14} {r['images']:>6} images in {r['seconds']:>7.1f} s = "
                f"{rate(r):6.1f} images/s{extra}; peak RSS MB {r['memory_mb']}"
                f"; wall incl. Spark start {r.get('wall_seconds', r.get('wall_s', 0)):.1f} s"
                f"; stages {r.get('stage_seconds', '')}; after: {r['machine_after']}",
                flush=True,
            )

        if not args.skip_baseline:
            out = work / "A-features.parquet"
            record(f"A@{base_n}", run_sampled(
                [PY, __file__, "--child", "baseline", str(data[base_n]), str(out),
                 "--size", str(args.image_size)], log=work / "A.log", env=env))  # fmt: skip
        for n in sizes:
            record(f"B@{n}", run_sampled(
                [PY, __file__, "--child", "ceiling", str(data[n]), "--size", str(args.image_size)],
                log=work / f"B-{n}.log", env=env))  # fmt: skip
        for n in sizes:
            out = work / f"C-{n}"
            r = run_sampled(product_cmd(data[n], out, args.image_size, args.classify, args.conf),
                            log=work / f"C-{n}.log", env=env)  # fmt: skip
            record(f"C@{n}", {**r, **product_result(out), "wall_seconds": r["wall_s"]})
            if n == base_n and not args.skip_baseline:
                res["fidelity"] = fidelity(work / "A-features.parquet", out)
            if n != base_n:
                shutil.rmtree(out, ignore_errors=True)
        if args.product_size and args.product_size != args.image_size:
            n = sizes[-1]
            ceiling = [PY, __file__, "--child", "ceiling", str(data[n]), "--size",
                       str(args.product_size)]  # fmt: skip
            record(
                f"B@{n}/{args.product_size}px", run_sampled(ceiling, log=work / "B-px.log", env=env)
            )
            out = work / f"C-{n}-px{args.product_size}"
            cmd = product_cmd(data[n], out, args.product_size, args.classify, args.conf)
            r = run_sampled(cmd, log=work / f"C-{n}-px.log", env=env)
            record(
                f"C@{n}/{args.product_size}px",
                {**r, **product_result(out), "wall_seconds": r["wall_s"]},
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summarise(res, base_n, sizes)
    return res


def summarise(res: dict, base_n: int, sizes: list[int]) -> None:
    runs = res["runs"]
    lo, hi = sizes[0], sizes[-1]
    c_lo, c_hi = runs[f"C@{lo}"], runs[f"C@{hi}"]
    b_lo, b_hi = runs[f"B@{lo}"], runs[f"B@{hi}"]
    checks: dict = {}
    if f"A@{base_n}" in runs:
        a = rate(runs[f"A@{base_n}"])
        checks["C/A same images"] = rate(runs[f"C@{base_n}"]) / a
        checks["C/A largest volume"] = rate(c_hi) / a
    checks["C/B end to end"] = rate(c_hi) / rate(b_hi)
    checks["C/B featurize stage"] = rate(c_hi, "featurize_seconds") / rate(b_hi)
    if hi != lo:
        checks["linear: C rate hi/lo end to end"] = rate(c_hi) / rate(c_lo)
        checks["linear: C rate hi/lo featurize stage"] = rate(c_hi, "featurize_seconds") / rate(
            c_lo, "featurize_seconds"
        )
        checks["linear: B rate hi/lo"] = rate(b_hi) / rate(b_lo)
        # cost = fixed + n / marginal_rate, from the two volumes
        slope = (c_hi["seconds"] - c_lo["seconds"]) / (hi - lo)
        checks["C fixed cost s"] = c_lo["seconds"] - slope * lo
        checks["C marginal images/s"] = 1 / slope if slope > 0 else float("inf")
        for role in ("jvm", "python_worker", "driver_python"):
            lo_mb = c_lo["memory_mb"].get(role, 0.0)
            hi_mb = c_hi["memory_mb"].get(role, 0.0)
            checks[f"memory {role} MB lo -> hi"] = f"{lo_mb:.0f} -> {hi_mb:.0f}"
    px = [k for k in runs if k.startswith("C@") and k.endswith("px")]
    if px and px[0].replace("C@", "B@") in runs:
        c_px, b_px = runs[px[0]], runs[px[0].replace("C@", "B@")]
        checks[f"C/B featurize stage {px[0][2:]}"] = rate(c_px, "featurize_seconds") / rate(b_px)
        checks[f"C/B end to end {px[0][2:]}"] = rate(c_px) / rate(b_px)
    peak = max(v for r in runs.values() for k, v in r["memory_mb"].items() if k != "python_workers")
    checks["largest process MB"] = peak
    res["checks"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in checks.items()}
    if "fidelity" in res:
        f = res["fidelity"]
        print(f"fidelity C vs A ({f['pairs']} images): mean cosine {f['mean_cosine']:.7f}, "
              f"min {f['min_cosine']:.7f}")  # fmt: skip
    for k, v in res["checks"].items():
        print(f"  {k:<40} {v}")


# ------------------------------------------------------------------ PCA on the driver


def child_pca(rows: int, native: str | None) -> None:
    """StandardScaler + PCA (fruits.reduce) on rows x 1280 features; with `native`, Spark ML's
    BLAS/LAPACK calls go to the OpenBLAS found in that folder instead of the Java fall-back."""
    import numpy as np
    from pyspark.sql import SparkSession

    from fruits.config import ReduceConfig
    from fruits.reduce import fit_reducer

    os.environ.setdefault("PYSPARK_PYTHON", PY)
    builder = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
    builder = builder.config("spark.driver.memory", "2g")
    if native:
        opts = (f"-Ddev.ludovic.netlib.blas.nativeLibPath={native}/libblas.so.3 "
                f"-Ddev.ludovic.netlib.lapack.nativeLibPath={native}/liblapack.so.3")  # fmt: skip
        builder = builder.config("spark.driver.extraJavaOptions", opts)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(rows, 64)) @ rng.normal(size=(64, 1280))
    x = np.maximum(latent + rng.normal(size=(rows, 1280)), 0).astype(np.float32)  # ReLU-like
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    df = spark.createDataFrame(pd.DataFrame({"features": list(x)}), "features array<float>")
    df = df.cache()
    df.count()
    jvm = spark.sparkContext._jvm
    impl = {
        "blas": jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName(),
        "lapack": jvm.dev.ludovic.netlib.lapack.LAPACK.getInstance().getClass().getSimpleName(),
    }
    t0 = time.perf_counter()
    reducer = fit_reducer(df, ReduceConfig())
    seconds = time.perf_counter() - t0
    spark.stop()
    print(json.dumps({"rows": rows, "seconds": round(seconds, 2), "k": reducer.k, **impl}))


def main_pca(args: argparse.Namespace) -> dict:
    """Driver-side PCA cost with the Java BLAS/LAPACK fall-back and, if given, native OpenBLAS."""
    res: dict = {"rows": []}
    variants = [None, args.native_blas] if args.native_blas else [None]
    for rows in args.sizes:
        for native in variants:
            env = {}
            if native:  # libgfortran may sit beside OpenBLAS when unpacked from a .deb
                env["LD_LIBRARY_PATH"] = f"{native}:{Path(native).parent}"
            out = subprocess.run([PY, __file__, "--child", "pca", str(rows)]
                                 + (["--native", native] if native else []),
                                 cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                                 text=True, check=True)  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res["rows"].append(r)
            print(f"  PCA fit on {rows} x 1280: {r['seconds']:7.1f} s (k={r['k']}, "
                  f"BLAS {r['blas']}, LAPACK {r['lapack']})", flush=True)  # fmt: skip
    return res


# ------------------------------------------------------------------ levers


def main_levers(args: argparse.Namespace) -> dict:
    """Each lever alone, in this process (no Spark): images/s of the network on decoded pixels."""
    import numpy as np
    import torch

    from fruits.artifact import build_artifact
    from fruits.config import FeaturizerConfig
    from fruits.engine import Featurizer, _cpu_has_bf16, normalise
    from fruits.images import decode_image
    from fruits.models import build_torch, get_spec

    res: dict = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "native_bf16": _cpu_has_bf16(), "rows": []}  # fmt: skip
    print(f"CPU capability {res['cpu_capability']}, native bf16: {res['native_bf16']}")
    spec = get_spec("efficientnet_lite0")
    rng = np.random.default_rng(0)
    batch = args.batch
    cores = os.cpu_count() or 1

    def bench(name: str, fn, size: int, n_batches: int) -> None:
        px = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        fn(px)  # warm-up
        t0 = time.perf_counter()
        for _ in range(n_batches):
            fn(px)
        ips = n_batches * batch / (time.perf_counter() - t0)
        res["rows"].append({"lever": name, "size": size, "images_per_s": round(ips, 1)})
        print(f"  {name:<44} {size:>3}px {ips:8.1f} images/s", flush=True)

    model = build_torch("efficientnet_lite0")
    torch.set_num_threads(cores)

    def eager(m, *, cl: bool = False, bf16: bool = False):
        def fn(px):
            t = torch.from_numpy(normalise(px, spec))
            if cl:
                t = t.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return m(t).float().numpy()

        return fn

    nb = args.batches
    bench(f"torch eager fp32 NCHW ({cores} threads)", eager(model), 224, nb)
    cl_model = build_torch("efficientnet_lite0").to(memory_format=torch.channels_last)
    bench("torch eager fp32 channels_last", eager(cl_model, cl=True), 224, nb)
    bench("torch eager bf16 autocast + channels_last", eager(cl_model, cl=True, bf16=True), 224,
          max(1, nb // 4))  # fmt: skip
    with torch.inference_mode():
        traced = torch.jit.trace(model, torch.zeros(batch, 3, 224, 224))
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    bench("TorchScript trace + freeze + optimize", eager(frozen), 224, nb)
    if args.compile:
        try:
            compiled = torch.compile(model)
            t0 = time.perf_counter()
            eager(compiled)(np.zeros((batch, 224, 224, 3), np.uint8))
            print(f"  torch.compile: first call {time.perf_counter() - t0:.0f} s")
            bench("torch.compile (inductor)", eager(compiled), 224, nb)
        except Exception as exc:  # missing compiler toolchain etc.
            print(f"  torch.compile failed: {type(exc).__name__}: {str(exc)[:200]}")
    artifact = build_artifact(FeaturizerConfig())
    for threads in (1, cores):
        fz = Featurizer(artifact, threads=threads)
        for size in (224, 160, 100) if threads == cores else (224,):
            bench(f"ONNX Runtime fp32 ({threads} thread{'s' if threads > 1 else ''})", fz, size,
                  nb)  # fmt: skip

    # JPEG decode: a 100x100 Fruits-360 photo vs a 12 MP photo, with and without draft().
    from io import BytesIO

    from PIL import Image

    big = BytesIO()
    Image.fromarray(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)).save(big, "JPEG")
    small = BytesIO()
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(small, "JPEG")

    def decode_nodraft(data: bytes, size: int) -> np.ndarray:
        img = Image.open(BytesIO(data)).convert("RGB")
        return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))

    for label, data, reps in (("100x100 JPEG", small.getvalue(), 500),
                              ("4000x3000 JPEG", big.getvalue(), 5)):  # fmt: skip
        for name, fn in (("decode_image (draft)", decode_image), ("no draft", decode_nodraft)):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(data, size=224)
            ips = reps / (time.perf_counter() - t0)
            res["rows"].append({"lever": f"{label}: {name}", "size": 224,
                                "images_per_s": round(ips, 1)})  # fmt: skip
            print(f"  {label + ': ' + name:<44} 224px {ips:8.1f} images/s (1 core)")
    return res


# ------------------------------------------------------------------ CLI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dev", default=str(DEFAULT_DEV), help="dev set (Training/Test/<class>)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000],
                    help="image volumes for B and C")  # fmt: skip
    ap.add_argument("--baseline-size", type=int, default=2000, help="volume for A (slow)")
    ap.add_argument("--image-size", type=int, default=224, help="model input px for A, B, C")
    ap.add_argument(
        "--product-size",
        type=int,
        default=0,
        help="also run C at this input size (e.g. the default) on the largest volume",
    )
    ap.add_argument("--classify", action="store_true", help="let C also train the classifier")
    ap.add_argument("--conf", action="append", default=[], help="extra Spark conf for C")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--quick", action="store_true", help="300 / 1,000 images")
    ap.add_argument("--workdir", help="keep intermediate files here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--levers", action="store_true", help="micro-benchmarks of each lever")
    ap.add_argument("--compile", action="store_true", help="with --levers: try torch.compile")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4, help="with --levers: timed batches")
    ap.add_argument("--pca", action="store_true", help="PCA fit cost on --sizes x 1280 rows")
    ap.add_argument("--native-blas", help="with --pca: folder holding libblas.so.3/liblapack.so.3")
    ap.add_argument("--native", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "pca":
            child_pca(int(rest[0]), args.native)
        elif kind == "baseline":
            child_baseline(rest[0], rest[1], args.size)
        elif args.limit:  # warm-up: export the ONNX graph once
            from fruits.artifact import build_artifact
            from fruits.config import FeaturizerConfig

            build_artifact(FeaturizerConfig(image_size=args.size))
        else:
            child_ceiling(rest[0], args.size, args.batch)
        return
    if args.quick:
        args.sizes, args.baseline_size = [300, 1000], 300
    if args.pca:
        res = main_pca(args)
    else:
        res = main_levers(args) if args.levers else main_bench(args)
    if args.json and res:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
