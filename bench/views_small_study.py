"""Study (issue 21): should a photo no larger than the model input get the 8 views too?

`images.decode_views` gives a photo whose shorter side is <= the input size (224) one view: the
whole image. Every checkout photo (224 px) and orchard crop (71-190 px) and 161 of the everyday
scenes are such photos, while the grocery photos (>= 320 px) get 8. This enlarges those photos
to the crop scale (size / 0.8, bicubic, lossless) before the same `decode_views`, so they get
the 8 views as a large photo does, and featurizes the three sources that have them into
$RECOG_CACHE/loso-up-*.npz (every other cache linked from the bundled graph's), for
`bench/loso.py study --tag up` and `paired --tag up`. Result in docs/recognition-study.md
("Views for small photos"): not adopted.

    .venv/bin/python bench/views_small_study.py          # ~7 min on 2 cores (loaded)
    C="raw 1280 + pipeline aug, clean"
    OMP_NUM_THREADS=1 .venv/bin/python bench/loso.py study --tag up --config "$C" --answers
    .venv/bin/python bench/loso.py paired --tag up --config "$C"
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loso
from PIL import Image, ImageOps

import fruits.images as fi

REDO = ["checkout-bags-train", "orchard-train", "scenes-negatives-train"]
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


def main() -> None:
    fi.decode_views = enlarged_views  # loso.extract imports it at call time
    loso.PREFIX = "loso-up-"
    for f in sorted(loso.CACHE.glob("loso-*.npz")):
        name = f.name[len("loso-") : -len(".npz")]
        if f.is_symlink() or name in REDO or name == "imagenet-head":
            continue
        if name in {"f360", *loso.FRUIT_SOURCES, *loso.NEG_SOURCES} or name.startswith("aug-"):
            dst = loso.CACHE / f"loso-up-{name}.npz"
            if not dst.exists():
                os.symlink(f, dst)
    loso.cmd_features(None)


if __name__ == "__main__":
    main()
