"""Study (issue 21, lever 5): "not a fruit" learnt as several classes, left one source out.

Today every no-fruit photo (packaged goods, orchard leaves, everyday scenes, the pipeline's
backgrounds alone) trains one class. Here each negatives source, and the backgrounds alone,
is its own class; at prediction their logits merge into one "not a fruit" logit (log-sum-exp)
before the temperature, so the answer, the calibration and the scoring are the adopted config's
(bench/loso.py, "raw 1280 + pipeline aug, clean"). Results and answers as loso-negc-*.json
(every feature cache linked from the bundled graph's), then paired photo by photo:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/negatives_study.py
    .venv/bin/python bench/loso.py paired --tag negc --config "raw 1280 + pipeline aug, clean"

Result in docs/recognition-study.md ("Several no-fruit classes"): not adopted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loso
import numpy as np

TAG = "negc"
CONFIG = "raw 1280 + pipeline aug, clean"


class SplitNegatives(loso.Data):
    """Training rows of no-fruit photos labelled by where they come from."""

    def rows(self, name: str, train: bool) -> Any:
        x, y, truth = super().rows(name, train)
        if train and name in loso.NEG_SOURCES:
            y = [f"{loso.NEG}|{name}"] * len(y)
        return x, y, truth

    def pipeline_rows(self, without: str | None = None) -> Any:
        x, y, truth = super().pipeline_rows(without)
        return x, [f"{loso.NEG}|background" if v == loso.NEG else v for v in y], truth


class MergedNegatives(loso.Model):
    """The model with its no-fruit classes' logits merged into one "not a fruit" column."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        raw = list(self.classes)
        self.neg_cols = [i for i, c in enumerate(raw) if c.startswith(loso.NEG)]
        self.keep_cols = [i for i, c in enumerate(raw) if not c.startswith(loso.NEG)]
        self.classes = [raw[i] for i in self.keep_cols] + [loso.NEG]

    def logits(self, X: np.ndarray) -> np.ndarray:  # noqa: N803 (loso's name)
        z = super().logits(X)
        neg = z[:, self.neg_cols]
        top = neg.max(1, keepdims=True)
        merged = top + np.log(np.exp(neg - top).sum(1, keepdims=True))
        return np.hstack([z[:, self.keep_cols], merged])


def main() -> None:
    loso.PREFIX = f"loso-{TAG}-"
    loso.link_caches(TAG)
    loso.Model = MergedNegatives  # run_config builds loso.Model
    answers: dict[str, Any] = {}
    res = loso.run_config(
        SplitNegatives(),
        **loso.CONFIGS[CONFIG],
        log=lambda s: print(s, file=sys.stderr),
        answers=answers,
    )
    (loso.CACHE / f"loso-{TAG}-results.json").write_text(json.dumps({CONFIG: res}))
    (loso.CACHE / f"loso-{TAG}-answers.json").write_text(json.dumps({CONFIG: answers}))
    keys = ("species_top1", "variety_top1", "refused_positives", "refused_negatives", "ece")
    for h, m in res.items():
        print(h, {k: m.get(k) for k in keys})


if __name__ == "__main__":
    main()
