"""Load test of `fruits serve`: N requests from C concurrent clients, latency percentiles.

    .venv/bin/fruits run --output fruits-output          # once: a run to serve
    .venv/bin/python bench/load.py --run fruits-output   # 500 requests, 8 clients, 100x100 banana

    # abuse at the same time: 50 clients that announce a 5 MB body and stall, 6 uploads of a
    # 6300x6300 16-bit PNG (77 KB on the wire, 76 MB decoded); server peak RSS reported
    .venv/bin/python bench/load.py --run fruits-output --concurrency 16 --duration 20 \\
        --stalled 50 --heavy 6

    # issue 18's mix: 16 normal clients beside 50 stalled uploads, 130 slow-header clients (a
    # header byte every 2 s) and 6 clients looping the 16-bit PNG; p50/p95 of the normal clients
    .venv/bin/python bench/load.py --run fruits-output --mix

    # the HTTP plumbing alone: a stub run whose "CNN" is the mean colour (no `fruits run` needed)
    .venv/bin/python bench/load.py --stub --concurrency 16 --duration 20 --stalled 50 --heavy 6

    # no server: decode time and memory of a 12 MP phone JPEG (with/without draft), 16-bit PNG
    .venv/bin/python bench/load.py --decode

Starts its own `fruits serve` on a free loopback port, warms it up, then every client thread
sends `POST /v1/predict` with the same 100x100 JPEG over a keep-alive connection until the total
(or `--duration`) is reached. Prints p50/p95/p99 latency (client side, full HTTP round trip), the
status codes, what happened to the stalled and heavy clients, and the server's peak RSS, then
exits 1 if any normal request failed. Not a timed test: figures depend on what else shares the
CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BANANA = ROOT / "src/fruits/sample_data/fruits-360-sample/Test/Banana 1"
STUB_CLASSES = ("Apple Red 1", "Banana 1", "Lemon 1", "Tomato 1")
STALLED_DECLARED_BYTES = 5 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_stub_run(folder: str | Path) -> Path:
    """A servable run folder without training: the "CNN" is an ONNX graph that averages each
    colour channel (3 features), the classifier a fixed linear map over STUB_CLASSES. It goes
    through the real `Predictor.load`, ONNX Runtime and image code, so it measures the serving
    plumbing at a fraction of the CNN's cost. Needs the `onnx` package (the `export` extra)."""
    import numpy as np

    try:
        from onnx import TensorProto, helper
    except ImportError:
        raise SystemExit("--stub builds an ONNX graph: pip install 'fruits[export]'") from None

    root = Path(folder)
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        ],
        "mean_colour",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime the project allows
    (models / "backbone.onnx").write_bytes(model.SerializeToString())
    spec = {
        "name": "stub_mean_colour",
        "feature_dim": 3,
        "mean": [0.0, 0.0, 0.0],
        "std": [255.0, 255.0, 255.0],
        "default_size": 100,
        "needs_weights": False,
    }
    (models / "backbone.json").write_text(
        json.dumps({"backbone": spec, "engine": "onnx", "id": "stub"})
    )
    # rows: red, yellow, yellow-ish, red-ish, and the indexer's "unknown" slot
    coef = np.array([[8, -4, -4], [4, 4, -8], [2, 4, -6], [6, -2, -4], [-9, -9, -9]], float)
    np.savez(
        models / "serving.npz",
        mean=np.zeros(3),
        scale=np.ones(3),
        pc=np.eye(3),
        coef=coef,
        intercept=np.zeros(5),
    )
    meta = {
        "format": 1,
        "run_id": "stub",
        "classes": list(STUB_CLASSES),
        "image_size": 100,
        "max_pixels": 40_000_000,
        "feature_dim": 3,
        "pca_k": 3,
    }
    (models / "serving.json").write_text(json.dumps(meta))
    (root / "_SUCCESS.json").write_text(json.dumps({"run_id": "stub"}))  # a finished run
    return root


def start_server(
    run: str,
    port: int,
    threads: int,
    max_batch: int,
    *,
    settings: dict[str, Any] | None = None,
    stderr: Any = subprocess.PIPE,
) -> subprocess.Popen:
    """`fruits serve` in a subprocess; with `settings`, `serve(ServeSettings(**settings))`
    instead, for options the CLI does not have."""
    if settings is None:
        cmd = [
            sys.executable,
            "-m",
            "fruits.cli",
            "serve",
            "--run",
            run,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--max-batch",
            str(max_batch),
        ]
    else:
        code = (
            "import json, sys; from fruits.api import ServeSettings, serve; "
            "serve(ServeSettings(**json.loads(sys.argv[1])), port=int(sys.argv[2]))"
        )
        full = {"run": run, "threads": threads, "max_batch": max_batch, **settings}
        cmd = [sys.executable, "-c", code, json.dumps(full), str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise SystemExit(f"fruits serve exited:\n{err}")
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


class PeakRss:
    """Samples a process's RSS (psutil) every 20 ms; on Linux also reads the kernel's own
    high-water mark (VmHWM), which sees peaks between samples."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.pid = pid
        self._proc = psutil.Process(pid)
        self.sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.sampled = max(self.sampled, self._proc.memory_info().rss)
            except Exception:
                return

    def high_water(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> int:
        """Peak RSS in bytes; call before the process exits."""
        peak = max(self.sampled, self.high_water())
        self._stop.set()
        self._thread.join()
        return peak


def heavy_png() -> bytes:
    """The issue's upload: 6300x6300 16-bit grayscale PNG, under the 40 MP limit, 77 KB."""
    import numpy as np
    from PIL import Image

    arr = np.zeros((6300, 6300), np.uint16)
    arr[::64, :] = 65535  # a few lines, so it is not one flat colour
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def stalled_client(port: int, hold_s: float, out: list[dict[str, Any]]) -> None:
    """Announce a 5 MB multipart body, send its first KB, then send nothing more: record the
    status the server answered (if any), whether it closed the connection, and when."""
    head = (
        b'--stall\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff\xe0" + b"\0" * 900
    )
    request = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=stall\r\n"
        f"Content-Length: {STALLED_DECLARED_BYTES}\r\n\r\n"
    ).encode() + head
    result: dict[str, Any] = {"status": None, "closed": False, "after_s": None}
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=hold_s) as s:
            s.sendall(request)
            reply = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    result["closed"] = True
                    break
                reply += chunk
            if reply.startswith(b"HTTP/1.1 "):
                result["status"] = int(reply[9:12])
    except TimeoutError:  # still open after hold_s: the server never dropped it
        pass
    except OSError as exc:  # reset by the server counts as dropped
        result["closed"] = True
        result["error"] = type(exc).__name__
    result["after_s"] = round(time.monotonic() - started, 2)
    out.append(result)


def slow_header_client(
    port: int, hold_s: float, out: list[dict[str, Any]], *, every_s: float = 2.0
) -> None:
    """Slow-loris: open a connection, start a request head and send one more header byte every
    `every_s` seconds, never finishing it; record the status the server answered (408 from
    `fruits serve`'s head deadline), whether and when it closed the connection."""
    result: dict[str, Any] = {"status": None, "closed": False, "after_s": None}
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=every_s) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            while time.monotonic() - started < hold_s:
                try:
                    reply = s.recv(65536)
                except TimeoutError:  # nothing from the server in `every_s`: one more byte
                    s.sendall(b"x")
                    continue
                result["closed"] = True
                if reply.startswith(b"HTTP/1.1 "):
                    result["status"] = int(reply[9:12])
                break
    except OSError as exc:  # reset by the server counts as closed
        result["closed"] = True
        result["error"] = type(exc).__name__
    result["after_s"] = round(time.monotonic() - started, 2)
    out.append(result)


def heavy_client(
    url: str, data: bytes, out: list[dict[str, Any]], stop: threading.Event | None = None
) -> None:
    """Upload the heavy PNG once, or (with `stop`) again and again until it is set, waiting
    `Retry-After` seconds after a 503 as a polite client would."""
    with httpx.Client(base_url=url, timeout=120) as c:
        while True:
            started = time.monotonic()
            retry = 0.0
            try:
                r = c.post("/v1/predict", files={"image": ("heavy.png", data, "image/png")})
                status: int | str = r.status_code
                if r.status_code == 503:
                    retry = float(r.headers.get("retry-after", "1"))
            except Exception as exc:
                status = type(exc).__name__
                retry = 1.0
            out.append({"status": status, "after_s": round(time.monotonic() - started, 2)})
            if stop is None or stop.wait(retry):
                return


def phone_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    """A 12 MP JPEG with photo-like content (smooth gradients and mild noise, quality 90):
    random noise would make libjpeg's entropy decoding, not the IDCT, dominate."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    base = np.stack(
        [
            128 + 100 * np.sin(x / 300),
            128 + 100 * np.cos(y / 200),
            128 + 60 * np.sin((x + y) / 500),
        ],
        axis=-1,
    )
    noisy = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _status_kb(key: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM) in KB; 0 where there is none."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def decode_figures(reps: int = 5) -> dict[str, Any]:
    """`images.decode_image` on a 12 MP phone JPEG, with the draft it does and without (plain
    Pillow: full decode, convert, resize), and on the 16-bit PNG of `heavy_png`: median ms over
    `reps` and the peak memory one decode adds (Linux VmHWM, reset before each case)."""
    from PIL import Image

    from fruits.images import decode_image

    def no_draft(data: bytes, size: int) -> Any:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        return img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)

    jpeg, png = phone_jpeg(), heavy_png()
    cases = [
        ("4000x3000 JPEG, decode_image (draft)", decode_image, jpeg),
        ("4000x3000 JPEG, no draft", no_draft, jpeg),
        ("6300x6300 16-bit PNG, decode_image", decode_image, png),
    ]
    out: dict[str, Any] = {"jpeg_bytes": len(jpeg), "png_bytes": len(png), "rows": []}
    clear_refs = Path("/proc/self/clear_refs")
    for size in (100, 224):
        for name, fn, data in cases:
            fn(data, size=size)  # warm-up
            times = []
            peak_mb = None
            for _ in range(reps):
                if clear_refs.exists():
                    before = _status_kb("VmRSS")
                    clear_refs.write_text("5")  # the peak starts again from the current RSS
                t0 = time.perf_counter()
                fn(data, size=size)
                times.append((time.perf_counter() - t0) * 1000)
                if clear_refs.exists():
                    peak_mb = max(peak_mb or 0, round((_status_kb("VmHWM") - before) / 1024))
            row = {
                "case": name,
                "size": size,
                "median_ms": round(statistics.median(times), 1),
                "peak_added_mb": peak_mb,
            }
            out["rows"].append(row)
            print(f"  {name:<40} {size:>3} px  {row['median_ms']:8.1f} ms  peak +{peak_mb} MB")
    return out


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile, so p95 of 500 samples is an observed latency."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_ms) // 100)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", default="fruits-output", help="output folder of `fruits run`")
    ap.add_argument("--stub", action="store_true", help="serve a stub run (see make_stub_run)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--duration", type=float, default=0, help="seconds; overrides --requests")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--image", type=Path, default=None, help="default: a 100x100 sample banana")
    ap.add_argument("--threads", type=int, default=0, help="server CNN threads (0 = all cores)")
    ap.add_argument("--max-batch", type=int, default=1, help="server micro-batch (1 = off)")
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--stalled", type=int, default=0, help="clients that stall mid-upload")
    ap.add_argument("--heavy", type=int, default=0, help="6300x6300 16-bit PNG uploads")
    ap.add_argument(
        "--heavy-loop", action="store_true", help="heavy clients upload again until the end"
    )
    ap.add_argument(
        "--slow-header", type=int, default=0, help="clients sending a header byte every 2 s"
    )
    ap.add_argument(
        "--mix",
        action="store_true",
        help="issue 18's mix: --concurrency 16 --duration 30 --stalled 50 --slow-header 130 "
        "--heavy 6 --heavy-loop (explicit options win)",
    )
    ap.add_argument("--settings", default=None, help="ServeSettings as JSON (not via the CLI)")
    ap.add_argument("--url", default=None, help="use a running server instead of starting one")
    ap.add_argument("--decode", action="store_true", help="only time decode_image (no server)")
    args = ap.parse_args(argv)
    if args.mix:
        given = set(argv if argv is not None else sys.argv[1:])
        for option, value in (
            ("--concurrency", 16),
            ("--duration", 30.0),
            ("--stalled", 50),
            ("--slow-header", 130),
            ("--heavy", 6),
        ):
            if not any(a == option or a.startswith(option + "=") for a in given):
                setattr(args, option[2:].replace("-", "_"), value)
        args.heavy_loop = True
    return args


class Load:
    """What one load scenario measured: the normal clients, the abusers and the server. (A plain
    class: tests/test_api.py loads this file without registering it, which dataclasses need.)"""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.statuses: Counter[str] = Counter()
        self.stalled: list[dict[str, Any]] = []
        self.heavy: list[dict[str, Any]] = []
        self.slow_header: list[dict[str, Any]] = []
        self.wall = 0.0
        self.server_cpu = 0.0
        self.peak_rss: int | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.decode:
        print(json.dumps(decode_figures()))
        return 0
    load_before = os.getloadavg()[0]  # what else was running: figures are noisy when high

    image = args.image or sorted(SAMPLE_BANANA.glob("*.jpg"))[0]
    data = image.read_bytes()
    stub_dir = None
    if args.stub:
        stub_dir = tempfile.TemporaryDirectory(prefix="fruits-stub-run-")
        args.run = str(make_stub_run(stub_dir.name))
    if args.url is None and not (Path(args.run) / "models" / "serving.npz").exists():
        raise SystemExit(f"{args.run} is not a served run: run `fruits run --output {args.run}`")
    heavy_data = heavy_png() if args.heavy else b""

    proc = None
    rss = None
    if args.url is None:
        port = free_port()
        settings = json.loads(args.settings) if args.settings else None
        proc = start_server(args.run, port, args.threads, args.max_batch, settings=settings)
        rss = PeakRss(proc.pid)
        url = f"http://127.0.0.1:{port}"
    else:
        url = args.url.rstrip("/")
        port = httpx.URL(url).port or 80
    try:
        measured = run_load(args, url, port, image, data, heavy_data, proc, rss)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        if stub_dir is not None:
            stub_dir.cleanup()

    image_text = f"{image.name} ({len(data)} bytes)"
    result = summarize(
        measured,
        args,
        image_text,
        len(heavy_data),
        own_server=proc is not None,
        load_before=load_before,
    )
    print_result(result, args.concurrency)
    for e in measured.errors[:5]:
        print("error:", e, file=sys.stderr)
    return 1 if measured.errors else 0


def run_load(
    args: argparse.Namespace,
    url: str,
    port: int,
    image: Path,
    data: bytes,
    heavy_data: bytes,
    proc: subprocess.Popen | None,
    rss: PeakRss | None,
) -> Load:
    """Warm the server up, then run the normal clients and the abusers at once."""
    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(args.warmup):
            c.post("/v1/predict", files={"image": (image.name, data, "image/jpeg")})

    load = Load()
    lock = threading.Lock()
    remaining = [args.requests]
    stop_at = time.monotonic() + args.duration if args.duration else None

    def more() -> bool:
        with lock:
            if stop_at is not None:
                return time.monotonic() < stop_at
            if remaining[0] == 0:
                return False
            remaining[0] -= 1
            return True

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while more():
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/predict", files={"image": (image.name, data, "image/jpeg")})
                    status = str(r.status_code)
                    ok = r.status_code == 200 and r.json()["prediction"]["name"]
                    why = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except Exception as exc:
                    status = type(exc).__name__
                    why = f"{type(exc).__name__}: {exc}"
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    load.latencies.append(ms)
                    load.statuses[status] += 1
                    if why:
                        load.errors.append(why)

    hold = 120.0
    stop = threading.Event()  # set when the normal clients are done: loopers stop
    abusers = [
        threading.Thread(target=stalled_client, args=(port, hold, load.stalled))
        for _ in range(args.stalled)
    ]
    abusers += [
        threading.Thread(
            target=heavy_client,
            args=(url, heavy_data, load.heavy, stop if args.heavy_loop else None),
        )
        for _ in range(args.heavy)
    ]
    abusers += [
        threading.Thread(target=slow_header_client, args=(port, hold, load.slow_header))
        for _ in range(args.slow_header)
    ]
    server_cpu = _cpu_seconds(proc)
    started = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for w in abusers + workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    load.wall = time.perf_counter() - started
    load.server_cpu = _cpu_seconds(proc) - server_cpu
    for w in abusers:
        w.join()
    load.peak_rss = rss.stop() if rss is not None else None
    return load


def summarize(
    measured: Load,
    args: argparse.Namespace,
    image: str,
    heavy_bytes: int,
    *,
    own_server: bool,
    load_before: float,
) -> dict[str, Any]:
    """The figures as one dict (the JSON line the slow test reads)."""
    lat = sorted(measured.latencies)
    result = {
        "requests": len(lat),
        "concurrency": args.concurrency,
        "errors": len(measured.errors),
        "normal_5xx": sum(n for s, n in measured.statuses.items() if s.startswith("5")),
        "statuses": dict(measured.statuses),
        "image": image,
        "throughput_rps": round(len(lat) / measured.wall, 1),
        "p50_ms": round(percentile(lat, 50), 1),
        "p95_ms": round(percentile(lat, 95), 1),
        "p99_ms": round(percentile(lat, 99), 1),
        "max_ms": round(lat[-1], 1) if lat else None,
        "mean_ms": round(statistics.fmean(lat), 1) if lat else None,
        # CPU the server burnt per request: unlike latency, barely moved by other processes
        "server_cpu_ms_per_request": round(1000 * measured.server_cpu / max(len(lat), 1), 1)
        if own_server
        else None,
        "server_peak_rss_mb": round(measured.peak_rss / 2**20) if measured.peak_rss else None,
        "max_batch": args.max_batch,
        "stub": args.stub,
        "cpu_cores": os.cpu_count(),
        "load_average_1m_before": round(load_before, 1),
    }
    if args.stalled:
        result["stalled"] = {
            "clients": len(measured.stalled),
            "statuses": dict(Counter(str(s["status"]) for s in measured.stalled)),
            "dropped": sum(s["closed"] for s in measured.stalled),
            "max_s": max(s["after_s"] for s in measured.stalled),
        }
    if args.heavy:
        result["heavy"] = {
            "clients": args.heavy,
            "requests": len(measured.heavy),
            "upload_bytes": heavy_bytes,
            "statuses": dict(Counter(str(h["status"]) for h in measured.heavy)),
            "max_s": max(h["after_s"] for h in measured.heavy),
        }
    if args.slow_header:
        result["slow_header"] = {
            "clients": len(measured.slow_header),
            "statuses": dict(Counter(str(s["status"]) for s in measured.slow_header)),
            "closed_by_server": sum(s["closed"] for s in measured.slow_header),
            "max_s": max(s["after_s"] for s in measured.slow_header),
        }
    return result


def print_result(result: dict[str, Any], concurrency: int) -> None:
    print(
        f"{result['requests']} requests, {concurrency} clients, {result['errors']} errors, "
        f"{result['throughput_rps']} req/s, statuses {result['statuses']}"
    )
    print(
        f"server CPU per request: {result['server_cpu_ms_per_request']} ms, "
        f"peak RSS {result['server_peak_rss_mb']} MB"
    )
    print(
        f"latency ms: p50 {result['p50_ms']}  p95 {result['p95_ms']}  p99 {result['p99_ms']}  "
        f"max {result['max_ms']}"
    )
    print(f"normal clients: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms")
    for kind in ("stalled", "slow_header", "heavy"):
        if kind in result:
            print(f"{kind}: {result[kind]}")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
