"""Fruit facts shown next to a prediction.

The facts live in ``data/fruit_facts.json`` so they can be corrected without touching code.
Family, season, description and energy are typical values written by the team; the
biodiversity facts (origin, wild relatives, cultivars, pollination, season in Europe, genetic
diversity) each species carries only where its listed ``sources`` state them: a field nobody
could source is left out, never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Any

_DATA_FILE = "fruit_facts.json"
_TRAILING_NUMBER = re.compile(r"\s+\d+$")


@dataclass(frozen=True)
class Source:
    """Where a species' (or a variety's) facts come from: a page a reader can open."""

    title: str
    url: str


BIODIVERSITY_FIELDS = (
    "origin",
    "wild_relatives",
    "cultivars",
    "pollination",
    "season_europe",
    "diversity",
)


@dataclass(frozen=True)
class FruitFacts:
    """Facts for one class; frozen because the cached instances are shared.

    The biodiversity fields are None where no source states them (the app then leaves the line
    out); `sources` is where the species' facts come from, `variety_note` and
    `variety_sources` say the same of the class's variety where it is a named cultivar."""

    class_name: str
    fruit: str
    name: str
    variety: str | None
    family: str
    season: str
    description: str
    energy_kcal_per_100g: int
    origin: str | None = None
    wild_relatives: str | None = None
    cultivars: str | None = None
    pollination: str | None = None
    season_europe: str | None = None
    diversity: str | None = None
    sources: tuple[Source, ...] = ()
    variety_note: str | None = None
    variety_sources: tuple[Source, ...] = ()


def _sources(raw: object) -> tuple[Source, ...]:
    """The JSON's [{"title", "url"}] -> Sources; an entry without both is a broken table."""
    if not isinstance(raw, list):
        return ()
    return tuple(Source(title=str(s["title"]), url=str(s["url"])) for s in raw)


def _text(entry: dict[str, Any], key: str) -> str | None:
    value = entry.get(key)
    return value.strip() or None if isinstance(value, str) else None


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
        facts[class_name] = _facts_of(class_name, entry["fruit"], fruit, entry.get("variety"))
    return facts


def _facts_of(class_name: str, key: str, fruit: dict[str, Any], variety: str | None) -> FruitFacts:
    """One class's facts from its fruit's table entry: the one place a FruitFacts is built,
    for the class table and for species named by a label map alike."""
    about_variety = fruit.get("varieties", {}).get(variety, {}) if variety else {}
    return FruitFacts(
        class_name=class_name,
        fruit=key,
        name=str(fruit["name"]),
        variety=variety,
        family=str(fruit["family"]),
        season=str(fruit["season"]),
        description=str(fruit["description"]),
        energy_kcal_per_100g=int(fruit["energy_kcal_per_100g"]),
        origin=_text(fruit, "origin"),
        wild_relatives=_text(fruit, "wild_relatives"),
        cultivars=_text(fruit, "cultivars"),
        pollination=_text(fruit, "pollination"),
        season_europe=_text(fruit, "season_europe"),
        diversity=_text(fruit, "diversity"),
        sources=_sources(fruit.get("sources")),
        variety_note=_text(about_variety, "note"),
        variety_sources=_sources(about_variety.get("sources")),
    )


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
            return replace(
                known_facts,
                class_name=class_name,
                variety=None,
                variety_note=None,
                variety_sources=(),
            )
    return None


NEGATIVE = "not a fruit"  # recognition.NEGATIVE, repeated to keep this module import-light
_SEPARATORS = re.compile(r"[-_\s]+")


@dataclass(frozen=True)
class HumanName:
    """What a person reads for one answer: the species and variety in everyday words, and the
    facts of that species (never of another: a heading "Orange" over a mandarin's description
    is a contradiction), or None where the table has no such fruit."""

    species: str
    variety: str | None
    facts: FruitFacts | None


@lru_cache(maxsize=1)
def _fruit_table() -> tuple[dict[str, dict[str, object]], dict[str, str]]:
    """The `fruits` entries by key, and every spelling that names one fruit alone (its name,
    its key, the index-less name of each class without a variety: "Maracuja", "Kaki", "Cocos")
    -> its key."""
    text = (
        resources.files("fruits").joinpath("data").joinpath(_DATA_FILE).read_text(encoding="utf-8")
    )
    raw = json.loads(text)
    fruits: dict[str, dict[str, object]] = raw["fruits"]
    spelling: dict[str, str] = {}
    for key, fruit in fruits.items():
        spelling[_plain(key)] = key
        spelling[_plain(str(fruit["name"]))] = key
    for class_name, entry in raw["classes"].items():
        if entry.get("variety") is None:
            spelling.setdefault(_plain(class_name), entry["fruit"])
    return fruits, spelling


def _plain(text: str) -> str:
    """ "Passion-Fruit", "passion_fruit", "Passion Fruit 1" -> "passion fruit"."""
    return _TRAILING_NUMBER.sub("", _SEPARATORS.sub(" ", text).strip()).casefold()


def _sentence(text: str) -> str:
    """Everyday capitals: "PASSION FRUIT" or "Passion Fruit" -> "Passion fruit"."""
    text = text.strip()
    return text[:1].upper() + text[1:].lower() if text else text


def _species_of(raw: str) -> tuple[str | None, str | None]:
    """A species as a data set or label map spells it -> (fruit key, the variety its name
    carries): "Banana" -> banana; "Red-Grapefruit" -> grapefruit, "Red"; "Grapefruit Pink 1"
    -> grapefruit, "Pink"; (None, None) when no fruit of the table is named."""
    facts = load_facts()
    base = _plain(raw)
    _, spelling = _fruit_table()
    if base in spelling:
        return spelling[base], None
    for known in facts.values():  # a class spelled as a species: "Grapefruit Pink"
        if _plain(known.class_name) == base:
            return known.fruit, known.variety
    words = base.split()
    for width in range(len(words) - 1, 0, -1):  # the longest run of words naming one fruit
        for start in range(len(words) - width + 1):
            key = spelling.get(" ".join(words[start : start + width]))
            if key is not None:
                rest = words[:start] + words[start + width :]
                return key, _sentence(" ".join(rest)) or None
    return None, None


def human_name(species: str, label: str | None = None) -> HumanName:
    """The answer `species` (as the run's species table spells it) in everyday words, with the
    variety of `label` (its Fruits-360 class, when the variety is named) where the table knows
    one: "Banana 1" has none (its name is only the species with an index), "Banana Lady Finger
    1" is "Lady Finger". The negatives' class keeps its name and has no facts."""
    if species == NEGATIVE:
        return HumanName(NEGATIVE, None, None)
    key, variety = _species_of(species)
    fruits, _ = _fruit_table()
    if key is None:
        name = _sentence(_SEPARATORS.sub(" ", _TRAILING_NUMBER.sub("", species.strip())))
        return HumanName(name or species, _label_variety(label, name), None)
    fruit = fruits[key]
    name = str(fruit["name"])
    if label is not None:
        known = load_facts().get(label)
        if known is not None:
            variety = (known.variety if known.fruit == key else None) or variety
        else:
            variety = _label_variety(label, name) or variety
    return HumanName(name, variety, _facts_of(label or species, key, fruit, variety))


def _label_variety(label: str | None, species: str) -> str | None:
    """A class the table does not know ("Kiwi Gold 1"): its words beyond the species' ("Gold");
    None when nothing is left ("Banana 7" is the species with an index)."""
    if not label:
        return None
    taken = set(_plain(species).split())
    rest = [w for w in _plain(label).split() if w not in taken]
    return _sentence(" ".join(rest)) or None
