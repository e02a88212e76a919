"""ONNX Runtime int8 quantisation of the bundled backbone: speed and fidelity against fp32.

Static QDQ quantisation (calibrated on Training images) and dynamic quantisation, each timed
in one process on the same decoded images, with the cosine of its features to the fp32 ones.
Needs the `export` extra (onnx). Idle machine only:

    .venv/bin/python bench/quantize.py --images 512 --size 224
    .venv/bin/python bench/quantize.py --save /tmp/recog-cache/efficientnet_lite0-int8.onnx

`--save PATH` keeps the static QDQ graph (bench/loso.py `features --graph PATH --tag int8`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from featurize import machine  # bench/featurize.py: CPU model, cores, load average


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", default="../shared/datasets/fruits-360-dev")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument(
        "--keep-fp32",
        type=int,
        nargs="*",
        default=[],
        help="also static int8 with the first and last N Conv/Gemm nodes left in fp32, per N",
    )
    parser.add_argument("--save", help="also write the static int8 (QDQ) graph here")
    parser.add_argument("--no-timing", action="store_true", help="with --save: build only")
    args = parser.parse_args()

    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fruits.artifact import bundled_graph
    from fruits.engine import normalise
    from fruits.images import decode_image
    from fruits.models import get_spec

    print(machine())
    flags = set(Path("/proc/cpuinfo").read_text().split())
    print("int8 dot-product support:", sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}))
    files = sorted(Path(args.dev, "Training").glob("*/*.jpg"))
    rng = np.random.default_rng(0)
    picked = [files[i] for i in rng.choice(len(files), args.images + args.calibration, False)]
    spec = get_spec("efficientnet_lite0")

    def pixels(paths: list[Path]) -> np.ndarray:
        decoded = [decode_image(p.read_bytes(), size=args.size, max_pixels=10**8) for p in paths]
        return normalise(np.stack(decoded), spec)

    test, calib = pixels(picked[: args.images]), pixels(picked[args.images :])
    fp32 = str(bundled_graph("efficientnet_lite0"))
    work = Path(tempfile.mkdtemp(prefix="fruits-quant-"))
    pre = work / "pre.onnx"
    quant_pre_process(fp32, str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixels": calib[i : i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.batches, None)

    def static_int8(path: Path, exclude: list[str]) -> Path:
        quantize_static(
            str(pre),
            str(path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=exclude,
        )
        return path

    static, dynamic = static_int8(work / "static.onnx", []), work / "dynamic.onnx"
    if args.save:
        import shutil

        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(static, args.save)
        print("static int8 graph:", args.save)
        if args.no_timing:
            return
    quantize_dynamic(str(pre), str(dynamic), weight_type=QuantType.QUInt8)
    variants = [("int8 static (QDQ)", static), ("int8 dynamic", dynamic)]
    import onnx

    heavy = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in ("Conv", "Gemm")]
    for keep in args.keep_fp32:
        exclude = heavy[:keep] + heavy[len(heavy) - keep :]
        mixed = static_int8(work / f"static-keep{keep}.onnx", exclude)
        variants.append((f"int8, {keep}+{keep} fp32", mixed))

    def run(path: str) -> tuple[np.ndarray, float]:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        session.run(None, {"pixels": test[:64]})
        start = time.perf_counter()
        out = np.concatenate(
            [session.run(None, {"pixels": test[i : i + 64]})[0] for i in range(0, len(test), 64)]
        )
        return out, len(test) / (time.perf_counter() - start)

    base, base_rate = run(fp32)
    print(f"{'variant':<22} {'images/s':>9} {'x fp32':>7} {'mean cosine':>12} {'min cosine':>11}")
    print(f"{'fp32':<22} {base_rate:>9.1f} {1.0:>7.2f} {1.0:>12.6f} {1.0:>11.6f}")
    for name, path in variants:
        try:
            feats, rate = run(str(path))
        except Exception as exc:  # an operator ORT cannot run quantised on this CPU
            print(f"{name:<22} failed: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        cos = (feats * base).sum(1) / (
            np.linalg.norm(feats, axis=1) * np.linalg.norm(base, axis=1) + 1e-12
        )
        print(
            f"{name:<22} {rate:>9.1f} {rate / base_rate:>7.2f} {cos.mean():>12.6f}"
            f" {cos.min():>11.6f}"
        )
    print(machine())


if __name__ == "__main__":
    main()
