"""Does fine-tuning the whole network carry to a source it never saw? (issue 21, lever 4)

`fruits finetune` twice on every shared source but the held-out one, with the same rows drawn,
the same augmentation and the same seed: (a) a linear probe (`--lr 0`: the backbone frozen,
only the new head learns) and (b) the whole network fine-tuned (`--lr 1e-4`, L2-SP). Each
output's network + head then answers every photo of the held-out source (the pipeline's
`decode_views`, 8 views for photos larger than the input, logits averaged; argmax over the
classes, "not a fruit" included; no temperature or threshold, so "refused" is the argmax saying
"not a fruit"). Species right: the answer's species (species_table over the merged label maps)
is the photo's; variety right: the answer is one of its `strict` classes; "species, fruit
classes only": the argmax over the fruit classes, "not a fruit" left out (whether the features
tell fruit apart, whatever the refusal prior). Every figure is paired per photo: mean
difference (b) - (a) and its standard error.

This is the network's own head, not the pipeline's classifier on its features: it says whether
the features moved toward fruit across kinds of photo, at a budget a CPU affords (steps x batch
x epochs images, far below the GPU recipe of docs/recognition-study.md).

    nice -n 5 .venv/bin/python bench/finetune_loso.py --held checkout-bags-train \
        --steps 100 --epochs 2 --out /tmp/ftl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from featurize import machine  # CPU model, cores, load average
from loso import DATA, FRUIT_SOURCES, NEG, NEG_SOURCES, ROOT, list_source


def finetune(held: str, out: Path, lr: float, args) -> dict:
    """`fruits finetune` on every source but `held`; its report."""
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    cmd = [str(ROOT / ".venv/bin/fruits"), "finetune", "--input", str(DATA / "fruits-360-dev")]
    for s in FRUIT_SOURCES:
        if s != held:
            cmd += ["--input", str(DATA / s)]
    for s in FRUIT_SOURCES:
        if s != held:
            cmd += ["--label-map", str(DATA / s / "mapping_to_fruits360.json")]
    for s in NEG_SOURCES:
        if s != held:
            cmd += ["--negatives", str(DATA / s)]
    cmd += ["--output", str(out), "--epochs", str(args.epochs), "--steps-per-epoch",
            str(args.steps), "--batch-size", str(args.batch), "--lr", str(lr),
            "--head-lr", str(args.head_lr), "--seed", str(args.seed)]  # fmt: skip
    print(f"# {machine()}\n$ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out / "report.json").read_text())


def answers(out: Path, report: dict, photos: list[str]) -> np.ndarray:
    """(photos, 2): the class index each photo is answered by the output's network + head,
    over every class and over the fruit classes only ("not a fruit" left out)."""
    import torch

    from fruits.engine import normalise
    from fruits.images import decode_views
    from fruits.models import build_torch, get_spec

    spec = get_spec("efficientnet_lite0")
    net = build_torch("efficientnet_lite0", (out / report["weights"]).read_bytes())
    head = np.load(out / report["head"])
    w, b = head["weight"], head["bias"]
    fruit = np.array([c != NEG for c in report["classes"]])
    got = np.empty((len(photos), 2), dtype=int)
    with torch.no_grad():
        for i, p in enumerate(photos):
            views = decode_views(Path(p).read_bytes(), size=224, views=8)
            f = net(torch.from_numpy(normalise(views, spec))).numpy()
            logits = (f @ w.T + b).mean(0)
            got[i] = int(np.argmax(logits)), int(np.argmax(np.where(fruit, logits, -np.inf)))
    return got


def judge(held: str, outs: dict[str, Path]) -> str:
    from fruits.recognition import load_label_map, species_table

    lm = load_label_map([str(DATA / s / "mapping_to_fruits360.json") for s in FRUIT_SOURCES])
    listed = list_source(held)  # loso's photos of the source: the same ones its tables judge
    photos, folders = [p for p, _ in listed], [f for _, f in listed]
    negative = held in NEG_SOURCES
    rows = {}
    for name, out in outs.items():
        report = json.loads((out / "report.json").read_text())
        classes = report["classes"]
        species = species_table(classes, lm)
        t0 = time.perf_counter()
        both = answers(out, report, photos)
        got = [classes[k] for k in both[:, 0]]
        fruit_only = [classes[k] for k in both[:, 1]]
        refused = np.array([g == NEG for g in got], float)
        if negative:
            rows[name] = {"refused": refused}
        else:
            truth_sp = [{species_table([c], lm)[c] for c in lm.lenient.get(f, ())} for f in folders]
            sp = np.array([species[g] in t for g, t in zip(got, truth_sp, strict=True)], float)
            var_ok = [(g in lm.strict.get(f, ())) for g, f in zip(got, folders, strict=True)]
            has_var = np.array([bool(lm.strict.get(f)) for f in folders])
            sp_fruit = [species[g] in t for g, t in zip(fruit_only, truth_sp, strict=True)]
            rows[name] = {
                "species": sp,
                "species, fruit classes only": np.array(sp_fruit, float),
                "variety": np.array(var_ok, float)[has_var],
                "refused": refused,
            }
        print(f"# judged {name} on {len(photos)} photos in {time.perf_counter() - t0:.0f} s")
    a, b = (rows[k] for k in outs)
    lines = [
        f"held out: {held} ({len(photos)} photos); {machine()}",
        "",
        "| metric | (a) linear probe | (b) fine-tuned | (b) - (a), paired |",
        "|---|---:|---:|---:|",
    ]
    for m in a:
        if not len(a[m]):  # no photo of this source has a known variety
            continue
        d = b[m] - a[m]
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        lines.append(
            f"| {m} | {100 * a[m].mean():.1f} % | {100 * b[m].mean():.1f} % | "
            f"{100 * d.mean():+.1f} +- {100 * se:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held", required=True, choices=FRUIT_SOURCES + NEG_SOURCES)
    ap.add_argument("--out", default="/tmp/ftl")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = Path(args.out) / f"{args.held}-s{args.steps}x{args.epochs}"
    outs = {"probe": base / "probe", "finetuned": base / f"lr{args.lr:g}"}
    finetune(args.held, outs["probe"], 0.0, args)
    finetune(args.held, outs["finetuned"], args.lr, args)
    print(judge(args.held, outs))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
