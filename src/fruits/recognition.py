"""What a person with a phone needs from the classifier's probabilities: the species first, the
variety when the model is sure of it, and an honest "not sure" below a calibrated threshold.

Plain numpy, used by the pipeline (calibration on the run's validation split, metrics per
source in report.json), by `fruits evaluate` and by the API, so all three answer alike.

- Calibration: one temperature T fitted on validation logits (Guo et al., 2017); a softmax over
  known classes is always confident, T makes its probabilities mean what they say (ECE, 15 bins).
- Species: the sum of the calibrated probabilities of every class of that species
  ("Apple Red 1" + "Apple Golden 2" + ... = Apple); species come from the label map's
  `coarse_class` where it names the class, else from the facts table.
- Refusal: the answer is `unsure` when the best species is below the threshold or is the
  negatives' class (`NEGATIVE`), trained from photos that are none of the fruits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

NEGATIVE = "not a fruit"  # the class of `--negatives` images
ECE_BINS = 15
MAX_REFUSED_POSITIVES = 0.05  # threshold: refuse at most 5% of the validation fruit photos
THRESHOLD_RANGE = (0.25, 0.9)


class LabelMapError(ValueError):
    """A label map that cannot be used: reported in one line before anything is written."""


@dataclass(frozen=True)
class LabelMap:
    """Folder label -> the class its images train, and what counts as right when scoring.

    Accepts `{folder: "Class"}` or the shared format `{folder: {coarse_class, strict: [...],
    lenient: [...]}}` (`mapping_to_fruits360.json`): a photo trains the first `strict` class
    (same variety) or, where the variety does not exist, the first `lenient` one (same species).
    """

    target: dict[str, str]
    strict: dict[str, tuple[str, ...]] = field(default_factory=dict)
    lenient: dict[str, tuple[str, ...]] = field(default_factory=dict)
    coarse: dict[str, str] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> LabelMap:
        return cls(target={})

    def species_of(self) -> dict[str, str]:
        """Class -> species, from each entry's `coarse_class` over its `lenient` classes."""
        out: dict[str, str] = {}
        for folder, species in self.coarse.items():
            for name in self.lenient.get(folder, ()):
                out.setdefault(name, species)
        return out

    def names(self) -> set[str]:
        """Every class name the map refers to."""
        found = set(self.target.values())
        for names in (*self.strict.values(), *self.lenient.values()):
            found.update(names)
        return found


def label_map_paths(value: str | Path | Sequence[str | Path] | None) -> list[str]:
    """`--label-map` as a list of files: it may be given once (a str) or several times."""
    if not value:
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    return [str(v) for v in value]


def load_label_map(
    path: str | Path | Sequence[str | Path] | None, known: set[str] | None = None
) -> LabelMap:
    """Read and check a label map, or several merged (`--label-map` repeated: one per source,
    as the shared data sets ship them); a folder two maps send to different classes is a
    one-line error naming both files. `known`: the class names a target may use (None: any)."""
    paths = label_map_paths(path)
    if not paths:
        return LabelMap.empty()
    if len(paths) > 1:
        return _merge([(p, load_label_map(p, known)) for p in paths])
    path = paths[0]
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelMapError(f"--label-map {path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise LabelMapError(f"--label-map {path}: not readable JSON ({exc})") from None
    except RecursionError:  # e.g. [[[[...]]]] nested deeper than Python's parser goes
        raise LabelMapError(f"--label-map {path}: JSON nested too deeply to be a map") from None
    if not isinstance(raw, dict) or not raw:
        raise LabelMapError(f"--label-map {path}: expected a JSON object folder -> class")
    target: dict[str, str] = {}
    strict: dict[str, tuple[str, ...]] = {}
    lenient: dict[str, tuple[str, ...]] = {}
    coarse: dict[str, str] = {}
    for folder, entry in raw.items():
        where = f"--label-map {path}: entry {folder[:80]!r}"
        if not folder.strip():
            raise LabelMapError(f"{where}: an empty folder name")
        if isinstance(entry, str):
            if not entry.strip():
                raise LabelMapError(f"{where}: an empty class name")
            target[folder] = entry
            strict[folder] = lenient[folder] = (entry,)
            continue
        if not isinstance(entry, dict):
            raise LabelMapError(f"{where} is neither a name nor {{}}")
        _check_entry(where, entry)
        s = tuple(entry.get("strict") or ())
        le = tuple(entry.get("lenient") or ()) or s
        if not le:
            raise LabelMapError(f"{where} names no class")
        target[folder] = (s or le)[0]
        strict[folder], lenient[folder] = s, le
        if entry.get("coarse_class"):
            coarse[folder] = entry["coarse_class"]
    mapping = LabelMap(target, strict, lenient, coarse)
    if known is not None:
        unknown = sorted(mapping.names() - known)
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise LabelMapError(
                f"--label-map {path}: {len(unknown)} unknown class name(s): {shown}{more}"
                " (not a class of the training data nor of the facts table)"
            )
    return mapping


def _merge(maps: list[tuple[str, LabelMap]]) -> LabelMap:
    """One map from several; the same folder may appear in two maps only with the same entry."""
    merged = LabelMap(target={}, strict={}, lenient={}, coarse={})
    origin: dict[str, str] = {}
    for path, m in maps:
        for folder in m.target:
            entry = (m.target[folder], m.strict.get(folder), m.lenient.get(folder),
                     m.coarse.get(folder))  # fmt: skip
            if folder in origin:
                seen = (merged.target[folder], merged.strict.get(folder),
                        merged.lenient.get(folder), merged.coarse.get(folder))  # fmt: skip
                if seen != entry:
                    raise LabelMapError(
                        f"--label-map: folder {folder[:80]!r} is mapped differently by "
                        f"{origin[folder]} and {path}"
                    )
                continue
            origin[folder] = path
            merged.target[folder] = m.target[folder]
            for part in ("strict", "lenient", "coarse"):
                if folder in getattr(m, part):
                    getattr(merged, part)[folder] = getattr(m, part)[folder]
    return merged


def _check_entry(where: str, entry: dict[str, Any]) -> None:
    """The shape of a `{coarse_class, strict, lenient}` entry, in plain Python before any Spark:
    a string where a list belongs would be read letter by letter as class names. Other keys
    (the shared maps' `n_images`) are left alone."""
    for key in ("strict", "lenient"):
        value = entry.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(x, str) and x.strip() for x in value):
            raise LabelMapError(
                f"{where}: {key!r} must be a list of class names, got {_shape(value)}"
            )
    coarse = entry.get("coarse_class")
    if coarse is not None and not isinstance(coarse, str):
        raise LabelMapError(f"{where}: 'coarse_class' must be a name, got {_shape(coarse)}")


def _shape(value: Any) -> str:
    """What a value is, in a few words and without `repr` (a deeply nested list would recurse)."""
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        kinds = sorted({type(x).__name__ for x in value})
        return f"a list of {', '.join(kinds) or 'nothing'}"
    return f"a {type(value).__name__}"


def species_table(classes: Sequence[str], label_map: LabelMap | None = None) -> dict[str, str]:
    """Species of every class: label map first, then the facts table, then the first word."""
    from fruits.facts import facts_for

    mapped = label_map.species_of() if label_map else {}
    out = {}
    for name in classes:
        if name == NEGATIVE:
            out[name] = NEGATIVE
        elif name in mapped:
            out[name] = mapped[name]
        else:
            facts = facts_for(name)
            out[name] = facts.name if facts else (name.split() or [name])[0]
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return cast(np.ndarray, e / e.sum(axis=1, keepdims=True))  # numpy: Any


def fit_temperature(logits: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The T >= 1 minimising the (weighted) validation negative log-likelihood (golden-section
    search on log T; the NLL is convex in 1/T). Weights let every source count equally, so
    thousands of easy studio frames do not outvote a few hundred phone photos."""
    return fit_temperature_groups([(logits, y, weights)])


def fit_temperature_groups(
    groups: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
) -> float:
    """`fit_temperature` over several (logits, y, weights) groups whose logits may have
    different class sets: the held-out-source calibration, where each source was scored by a
    classifier fitted without it. Weights are normalised over all groups together."""
    parts = []
    for logits, y, weights in groups:
        y = np.asarray(y, dtype=np.int64)
        if len(y) == 0:
            continue
        w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
        parts.append((np.asarray(logits, dtype=np.float64), y, w))
    if not parts:
        return 1.0
    total = sum(float(w.sum()) for _, _, w in parts)

    def nll(log_t: float) -> float:
        out = 0.0
        for logits, y, w in parts:
            p = softmax(logits, math.exp(log_t))[np.arange(len(y)), y]
            out -= float((w / total * np.log(np.clip(p, 1e-300, None))).sum())
        return out

    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    # Never sharpen: on an easy validation split (studio frames) the fit drives T below 1 and
    # the softmax, already over-confident on photos unlike the training data, would be more so.
    return round(max(1.0, math.exp((lo + hi) / 2)), 6)


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| per confidence bin, weighted."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(total)


@dataclass(frozen=True)
class Answers:
    """Per photo: the best class, its species, the species' probability, the verdict."""

    label: list[str]
    species: list[str]
    species_probability: np.ndarray
    known: np.ndarray  # bool: answered with a species (False: "not sure")
    top5_species: list[list[str]]

    def subset(self, sel: Sequence[int]) -> Answers:
        """The answers of rows `sel` (one source's photos, for per-source figures)."""
        rows = list(sel)
        return Answers(
            [self.label[i] for i in rows],
            [self.species[i] for i in rows],
            self.species_probability[rows],
            self.known[rows],
            [self.top5_species[i] for i in rows],
        )


def answer(
    probs: np.ndarray, classes: Sequence[str], species_of: dict[str, str], threshold: float
) -> Answers:
    """Species-level answers from calibrated class probabilities (N, C)."""
    probs = np.asarray(probs, dtype=np.float64)[:, : len(classes)]
    names = sorted(set(species_of[c] for c in classes))
    col = {s: i for i, s in enumerate(names)}
    member = np.zeros((len(classes), len(names)))
    for i, c in enumerate(classes):
        member[i, col[species_of[c]]] = 1.0
    sp = probs @ member  # (N, S) probability of each species
    order = np.argsort(-sp, axis=1)
    best = order[:, 0] if len(names) else np.zeros(len(probs), dtype=int)
    species = [names[j] for j in best]
    sp_best = sp[np.arange(len(sp)), best]
    # the best class *within* the best species: the variety shown when it is sure enough
    within = np.where(member[:, best].T > 0, probs, -1.0)
    label = [classes[j] for j in within.argmax(axis=1)]
    known = (sp_best >= threshold) & np.array([s != NEGATIVE for s in species], dtype=bool)
    top5 = [[names[j] for j in row[:5]] for row in order]
    return Answers(label, species, sp_best, known, top5)


def choose_threshold(
    species_probability: np.ndarray, positive: np.ndarray, groups: np.ndarray | None = None
) -> float:
    """The highest threshold that refuses at most 5% of the validation fruit photos of every
    source (`groups`): the lowest of the per-source 5th percentiles, so phone photos are not
    held to the confidence of studio frames."""
    p = np.asarray(species_probability, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    g = np.zeros(len(p), dtype=np.int64) if groups is None else np.asarray(groups)
    levels = [
        np.quantile(p[pos & (g == k)], MAX_REFUSED_POSITIVES)
        for k in np.unique(g[pos])
        if (pos & (g == k)).any()
    ]
    if not levels:
        return 0.5
    # bounded: a tiny or perfect validation split would otherwise ask for certainty (1.0)
    return float(round(np.clip(min(levels), *THRESHOLD_RANGE), 6))


def metrics(
    ans: Answers,
    variety_ok: Sequence[set[str]],
    species_ok: Sequence[set[str]],
    negative: Sequence[bool],
    species_of: dict[str, str],
) -> dict[str, Any]:
    """The figures `fruits evaluate` prints and report.json keeps, per source.

    `variety_ok[i]`/`species_ok[i]`: the classes that count as right for photo i at variety
    and species level (empty variety set: no such variety exists, scored at species only).
    """
    neg = np.asarray(negative, dtype=bool)
    pos = ~neg
    n_pos = int(pos.sum())
    truth_species = [{species_of.get(c) for c in ok} for ok in species_ok]
    sp_right = pos & np.array(
        [species_of.get(lab) in ok for lab, ok in zip(ans.label, truth_species, strict=True)],
        dtype=bool,
    ).reshape(-1)
    var_rows = pos & np.array([bool(v) for v in variety_ok], dtype=bool).reshape(-1)
    var_right = np.array(
        [lab in ok for lab, ok in zip(ans.label, variety_ok, strict=True)], dtype=bool
    ).reshape(-1)
    top5_right = np.array(
        [bool(ok & set(t5)) for ok, t5 in zip(truth_species, ans.top5_species, strict=True)],
        dtype=bool,
    ).reshape(-1)

    def rate(mask: np.ndarray, of: np.ndarray) -> float | None:
        return round(float(mask[of].mean()), 4) if of.any() else None

    recall: dict[str, list[int]] = {}
    pairs: dict[tuple[str, str], int] = {}
    for i in np.flatnonzero(pos):
        truth = sorted(species_ok[int(i)])[0] if species_ok[int(i)] else "?"
        key = species_of.get(truth, truth)
        hit = recall.setdefault(key, [0, 0])
        hit[1] += 1
        hit[0] += int(sp_right[i])
        if not sp_right[i]:
            pairs[(key, ans.species[i])] = pairs.get((key, ans.species[i]), 0) + 1
    confused = sorted(pairs.items(), key=lambda kv: -kv[1])[:20]
    return {
        "photos": len(ans.label),
        "positives": n_pos,
        "negatives": int(neg.sum()),
        "species_top1": rate(sp_right, pos),
        "variety_top1": rate(var_right, var_rows),
        "species_top5": rate(top5_right, pos),
        "refused_negatives": rate(~ans.known, neg),
        "refused_positives": rate(~ans.known, pos),
        "species_top1_when_answered": rate(sp_right, pos & ans.known),
        "ece": round(ece(ans.species_probability[pos], sp_right[pos]), 4) if n_pos else None,
        "per_species_recall": {k: round(v[0] / v[1], 4) for k, v in sorted(recall.items())},
        "most_confused": [{"true": a, "predicted": b, "count": n} for (a, b), n in confused],
    }
