"""Served latency of one 12 MP phone JPEG through the Spark-free `Predictor`, one client.

    .venv/bin/python bench/latency.py --run /tmp/o3

The photo is synthetic (4000 x 3000 gradients + noise, JPEG q90, about 4 MB), so the command
runs anywhere. Prints wall p50/p95 and CPU time per request (CPU time depends far less on what
else the machine runs), the run's number of photo views, the CPU model and the load average.
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
from PIL import Image


def phone_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    img = np.stack([xx * 255 // width, yy * 255 // height, ((xx + yy) // 30) % 256], -1)
    noisy = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, help="output folder of `fruits run`")
    ap.add_argument("--requests", type=int, default=30)
    args = ap.parse_args()
    from fruits.predictor import Predictor

    data = phone_jpeg()
    predictor = Predictor.load(args.run, threads=os.cpu_count() or 1)
    predictor.predict(data)  # warm-up
    walls, cpus = [], []
    for _ in range(args.requests):
        t, c = time.perf_counter(), time.process_time()
        predictor.predict(data)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        "unknown CPU",
    )
    p50, p95 = (np.percentile(walls, q) * 1000 for q in (50, 95))
    print(
        f"{len(data) / 1e6:.1f} MB JPEG 4000x3000, views={predictor.views}: "
        f"wall p50 {p50:.0f} ms, p95 {p95:.0f} ms; "
        f"CPU p50 {np.percentile(cpus, 50) * 1000:.0f} ms; {model}, {os.cpu_count()} cores, "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
