"""Fruit facts shown next to a prediction.

The facts live in ``data/fruit_facts.json`` so they can be corrected without touching code.
They are written from general knowledge and are typical values, not authoritative ones.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources

_DATA_FILE = "fruit_facts.json"
_TRAILING_NUMBER = re.compile(r"\s+\d+$")


@dataclass(frozen=True)
class FruitFacts:
    """Facts for one class; frozen because the cached instances are shared."""

    class_name: str
    fruit: str
    name: str
    variety: str | None
    family: str
    season: str
    description: str
    energy_kcal_per_100g: int


@lru_cache(maxsize=1)
def load_facts() -> dict[str, FruitFacts]:
    """Read the facts once per process; read through importlib so it works from a wheel."""
    text = (
        resources.files("fruits").joinpath("data").joinpath(_DATA_FILE).read_text(encoding="utf-8")
    )
    raw = json.loads(text)
    fruits = raw["fruits"]
    facts: dict[str, FruitFacts] = {}
    for class_name, entry in raw["classes"].items():
        fruit = fruits[entry["fruit"]]  # KeyError: the JSON is inconsistent, fail loudly.
        facts[class_name] = FruitFacts(
            class_name=class_name,
            fruit=entry["fruit"],
            name=fruit["name"],
            variety=entry.get("variety"),
            family=fruit["family"],
            season=fruit["season"],
            description=fruit["description"],
            energy_kcal_per_100g=int(fruit["energy_kcal_per_100g"]),
        )
    return facts


def _base(class_name: str) -> str:
    """Class names differ only by a trailing index ("Apple Red 1", "Apple Red 2")."""
    return _TRAILING_NUMBER.sub("", " ".join(class_name.split())).casefold()


def facts_for(class_name: str) -> FruitFacts | None:
    """Facts for a class, tolerating classes added after the JSON was written.

    A model trained on a newer data set may emit "Banana 7" or "Kiwi Gold 1"; those get the
    facts of the same class without its number, or else of the fruit named by the first word.
    Returns None rather than guessing further.
    """
    facts = load_facts()
    if class_name in facts:
        return facts[class_name]

    base = _base(class_name)
    if not base:
        return None
    for known, known_facts in facts.items():
        if _base(known) == base:
            return replace(known_facts, class_name=class_name)

    first_word = base.split()[0]
    for known_facts in facts.values():
        if first_word in (known_facts.name.casefold(), known_facts.fruit.casefold()):
            return replace(known_facts, class_name=class_name, variety=None)
    return None
