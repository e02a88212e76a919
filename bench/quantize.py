"""ONNX Runtime int8 quantisation of the bundled backbone: speed and fidelity against fp32.

Static QDQ quantisation (calibrated on Training images) and dynamic quantisation, each timed
in one process on the same decoded images, with the cosine of its features to the fp32 ones.
Needs the `export` extra (onnx). Idle machine only:

    .venv/bin/python bench/quantize.py --images 512 --size 224
    .venv/bin/python bench/quantize.py --save /tmp/recog-cache/efficientnet_lite0-int8.onnx

`--save PATH` keeps the static QDQ graph (bench/loso.py `features --graph PATH --tag int8`).

Calibration beyond the studio frames (issue 23): `--calibration-dirs DIR ...` adds
`--calibration-extra` photos drawn from those folders (the same number from each, rng seed 0),
each decoded as the pipeline decodes a photo (`images.decode_views`, up to 8 views at --size) and
one of its views (rng-picked) calibrating; `--method` picks ORT's calibration (MinMax, the
default, or Percentile / Entropy). `--graphs PATH ...` builds nothing: it times saved graphs
against fp32 (and their feature cosine) in one process. The int8b graph of
docs/performance.md:

    S=../shared/datasets/scenes-negatives-train
    .venv/bin/python bench/quantize.py --calibration 128 --calibration-extra 128 \
        --calibration-dirs $S/clothing-small $S/hands-sign-digits $S/tf-flowers \
        --save /tmp/recog-cache/efficientnet_lite0-int8b.onnx --no-timing

(`--method percentile` as well: int8p.)
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
    parser.add_argument(
        "--calibration-dirs",
        nargs="*",
        default=[],
        help="also calibrate on photos from these folders (searched recursively)",
    )
    parser.add_argument(
        "--calibration-extra",
        type=int,
        default=0,
        help="with --calibration-dirs: how many of their photos (the same from each folder)",
    )
    parser.add_argument(
        "--method",
        choices=["minmax", "percentile", "entropy"],
        default="minmax",
        help="ONNX Runtime's calibration method (static int8)",
    )
    parser.add_argument(
        "--graphs",
        nargs="*",
        default=[],
        help="build nothing: time these saved graphs against fp32 (and their cosine)",
    )
    parser.add_argument("--save", help="also write the static int8 (QDQ) graph here")
    parser.add_argument("--no-timing", action="store_true", help="with --save: build only")
    args = parser.parse_args()

    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fruits.artifact import bundled_graph
    from fruits.engine import normalise
    from fruits.images import decode_image, decode_views
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
    if args.graphs:  # time saved graphs only
        timing(ort, fp32, [(Path(g).name, Path(g)) for g in args.graphs], test)
        return
    if args.calibration_dirs and args.calibration_extra:
        ext = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
        per = -(-args.calibration_extra // len(args.calibration_dirs))
        photos = []
        for d in args.calibration_dirs:
            found = sorted(f for f in Path(d).rglob("*") if f.suffix.lower() in ext)
            photos += [found[i] for i in sorted(rng.choice(len(found), per, False))]
        photos = photos[: args.calibration_extra]
        views = []
        for f in photos:  # as the pipeline decodes a photo; one of its views calibrates
            stack = decode_views(f.read_bytes(), size=args.size, views=8, max_pixels=10**8)
            views.append(stack[int(rng.integers(len(stack)))])
        calib = np.concatenate([calib, normalise(np.stack(views), spec)])
        print(f"calibration: {len(calib) - len(views)} Fruits-360 frames + {len(views)} photos "
              f"from {', '.join(args.calibration_dirs)}")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="fruits-quant-"))
    pre = work / "pre.onnx"
    quant_pre_process(fp32, str(pre))

    class Reader(CalibrationDataReader):
        """Batches of 8; read in strides of 8 batches (CalibStridedMinMax: ranges merged per
        stride, so memory stays that of 64 images whatever the calibration set's size)."""

        def __init__(self) -> None:
            self.all = [{"pixels": calib[i : i + 8]} for i in range(0, len(calib), 8)]
            self.batches = iter(self.all)

        def __len__(self) -> int:
            return len(self.all)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.batches = iter(self.all[start_index:end_index])

        def get_next(self):
            return next(self.batches, None)

    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[args.method]

    n_batches = -(-len(calib) // 8)
    stride = 8 if n_batches % 8 == 0 else n_batches  # must divide the batch count

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
            calibrate_method=method,
            extra_options={"CalibStridedMinMax": stride},
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

    timing(ort, fp32, variants, test)


def timing(ort, fp32: str, variants: list, test: np.ndarray) -> None:
    """Each variant's images/s against fp32 in this process (all cores, 64-image batches, one
    warm-up batch), and the cosine of its features to fp32's."""

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
