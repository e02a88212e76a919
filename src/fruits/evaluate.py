"""`fruits evaluate`: score a finished run on photos it has never seen, exactly as the app
would answer them (the served `Predictor`: same decoding, CNN, arrays, temperature and
threshold), at species and variety level, with refusals of photos that are not fruit.

Spark-free on purpose: a held-out set is thousands of photos, and what is judged must be the
served path itself, not a re-implementation of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fruits.config import DEFAULT_EXTENSIONS
from fruits.predictor import Predictor
from fruits.recognition import NEGATIVE, answer, load_label_map, metrics, softmax

BATCH = 64


def photos(root: str | Path, extensions: Iterable[str] = DEFAULT_EXTENSIONS) -> list[Path]:
    """Every image file below `root` (any name, sorted), like the pipeline's local listing."""
    exts = tuple("." + e.lower().lstrip(".") for e in extensions)
    found = []
    for folder, _, names in os.walk(root, followlinks=True):
        found += [Path(folder) / n for n in names if n.lower().endswith(exts)]
    return sorted(found)


def evaluate_run(
    run: str | Path,
    inputs: list[str],
    *,
    label_map: str | Sequence[str] | None = None,
    negatives: list[str] | None = None,
    threads: int = 0,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of `recognition.metrics` over every photo of `inputs` (labelled by their folder,
    mapped by `label_map`) and `negatives` (none of the classes), plus unreadable files."""
    for src in [*inputs, *(negatives or [])]:
        if not os.path.isdir(src):
            raise EvaluateError(f"input not found: {src}")
    listed = [(p, False, src) for src in inputs for p in photos(src)]
    listed += [(p, True, src) for src in negatives or [] for p in photos(src)]
    items: list[tuple[Path, bool]] = [(p, neg) for p, neg, _ in listed]
    origin = {str(p): src for p, _, src in listed}
    if not any(not neg for _, neg in items):
        where = ", ".join(map(str, inputs))
        raise EvaluateError(
            f"no images under {where} (extensions: {', '.join(DEFAULT_EXTENSIONS)})"
        )
    predictor = Predictor.load(run, threads=threads)
    classes = predictor.classes
    cal = predictor.calibration
    species = dict(cal.species or {})
    mapping = load_label_map(label_map, known=set(classes) | set(species)) if label_map else None
    probs_rows, kept, unreadable = [], [], []
    for start in range(0, len(items), BATCH):
        chunk = items[start : start + BATCH]
        for (path, neg), row, err in zip(chunk, *_score(predictor, chunk), strict=True):
            if err is None:
                probs_rows.append(row[: len(classes)])
                kept.append((path, neg))
            else:
                unreadable.append({"path": str(path), "reason": err})
    logits = np.log(np.clip(np.asarray(probs_rows).reshape(-1, len(classes)), 1e-300, None))
    said = answer(softmax(logits, cal.temperature), classes, species, cal.threshold)
    variety_ok: list[set[str]] = []
    species_ok: list[set[str]] = []
    for path, neg in kept:
        folder = path.parent.name
        if neg:
            variety_ok.append(set())
            species_ok.append(set())
        elif mapping is not None and folder in mapping.target:
            variety_ok.append(set(mapping.strict[folder]))
            species_ok.append(set(mapping.lenient[folder]))
        else:
            variety_ok.append({folder})
            species_ok.append({folder})
    if mapping is not None:  # truth classes the run never trained still have a species
        for name, kind in mapping.species_of().items():
            species.setdefault(name, kind)
    species.setdefault(NEGATIVE, NEGATIVE)
    for ok in species_ok:
        for name in ok:
            species.setdefault(name, name)
    negative = [n for _, n in kept]
    result = metrics(said, variety_ok, species_ok, negative, species)
    by_source: dict[str, dict[str, Any]] = {}
    for src in [*inputs, *(negatives or [])]:
        sel = [i for i, (path, _) in enumerate(kept) if origin[str(path)] == src]
        if sel:
            by_source[src] = metrics(
                said.subset(sel),
                [variety_ok[i] for i in sel],
                [species_ok[i] for i in sel],
                [negative[i] for i in sel],
                species,
            )
    result["per_source"] = by_source
    result["worst_source"] = _worst(by_source)
    result.update(
        {
            "run": str(run),
            "inputs": inputs,
            "negatives_inputs": negatives or [],
            "label_map": label_map,
            "temperature": cal.temperature,
            "threshold": cal.threshold,
            "unreadable": unreadable,
        }
    )
    if plot:
        plot_species_confusion(result["most_confused"], Path(plot))
        result["plot"] = str(plot)
    return result


def _worst(by_source: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The fruit source with the fewest species right (ties: the most fruit refused): one
    source that fails is a failure, whatever the pooled figure says."""
    fruit = {s: m for s, m in by_source.items() if m["positives"]}
    if not fruit:
        return None
    name = min(
        fruit, key=lambda s: (fruit[s]["species_top1"], -(fruit[s]["refused_positives"] or 0))
    )
    m = fruit[name]
    keys = ("species_top1", "variety_top1", "refused_positives", "ece")
    return {"source": name, **{k: m[k] for k in keys}}


class EvaluateError(ValueError):
    """Nothing to evaluate (a missing folder, no photos): one line and exit 2 for the CLI."""


def _score(predictor: Predictor, chunk: list[tuple[Path, bool]]) -> tuple[list[Any], list[Any]]:
    """Probabilities and error reasons of a batch of files. A file that cannot be read, or a
    batch the predictor raises on, never ends the evaluation: the batch is retried one file at
    a time and each failing file gets its reason (`unreadable` in the result)."""
    contents: list[bytes | None] = []
    reasons: list[str | None] = []
    for path, _ in chunk:
        try:
            contents.append(path.read_bytes())
            reasons.append(None)
        except OSError as exc:
            contents.append(None)
            reasons.append(f"unreadable: {exc.strerror or type(exc).__name__}")
    readable = [c for c in contents if c is not None]
    try:
        probs, errors = predictor.predict_proba(readable) if readable else (np.zeros((0, 0)), [])
        scored = list(zip(probs, errors, strict=True))
    except Exception:  # one bad image must not sink its batch: one at a time
        scored = [_score_one(predictor, c) for c in readable]
    it = iter(scored)
    rows: list[Any] = []
    errs: list[Any] = []
    for content, reason in zip(contents, reasons, strict=True):
        row, err = next(it) if content is not None else (None, reason)
        rows.append(row)
        errs.append(err)
    return rows, errs


def _score_one(predictor: Predictor, content: bytes) -> tuple[Any, str | None]:
    try:
        probs, errors = predictor.predict_proba([content])
        return probs[0], errors[0]
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def plot_species_confusion(pairs: list[dict[str, Any]], path: Path) -> None:
    """The most confused (true species -> answered species) pairs as a bar chart: readable,
    unlike a 141 x 141 matrix."""
    from fruits.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(pairs), 1) + 1.5))
    names = [f"{p['true']} -> {p['predicted']}" for p in pairs][::-1]
    ax.barh(names, [p["count"] for p in pairs][::-1], color="tab:orange")
    ax.set_xlabel("photos")
    ax.set_title("Most confused species pairs (true -> answered)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
