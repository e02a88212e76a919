"""Load test of `fruits serve`: N requests from C concurrent clients, latency percentiles.

    .venv/bin/fruits run --output fruits-output          # once: a run to serve
    .venv/bin/python bench/load.py --run fruits-output   # 500 requests, 8 clients, 100x100 banana

Starts its own `fruits serve` on a free loopback port, warms it up, then every client thread
sends `POST /v1/predict` with the same 100x100 JPEG over a keep-alive connection until the total
is reached. Prints p50/p95/p99 latency (client side, full HTTP round trip) and exits 1 if any
request failed. Not a timed test: figures depend on what else shares the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BANANA = ROOT / "src/fruits/sample_data/fruits-360-sample/Test/Banana 1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, port: int, threads: int, max_batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fruits.cli", "serve", "--run", run, "--host", "127.0.0.1",
           "--port", str(port), "--threads", str(threads),
           "--max-batch", str(max_batch)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"fruits serve exited:\n{proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("fruits serve did not answer /health within 120 s")


def _cpu_seconds(proc: subprocess.Popen | None) -> float:
    if proc is None:
        return 0.0
    import psutil

    t = psutil.Process(proc.pid).cpu_times()
    return t.user + t.system


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile, so p95 of 500 samples is an observed latency."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_ms) // 100)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", default="fruits-output", help="output folder of `fruits run`")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--image", type=Path, default=None, help="default: a 100x100 sample banana")
    ap.add_argument("--threads", type=int, default=0, help="server CNN threads (0 = all cores)")
    ap.add_argument("--max-batch", type=int, default=1, help="server micro-batch (1 = off)")
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--url", default=None, help="use a running server instead of starting one")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]  # what else was running: figures are noisy when high

    image = args.image or sorted(SAMPLE_BANANA.glob("*.jpg"))[0]
    data = image.read_bytes()
    if args.url is None and not (Path(args.run) / "models" / "serving.npz").exists():
        raise SystemExit(f"{args.run} is not a served run: run `fruits run --output {args.run}`")

    proc = None
    if args.url is None:
        port = free_port()
        proc = start_server(args.run, port, args.threads, args.max_batch)
        url = f"http://127.0.0.1:{port}"
    else:
        url = args.url.rstrip("/")
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(args.warmup):
                c.post("/v1/predict", files={"image": (image.name, data, "image/jpeg")})

        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        remaining = [args.requests]

        def client() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while True:
                    with lock:
                        if remaining[0] == 0:
                            return
                        remaining[0] -= 1
                    t0 = time.perf_counter()
                    try:
                        r = c.post("/v1/predict", files={"image": (image.name, data, "image/jpeg")})
                        ok = r.status_code == 200 and r.json()["prediction"]["name"]
                        why = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                    except Exception as exc:
                        why = f"{type(exc).__name__}: {exc}"
                    ms = (time.perf_counter() - t0) * 1000
                    with lock:
                        latencies.append(ms)
                        if why:
                            errors.append(why)

        server_cpu = _cpu_seconds(proc)
        started = time.perf_counter()
        workers = [threading.Thread(target=client) for _ in range(args.concurrency)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - started
        server_cpu = _cpu_seconds(proc) - server_cpu
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)

    lat = sorted(latencies)
    result = {
        "requests": len(lat),
        "concurrency": args.concurrency,
        "errors": len(errors),
        "image": f"{image.name} ({len(data)} bytes)",
        "throughput_rps": round(len(lat) / wall, 1),
        "p50_ms": round(percentile(lat, 50), 1),
        "p95_ms": round(percentile(lat, 95), 1),
        "p99_ms": round(percentile(lat, 99), 1),
        "max_ms": round(lat[-1], 1) if lat else None,
        "mean_ms": round(statistics.fmean(lat), 1) if lat else None,
        # CPU the server burnt per request: unlike latency, barely moved by other processes
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(len(lat), 1), 1)
        if proc is not None
        else None,
        "max_batch": args.max_batch,
        "cpu_cores": os.cpu_count(),
        "load_average_1m_before": round(load_before, 1),
    }
    print(f"{result['requests']} requests, {args.concurrency} clients, {result['errors']} errors, "
          f"{result['throughput_rps']} req/s")  # fmt: skip
    print(f"server CPU per request: {result['server_cpu_ms_per_request']} ms")
    print(f"latency ms: p50 {result['p50_ms']}  p95 {result['p95_ms']}  p99 {result['p99_ms']}  "
          f"max {result['max_ms']}")  # fmt: skip
    print(json.dumps(result))
    for e in errors[:5]:
        print("error:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
