"""Two studies (issue 21) of how a photo's views feed the classifier, left one source out.

`small`: should a photo no larger than the model input get the 8 views too?

`images.decode_views` gives a photo whose shorter side is <= the input size (224) one view: the
whole image. Every checkout photo (224 px) and orchard crop (71-190 px) and 161 of the everyday
scenes are such photos, while the grocery photos (>= 320 px) get 8. This enlarges those photos
to the crop scale (size / 0.8, bicubic, lossless) before the same `decode_views`, so they get
the 8 views as a large photo does, and featurizes the three sources that have them into
$RECOG_CACHE/loso-up-*.npz (every other cache linked from the bundled graph's), for
`bench/loso.py study --tag up` and `paired --tag up`. Result in docs/recognition-study.md
("Views for small photos"): not adopted.

    .venv/bin/python bench/views_study.py small          # ~7 min on 2 cores (loaded)
    C="raw 1280 + pipeline aug, clean"
    OMP_NUM_THREADS=1 .venv/bin/python bench/loso.py study --tag up --config "$C" --answers
    .venv/bin/python bench/loso.py paired --tag up --config "$C"

`rows`: train on each real view of a photo as its own row (its crops and mirror as augmentation)
instead of the views' mean, and judge on the mean as today (the classifier is linear: the mean's
logits are the mean of the views' logits, so serving is unchanged). The adopted config, results
and answers as loso-pv-*.json (every cache linked from the bundled graph's); then `paired`:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/views_study.py rows
    .venv/bin/python bench/loso.py paired --tag pv --config "raw 1280 + pipeline aug, clean"
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loso
import numpy as np
from PIL import Image, ImageOps

import fruits.images as fi

REDO = ("checkout-bags-train", "orchard-train", "scenes-negatives-train")
ORIGINAL = fi.decode_views


def enlarged_views(data: bytes, *, size: int, views: int = 1, **kw: Any) -> Any:
    """`decode_views` after enlarging a photo no larger than `size` to the crop scale."""
    if views > 1:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        if min(img.size) <= size:
            big = round(size / fi.CROP_SIDE)
            s = big / min(img.size)
            shape = (max(big, round(img.width * s)), max(big, round(img.height * s)))
            buf = io.BytesIO()
            img.resize(shape, Image.Resampling.BICUBIC).save(buf, "PNG")
            data = buf.getvalue()
    return ORIGINAL(data, size=size, views=views, **kw)


def small() -> None:
    fi.decode_views = enlarged_views  # loso.extract imports it at call time
    loso.PREFIX = "loso-up-"
    loso.link_caches("up", REDO)
    loso.cmd_features(None)


class PerViewData(loso.Data):
    """loso.Data whose real-photo training rows are the photo's views, one row each."""

    def __init__(self) -> None:
        super().__init__()
        for name in loso.FRUIT_SOURCES + loso.NEG_SOURCES:
            z = np.load(loso.cached(name))
            self.src[name]["V"], self.src[name]["nv"] = z["X"].astype(np.float32), z["nv"]

    def rows(self, name: str, train: bool) -> Any:
        x, y, truth = super().rows(name, train)
        if not train or name == "fruits-360":
            return x, y, truth
        s = self.src[name]
        idx = np.repeat(np.arange(len(x)), s["nv"])
        view = np.concatenate([np.arange(n) for n in s["nv"]])
        return s["V"][idx, view], [y[i] for i in idx], [truth[i] for i in idx]


def rows() -> None:
    loso.PREFIX = "loso-pv-"
    loso.link_caches("pv")
    config = "raw 1280 + pipeline aug, clean"
    answers: dict[str, Any] = {}
    res = loso.run_config(
        PerViewData(),
        **loso.CONFIGS[config],
        log=lambda s: print(s, file=sys.stderr),
        answers=answers,
    )
    (loso.CACHE / "loso-pv-results.json").write_text(json.dumps({config: res}))
    (loso.CACHE / "loso-pv-answers.json").write_text(json.dumps({config: answers}))
    for h, m in res.items():
        keys = ("species_top1", "variety_top1", "refused_positives", "refused_negatives", "ece")
        print(h, {k: m.get(k) for k in keys})


if __name__ == "__main__":
    {"small": small, "rows": rows}[sys.argv[1]]()
