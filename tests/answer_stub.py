"""A stand-in `Predictor` whose answer is chosen by the photo's width, so API and browser tests
can see every kind of answer (sure, probably, perhaps, not sure, not a fruit) without a model.
The probabilities and the species answer are written out by hand here, not computed by
`fruits.recognition`, so the API's wording is checked against an independent expectation."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from fruits.calibration import Calibration
from fruits.images import ImageError
from fruits.predictor import Prediction

CLASSES = [
    "Mango 1",
    "Banana Lady Finger 1",
    "Grapefruit Pink 1",
    "Maracuja 1",
    "Mandarine 1",
    "not a fruit",
]
# how a label map's coarse classes spell them (the Fruits-360 mapping file's style)
SPECIES = {
    "Mango 1": "Mango",
    "Banana Lady Finger 1": "Banana",
    "Grapefruit Pink 1": "Red-Grapefruit",
    "Maracuja 1": "Passion-Fruit",
    "Mandarine 1": "Orange",
    "not a fruit": "not a fruit",
}
THRESHOLD = 0.5


@dataclass(frozen=True)
class Case:
    """One kind of answer: the class probabilities (in CLASSES order) and what a person must
    read for it."""

    width: int
    probs: tuple[float, ...]
    verdict: str
    confidence: str
    headline: str
    variety: str | None = None
    facts_name: str | None = None
    others: tuple[str, ...] = field(default_factory=tuple)


CASES = {
    "sure": Case(
        101,
        (0.01, 0.95, 0.02, 0.01, 0.0, 0.01),
        "known",
        "sure",
        "Sure: a banana",
        "Lady Finger",
        "Banana",
        ("Grapefruit", "Mango", "Passion fruit"),
    ),
    "probably": Case(
        102,
        (0.1, 0.05, 0.72, 0.03, 0.05, 0.05),
        "known",
        "probably",
        "Probably a grapefruit",
        "Pink",
        "Grapefruit",
        ("Mango", "Banana", "Orange", "Passion fruit"),
    ),
    "perhaps": Case(
        103,
        (0.3, 0.05, 0.04, 0.55, 0.02, 0.04),
        "known",
        "perhaps",
        "Perhaps a passion fruit",
        None,
        "Passion fruit",
        ("Mango", "Banana", "Grapefruit", "Orange"),
    ),
    "mandarin_as_orange": Case(
        104,
        (0.05, 0.0, 0.05, 0.0, 0.88, 0.02),
        "known",
        "probably",
        "Probably an orange",
        None,
        "Orange",
        ("Mango", "Grapefruit"),
    ),
    "unsure": Case(
        105,
        (0.41, 0.2, 0.19, 0.1, 0.05, 0.05),
        "unsure",
        "not_sure",
        "Not sure what this is",
        None,
        "Mango",
        ("Banana", "Grapefruit", "Passion fruit", "Orange"),
    ),
    "not_a_fruit": Case(
        106,
        (0.005, 0.005, 0.0, 0.0, 0.0, 0.99),
        "unsure",
        "not_sure",
        "Not sure what this is",
        None,
        None,
        (),
    ),
}


def photo(case: Case) -> bytes:
    """A PNG whose width picks `case`."""
    buf = io.BytesIO()
    Image.new("RGB", (case.width, 64), (200, 180, 40)).save(buf, "PNG")
    return buf.getvalue()


def _prediction(case: Case, top_k: int) -> Prediction:
    """By hand: classes best first; the species summed over its classes (one class each here);
    `known` at or over THRESHOLD unless "not a fruit"; the variety's class when >= 0.5."""
    order = sorted(range(len(CLASSES)), key=lambda i: -case.probs[i])
    best = order[0]
    species = SPECIES[CLASSES[best]]
    known = case.probs[best] >= THRESHOLD and species != "not a fruit"
    return Prediction(
        labels=[CLASSES[i] for i in order[:top_k]],
        probabilities=[case.probs[i] for i in order[:top_k]],
        species=species,
        species_probability=case.probs[best],
        verdict="known" if known else "unsure",
        variety=CLASSES[best] if case.probs[best] >= 0.5 else None,
    )


class AnswerStub:
    """What the API reads of a `Predictor`."""

    classes = CLASSES
    calibration = Calibration(temperature=1.0, threshold=THRESHOLD, species=SPECIES)
    image_size = 224
    views = 1
    run_id = "answer-stub"

    def __init__(self) -> None:
        self.backbone: dict[str, Any] = {}

    def predict(self, data: bytes, *, top_k: int = 3, max_pixels: int | None = None) -> Prediction:
        try:
            width = Image.open(io.BytesIO(data)).size[0]
        except Exception:
            raise ImageError("not an image: format not recognised") from None
        case = next((c for c in CASES.values() if c.width == width), CASES["unsure"])
        return _prediction(case, top_k)
