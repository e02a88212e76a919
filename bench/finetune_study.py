"""Fine-tuning the last block of EfficientNet-Lite0 on CPU, left one source out (issue 21,
lever 4; results in docs/recognition-study.md, "Fine-tuning the last blocks on CPU").

Question: does training the network's last stage (MBConv block 15, 192 -> 320 channels, k3,
expand 6, plus the 1x1 head conv 320 -> 1280 and its BN) together with a linear classifier
recognise a photo source the model never saw better than the frozen features + logistic
regression, on the same views and the same training rows?

Split. The project's own torch model (`fruits.models.build_torch("efficientnet_lite0")`, the
graph the bundled ONNX was exported from): the trunk (stem + blocks 0-14) is exported to ONNX and
run once per view by ONNX Runtime (2 threads); its output, the input of block 15 (192 x 7 x 7 at
224 px), is cached as float16. The tail (block 15 + conv_head + bn1 + ReLU6 + mean pool) runs in
torch; BatchNorm stays in eval mode (running statistics frozen), so drop-connect is off too.

Views: `images.decode_views(data, size=224, views=2)`: the whole image and its mirror, exactly
the pipeline's first two views (a Fruits-360 frame or a 224 px composite gets one view from
decode_views; its mirror is added the same way, `whole[:, ::-1]`). Both models are judged on the
mean over the two views (features for the frozen baseline, logits for the fine-tuned one, which
are the same thing for a linear head on the mean features), and trained on both.

Rows (as bench/loso.py's "raw 1280 + pipeline aug, clean"): Fruits-360 dev Training frames (the
grouped hold-out, `loso.grouped_holdout`; every 2nd remaining frame trains), the three fruit
sources and the three negatives sources ("not a fruit"), and fruits.augment's composites and
background-only images ("not a fruit") of the Fruits-360 frames the study trains on (the
pipeline's pool, built as loso's `features_pipeline` does). A held-out fruit source is judged
whole; Fruits-360 on its grouped hold-out; the clean rule (drop composites cut from a held-out
negatives source's photos) only matters when a negatives source is held out.

(a) frozen: the pretrained tail's pooled 1280 features (mean of 2 views) -> loso.Model
(StandardScaler -> multinomial logistic regression, regParam 1e-3, Spark's C = 1 / (r n)).
(b) fine-tuned: the same tail and a linear head initialised from (a)'s fit (the scaler folded
into the weights), so epoch 0 *is* (a); then AdamW (lr LR for the tail and head, weight decay
WD), batches of BATCH, each row one of its two views at random per epoch, plain cross-entropy
(every row weighs 1, as in (a)), EPOCHS epochs; logits of the held-out rows after every epoch.
The epoch count reported for a held-out source is chosen on the *other* held-out folds only
(the mean of their species top-1 at that epoch), never on the judged source.

Refusal, the same rule for (a) and (b): "fixed" (T 1, threshold 0.25, the floor where loso's
calibrate landed in every case) and "calibrated" (loso's `calibrate`: temperature on a grid by
NLL, `choose_threshold` with floor 0.25, fitted on the other fruit folds' out-of-source logits at
the same epoch; meaningful only with the fruits-360 fold run too). Metrics: fruits.recognition's
`answer` / `metrics` with loso's merged label maps; species = best summed species mass.
`--lr X` (files ft-logits-b15-lrX-*) and `--head-only` (the control: tail frozen, only the
linear head trains; files ft-logits-b15-head-*) are other settings of the same protocol.

    nice -n 15 .venv/bin/python bench/finetune_study.py trunk      # export + check, ~1 min
    nice -n 15 .venv/bin/python bench/finetune_study.py cache      # block-15 inputs, ~15 min
    nice -n 15 .venv/bin/python bench/finetune_study.py frozen     # (a)'s pooled features
    nice -n 15 .venv/bin/python bench/finetune_study.py train --held grocery-store-train
    nice -n 15 .venv/bin/python bench/finetune_study.py train --held orchard-train --lr 3e-5
    nice -n 15 .venv/bin/python bench/finetune_study.py train --held checkout-bags-train --head-only
    nice -n 15 .venv/bin/python bench/finetune_study.py report [--lr 3e-5] [--head-only]

Caches: $RECOG_CACHE/ft-* (default /tmp/recog-cache). 2 threads everywhere.
"""

# ruff: noqa: N803, N806
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import loso  # noqa: E402

CACHE = loso.CACHE
THREADS = 2
SIZE = loso.SIZE
SPLIT = 15  # the first trained block: blocks SPLIT.. + head are the tail
LR, WD, BATCH, EPOCHS = 1e-4, 1e-2, 64, 3
HEAD_ONLY = False  # --head-only: the control, only the linear head trains (tail frozen)
SOURCES = loso.FRUIT_SOURCES + loso.NEG_SOURCES
HELD = ["fruits-360", *loso.FRUIT_SOURCES, *loso.NEG_SOURCES]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def torch_model():
    import torch

    torch.set_num_threads(THREADS)
    from fruits.models import build_torch

    return build_torch("efficientnet_lite0", None).net.eval()


class Trunk:
    """stem + blocks 0..SPLIT-1 (eval: no drop-connect)."""

    def __new__(cls, net):
        import torch

        class _T(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
                self.blocks = torch.nn.ModuleList(net._blocks[:SPLIT])

            def forward(self, x):
                x = self.act(self.bn0(self.stem(x)))
                for b in self.blocks:
                    x = b(x)
                return x

        return _T(net).eval()


def make_tail(net):
    """blocks SPLIT.. + conv_head + bn1 + ReLU6 + mean pool -> (N, 1280)."""
    import torch

    class Tail(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.blocks = torch.nn.ModuleList(copy.deepcopy(list(net._blocks[SPLIT:])))
            self.head = copy.deepcopy(net._conv_head)
            self.bn1 = copy.deepcopy(net._bn1)
            self.act = copy.deepcopy(net._swish)

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.act(self.bn1(self.head(x))).mean(dim=(2, 3))

    return Tail(net).eval()


def trunk_path() -> Path:
    return CACHE / f"ft-trunk-b{SPLIT}.onnx"


def cmd_trunk() -> None:
    """Export the trunk, then check trunk (ORT) -> tail (torch) against the bundled graph."""
    import torch

    net = torch_model()
    trunk = Trunk(net)
    p = trunk_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(trunk, x, str(p), input_names=["pixels"], output_names=["act"],
                      dynamic_axes={"pixels": {0: "n"}, "act": {0: "n"}}, opset_version=17,
                      dynamo=False)  # fmt: skip
    items = loso.list_source("grocery-store-train")[:6]
    px = np.concatenate([views(Path(t[0]).read_bytes()) for t in items])
    act = run_trunk(session(), px)
    with torch.no_grad():
        feats = make_tail(net)(torch.from_numpy(act.astype(np.float32))).numpy()
    ref = loso.featurizer()(px)
    err = float(np.abs(feats - ref).max() / np.abs(ref).max())
    log(f"trunk {p} ({p.stat().st_size / 1e6:.1f} MB): act {act.shape}, "
        f"tail(trunk) vs bundled graph: max rel err {err:.2e} (act float16)")  # fmt: skip
    assert err < 2e-2, err


def session():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(trunk_path()), opts, providers=["CPUExecutionProvider"])


def views(data: bytes) -> np.ndarray:
    """(2, 224, 224, 3) uint8: the pipeline's whole view and its mirror."""
    from fruits.images import decode_views

    v = decode_views(data, size=SIZE, views=2)
    if len(v) == 1:
        v = np.stack([v[0], v[0][:, ::-1]])
    return np.ascontiguousarray(v)


def run_trunk(sess, px: np.ndarray) -> np.ndarray:
    from fruits.engine import normalise
    from fruits.models import get_spec

    x = normalise(px, get_spec("efficientnet_lite0"))
    return sess.run(None, {"pixels": x})[0].astype(np.float16)


# ---------------------------------------------------------------------------------------------
# the rows: which images, in which order (every cache file follows these lists)


def f360_rows():
    """Fruits-360 frames the study uses: (index in list_f360, path, class, held?)."""
    items = loso.list_f360()
    cls = [t[1] for t in items]
    held = loso.grouped_holdout(cls, [t[2] for t in items], [t[3] for t in items])
    train = ~held & (np.arange(len(items)) % 2 == 0)  # loso's f360_train_sel
    return items, held, train


def pipeline_images():
    """fruits.augment's composites and backgrounds of the grouped-train frames (loso's
    features_pipeline, restricted to the frames loso trains on): (jpegs, frame, kind, bg)."""
    from fruits import augment

    items, _, train = f360_rows()
    pool, pool_src, _ = loso.background_pool()
    photos = augment.decoded_pool(pool)
    jpegs, frame, kind, bgs = [], [], [], []
    for i in np.flatnonzero(train):
        path = items[i][0]
        for k, data, b in augment.augment_frame(Path(path).read_bytes(), path, SIZE, photos):
            jpegs.append(data)
            frame.append(int(i))
            kind.append(k)
            bgs.append(pool_src[b] if b >= 0 else -1)
    return jpegs, np.array(frame), np.array(kind), np.array(bgs, np.int8)


def cache_file(name: str) -> Path:
    return CACHE / f"ft-act-b{SPLIT}-{name}.npz"


def extract(reads, name: str, **extra) -> None:
    p = cache_file(name)
    if p.exists():
        log(f"{name}: cached")
        return
    sess = session()
    A = None
    t0 = time.perf_counter()
    for s in range(0, len(reads), 8):
        px = np.concatenate([views(r()) for r in reads[s : s + 8]])
        act = run_trunk(sess, px)
        if A is None:
            A = np.zeros((len(reads), 2, *act.shape[1:]), np.float16)
        A[s : s + len(px) // 2] = act.reshape(-1, 2, *act.shape[1:])
        if s % 800 == 0:
            log(f"  {name} {s}/{len(reads)} {time.perf_counter() - t0:.0f}s")
    dt = time.perf_counter() - t0
    np.savez(p, A=A, seconds=dt, **extra)
    log(f"{name}: {len(reads)} images x 2 views in {dt:.0f}s")


def cmd_cache() -> None:
    def reader(path):
        return lambda: Path(path).read_bytes()

    for name in SOURCES:
        items = loso.list_source(name)
        extract([reader(t[0]) for t in items], name, folder=[t[1] for t in items])
    items, held, train = f360_rows()
    use = np.flatnonzero(held | train)
    extract([reader(items[i][0]) for i in use], "f360", index=use,
            cls=[items[i][1] for i in use], held=held[use])  # fmt: skip
    if not cache_file("pipeline").exists():
        t0 = time.perf_counter()
        jpegs, frame, kind, bgs = pipeline_images()
        log(f"pipeline: {len(jpegs)} images ({int((kind == 'composite').sum())} composites) "
            f"made in {time.perf_counter() - t0:.0f}s")  # fmt: skip
        reads = [functools.partial(bytes, data) for data in jpegs]
        extract(reads, "pipeline", frame=frame, kind=kind, bg_source=bgs)


# ---------------------------------------------------------------------------------------------
# data for a fold


class Rows:
    """Every cached image: activations (N, 2, C, 7, 7) float16, target label, truth, source."""

    def __init__(self) -> None:
        lm = loso.label_maps()
        self.lm = lm
        A, y, truth, src = [], [], [], []
        for name in SOURCES:
            z = np.load(cache_file(name))
            A.append(z["A"])
            for f in z["folder"]:
                f = str(f)
                if name in loso.NEG_SOURCES:
                    y.append(loso.NEG)
                    truth.append((set(), set(), True))
                else:
                    y.append(lm.target[f])
                    truth.append((set(lm.strict[f]), set(lm.lenient[f]), False))
                src.append(name)
        z = np.load(cache_file("f360"))
        A.append(z["A"])
        for c, h in zip(z["cls"], z["held"], strict=True):
            y.append(str(c))
            truth.append(({str(c)}, {str(c)}, False))
            src.append("fruits-360 held" if h else "fruits-360 train")
        z = np.load(cache_file("pipeline"))
        A.append(z["A"])
        f = np.load(cache_file("f360"))
        cls = {int(i): str(c) for i, c in zip(f["index"], f["cls"], strict=True)}
        for fr, k, b in zip(z["frame"], z["kind"], z["bg_source"], strict=True):
            if str(k) == "background":
                y.append(loso.NEG)
                truth.append((set(), set(), True))
            else:
                y.append(cls[int(fr)])
                truth.append(({cls[int(fr)]}, {cls[int(fr)]}, False))
            src.append(f"aug:{loso.BG_SOURCES[b]}" if b >= 0 else "aug:texture")
        self.A = np.concatenate(A)
        self.y = np.array(y)
        self.truth = truth
        self.src = np.array(src)

    def fold(self, held: str):
        """(train index, judged index) as bench/loso.py's run_config does."""
        s = self.src
        judged = s == ("fruits-360 held" if held == "fruits-360" else held)
        train = ~judged & (s != "fruits-360 held")
        if held in loso.BG_SOURCES:  # the clean rule
            train &= s != f"aug:{held}"
        return np.flatnonzero(train), np.flatnonzero(judged)


def pooled(tail, A: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, 2, ...) activations -> (N, 2, 1280) float32 tail features."""
    import torch

    out = np.zeros((len(A), 2, 1280), np.float32)
    with torch.no_grad():
        for s in range(0, len(A), batch):
            a = torch.from_numpy(A[s : s + batch].astype(np.float32))
            n = len(a)
            out[s : s + n] = tail(a.reshape(n * 2, *a.shape[2:])).reshape(n, 2, -1).numpy()
    return out


def cmd_frozen() -> None:
    p = CACHE / f"ft-frozen-b{SPLIT}.npy"
    if p.exists():
        return
    rows = Rows()
    t0 = time.perf_counter()
    F = pooled(make_tail(torch_model()), rows.A)
    np.save(p, F)
    log(f"frozen tail features {F.shape} in {time.perf_counter() - t0:.0f}s")


def cmd_train(held: str, epochs: int) -> None:
    import torch

    torch.manual_seed(0)
    rows = Rows()
    F = np.load(CACHE / f"ft-frozen-b{SPLIT}.npy")
    tr, ju = rows.fold(held)
    log(f"held {held}: train {len(tr)} rows, judged {len(ju)}")
    t0 = time.perf_counter()
    m = loso.Model(F[tr].mean(1), list(rows.y[tr]), k=None, reg=1e-3)
    t_lr = time.perf_counter() - t0
    log(f"  (a) logistic regression: {t_lr:.0f}s, {len(m.classes)} classes")
    coef, icpt = m.lr.coef_, m.lr.intercept_
    sc_mean, sc_scale = m.scaler.mean_, m.scaler.scale_
    W = coef / sc_scale
    b = icpt - (coef * sc_mean / sc_scale).sum(1)
    tail = make_tail(torch_model())
    head = torch.nn.Linear(1280, len(m.classes))
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(W.astype(np.float32)))
        head.bias.copy_(torch.from_numpy(b.astype(np.float32)))
    idx = {c: i for i, c in enumerate(m.classes)}
    ytr = torch.tensor([idx[c] for c in rows.y[tr]])
    logits = {0: m.logits(F[ju].mean(1))}
    check = F[ju].mean(1) @ W.T + b
    assert np.allclose(check, logits[0], atol=1e-3 * np.abs(logits[0]).max()), "fold of scaler"
    acc0 = quick_species(rows, ju, m.classes, logits[0])
    log(f"  (a) judged species top-1 (diagnostic) {acc0:.3f}")
    save(held, m, ju, logits, t_lr, [], len(tr))
    params = list(head.parameters())
    if HEAD_ONLY:
        tail.requires_grad_(False)
    else:
        params += list(tail.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD)
    Atr = rows.A[tr]
    times = []
    for ep in range(1, epochs + 1):
        t0 = time.perf_counter()
        tail.eval()  # BN running statistics frozen, no drop-connect
        perm = torch.randperm(len(tr))
        vsel = torch.randint(0, 2, (len(tr),))
        total = 0.0
        for s in range(0, len(tr), BATCH):
            bi = perm[s : s + BATCH].numpy()
            a = torch.from_numpy(Atr[bi, vsel[bi].numpy()].astype(np.float32))
            loss = torch.nn.functional.cross_entropy(head(tail(a)), ytr[bi])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(bi)
        Fj = pooled(tail, rows.A[ju])
        with torch.no_grad():
            logits[ep] = head(torch.from_numpy(Fj.mean(1))).numpy()
        times.append(time.perf_counter() - t0)
        acc = quick_species(rows, ju, m.classes, logits[ep])
        log(f"  (b) epoch {ep}: train loss {total / len(tr):.3f}, {times[-1]:.0f}s, "
            f"judged species top-1 (diagnostic) {acc:.3f}")  # fmt: skip
        save(held, m, ju, logits, t_lr, times, len(tr))


def logits_file(held: str) -> Path:
    """ft-logits-b15-HELD.npz at the default LR, ft-logits-b15-lrX-HELD.npz otherwise."""
    tag = ("head-" if HEAD_ONLY else "") + ("" if LR == 1e-4 else f"lr{LR:g}-")
    return CACHE / f"ft-logits-b{SPLIT}-{tag}{held}.npz"


def save(held, m, ju, logits, t_lr, times, n_train) -> None:
    """The judged rows' logits after every epoch so far (0: the frozen baseline)."""
    np.savez(logits_file(held), classes=m.classes, judged=ju,
             epochs=np.array(sorted(logits)), logits=np.stack([logits[e] for e in sorted(logits)]),
             seconds_lr=t_lr, seconds_epochs=np.array(times), n_train=n_train,
             lr=LR, wd=WD, batch=BATCH)  # fmt: skip


def quick_species(rows, ju, classes, logits) -> float:
    from fruits.recognition import species_table

    spec = species_table(classes, rows.lm)
    pred = [classes[i] for i in logits.argmax(1)]
    ok = [
        spec.get(p) in {spec.get(c) for c in rows.truth[j][1]}
        for p, j in zip(pred, ju, strict=True)
    ]
    return float(np.mean(ok))


# ---------------------------------------------------------------------------------------------
# the table


def cmd_report() -> None:
    """Per held-out source: (a) = epoch 0, (b) = the epoch count with the best mean species
    top-1 over the *other* fruit folds. Two refusal rules, the same for (a) and (b): "fixed"
    (T 1, threshold 0.25: the floor where loso's calibrate landed in every case) and "other
    folds" (loso.calibrate on the other fruit folds' out-of-source logits at that epoch)."""
    from fruits.recognition import answer, metrics, softmax, species_table

    rows = Rows()
    runs = {}
    for h in HELD:
        p = logits_file(h)
        if p.exists():
            z = np.load(p)
            runs[h] = {k: z[k] for k in z.files}
    folds = list(runs)
    fruit = [h for h in folds if h not in loso.NEG_SOURCES]
    n_ep = min(len(r["epochs"]) for r in runs.values())

    def pieces(h, e):
        r = runs[h]
        classes = [str(c) for c in r["classes"]]
        ju = r["judged"]
        idx = {c: i for i, c in enumerate(classes)}
        keep = np.array([rows.y[j] in idx for j in ju])
        truth = [rows.truth[j] for j in ju]
        return classes, r["logits"][e], ju, keep, truth, idx

    def judge(h, e, T, thr):
        classes, lg, ju, _, truth, _ = pieces(h, e)
        spec = species_table(classes, rows.lm)
        a = answer(softmax(lg, T), classes, spec, thr)
        mt = metrics(a, [t[0] for t in truth], [t[1] for t in truth], [t[2] for t in truth], spec)
        mt.update(epoch=e, temperature=round(T, 3), threshold=thr, n=len(ju),
                  n_variety=sum(bool(t[0]) for t in truth))  # fmt: skip
        mt.pop("most_confused")
        return mt

    fixed = {h: [judge(h, e, 1.0, 0.25) for e in range(n_ep)] for h in folds}
    acc = {h: [m["species_top1"] for m in fixed[h]] for h in fruit}
    out = {}
    for h in folds:
        others = [o for o in fruit if o != h]
        # (b)'s epoch count: the best mean species top-1 over the other real-photo folds (never
        # h, never the studio frames: the question is transfer to another kind of photo)
        pick = [o for o in others if o in loso.FRUIT_SOURCES]
        e_b = 0  # no fine-tuned epoch yet on every fold: (b) is (a)
        if n_ep > 1 and pick:
            e_b = 1 + int(np.argmax([np.mean([acc[o][e] for o in pick]) for e in range(1, n_ep)]))
        res = {}
        for tag, e in (("a", 0), ("b", e_b)):
            mt = dict(fixed[h][e])
            if len(others) >= 2:
                L, Y, G, P, specs = [], [], [], [], []
                for gi, o in enumerate(others):
                    classes, lg, ju, keep, truth, idx = pieces(o, e)
                    L.append((classes, lg[keep]))
                    Y.append(np.array([idx[rows.y[j]] for j in ju[keep]]))
                    G.append(np.full(int(keep.sum()), gi))
                    P.append(np.array([not t[2] for t, k in zip(truth, keep, strict=True) if k]))
                    specs.append(species_table(classes, rows.lm))
                T, _, thr, _ = loso.calibrate(None, L, Y, G, P, specs, None)
                mt["other_folds"] = judge(h, e, T, thr)
            res[tag] = mt
        res["by_epoch"] = fixed[h]
        out[h] = res
    res_file = CACHE / logits_file("results").name.replace(".npz", ".json")
    res_file.write_text(json.dumps(out, indent=1, default=float))
    print(fmt(out, runs))


def se(p: float, n: int) -> float:
    return 100 * float(np.sqrt(max(p * (1 - p), 1e-12) / max(n, 1)))


def fmt(out, runs) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    lines = ["| held out (images) | metric | (a) frozen tail + LR | (b) fine-tuned tail + head | "
             "(b) - (a) (±SE) |", "|---|---|---|---|---|"]  # fmt: skip

    def row(h, label, va, vb, n, extra=""):
        d = 100 * (vb - va)
        s_ = np.hypot(se(va, n), se(vb, n))
        star = "*" if abs(d) > 2 * s_ else ""
        cells = f"{pct(va)} | {pct(vb)}{extra} | {d:+.1f}{star} (±{s_:.1f})"
        lines.append(f"| {h} | {label} | {cells} |")

    for h, res in out.items():
        a, b = res["a"], res["b"]
        name = f"{h} ({a['n']})"
        if a["species_top1"] is not None:
            row(name, "species", a["species_top1"], b["species_top1"], a["positives"],
                f" (epoch {b['epoch']})")  # fmt: skip
            if a["variety_top1"] is not None:
                row("", "variety", a["variety_top1"], b["variety_top1"], a["n_variety"])
            row("", "species top-5", a["species_top5"], b["species_top5"], a["positives"])
            row("", "fruit refused (T 1, thr 0.25)", a["refused_positives"],
                b["refused_positives"], a["positives"])  # fmt: skip
            if "other_folds" in a:
                ao, bo = a["other_folds"], b["other_folds"]
                row("", f"fruit refused (other folds: T {ao['temperature']} / "
                    f"{bo['temperature']}, thr {ao['threshold']} / {bo['threshold']})",
                    ao["refused_positives"], bo["refused_positives"], a["positives"])  # fmt: skip
            lines.append(f"| | ECE (T 1) | {a['ece']} | {b['ece']} | |")
        if a["refused_negatives"] is not None:
            row(name, "no-fruit refused (T 1, thr 0.25)", a["refused_negatives"],
                b["refused_negatives"], a["negatives"], f" (epoch {b['epoch']})")  # fmt: skip
    lines.append("")
    lines.append("By epoch (0 = frozen; T 1, thr 0.25; diagnostic, each fold's own judged rows):")
    for h, res in out.items():
        r = runs[h]
        k = "species_top1" if res["a"]["species_top1"] is not None else "refused_negatives"
        lines.append(f"- {h} {k}: "
                     + ", ".join(f"{m['epoch']}: {pct(m[k])}" for m in res["by_epoch"])
                     + "; fruit refused: "
                     + ", ".join(f"{pct(m['refused_positives'])}" for m in res["by_epoch"])
                     + f"; LR fit {float(r['seconds_lr']):.0f}s, epochs "
                     + ", ".join(f"{t:.0f}s" for t in r["seconds_epochs"])
                     + f", {int(r['n_train'])} train rows")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    global LR, HEAD_ONLY
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["trunk", "cache", "frozen", "train", "report"])
    ap.add_argument("--held", choices=HELD)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (tail and head)")
    ap.add_argument("--head-only", action="store_true", help="control: the tail stays frozen")
    a = ap.parse_args()
    LR, HEAD_ONLY = a.lr, a.head_only
    if a.cmd == "trunk":
        cmd_trunk()
    elif a.cmd == "cache":
        cmd_cache()
    elif a.cmd == "frozen":
        cmd_frozen()
    elif a.cmd == "train":
        if not a.held:
            ap.error("train needs --held")
        cmd_train(a.held, a.epochs)
    else:
        cmd_report()


if __name__ == "__main__":
    main()
