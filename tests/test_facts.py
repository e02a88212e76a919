"""Every Fruits-360 class must have facts, so the app never shows an empty card."""

from __future__ import annotations

import json
from importlib import resources

from fruits.facts import BIODIVERSITY_FIELDS, FruitFacts, facts_for, load_facts

# Fruits-360 2024.08.04.0 Training folders, hard-coded so the test needs no data set.
CLASS_NAMES = [
    "Apple 6",
    "Apple Braeburn 1",
    "Apple Crimson Snow 1",
    "Apple Golden 1",
    "Apple Golden 2",
    "Apple Golden 3",
    "Apple Granny Smith 1",
    "Apple Pink Lady 1",
    "Apple Red 1",
    "Apple Red 2",
    "Apple Red 3",
    "Apple Red Delicious 1",
    "Apple Red Yellow 1",
    "Apple Red Yellow 2",
    "Apple hit 1",
    "Apricot 1",
    "Avocado 1",
    "Avocado ripe 1",
    "Banana 1",
    "Banana Lady Finger 1",
    "Banana Red 1",
    "Beetroot 1",
    "Blueberry 1",
    "Cabbage white 1",
    "Cactus fruit 1",
    "Cantaloupe 1",
    "Cantaloupe 2",
    "Carambula 1",
    "Carrot 1",
    "Cauliflower 1",
    "Cherry 1",
    "Cherry 2",
    "Cherry Rainier 1",
    "Cherry Wax Black 1",
    "Cherry Wax Red 1",
    "Cherry Wax Yellow 1",
    "Chestnut 1",
    "Clementine 1",
    "Cocos 1",
    "Corn 1",
    "Corn Husk 1",
    "Cucumber 1",
    "Cucumber 3",
    "Cucumber Ripe 1",
    "Cucumber Ripe 2",
    "Dates 1",
    "Eggplant 1",
    "Eggplant long 1",
    "Fig 1",
    "Ginger Root 1",
    "Granadilla 1",
    "Grape Blue 1",
    "Grape Pink 1",
    "Grape White 1",
    "Grape White 2",
    "Grape White 3",
    "Grape White 4",
    "Grapefruit Pink 1",
    "Grapefruit White 1",
    "Guava 1",
    "Hazelnut 1",
    "Huckleberry 1",
    "Kaki 1",
    "Kiwi 1",
    "Kohlrabi 1",
    "Kumquats 1",
    "Lemon 1",
    "Lemon Meyer 1",
    "Limes 1",
    "Lychee 1",
    "Mandarine 1",
    "Mango 1",
    "Mango Red 1",
    "Mangostan 1",
    "Maracuja 1",
    "Melon Piel de Sapo 1",
    "Mulberry 1",
    "Nectarine 1",
    "Nectarine Flat 1",
    "Nut Forest 1",
    "Nut Pecan 1",
    "Onion Red 1",
    "Onion Red Peeled 1",
    "Onion White 1",
    "Orange 1",
    "Papaya 1",
    "Passion Fruit 1",
    "Peach 1",
    "Peach 2",
    "Peach Flat 1",
    "Pear 1",
    "Pear 2",
    "Pear 3",
    "Pear Abate 1",
    "Pear Forelle 1",
    "Pear Kaiser 1",
    "Pear Monster 1",
    "Pear Red 1",
    "Pear Stone 1",
    "Pear Williams 1",
    "Pepino 1",
    "Pepper Green 1",
    "Pepper Orange 1",
    "Pepper Red 1",
    "Pepper Yellow 1",
    "Physalis 1",
    "Physalis with Husk 1",
    "Pineapple 1",
    "Pineapple Mini 1",
    "Pitahaya Red 1",
    "Plum 1",
    "Plum 2",
    "Plum 3",
    "Pomegranate 1",
    "Pomelo Sweetie 1",
    "Potato Red 1",
    "Potato Red Washed 1",
    "Potato Sweet 1",
    "Potato White 1",
    "Quince 1",
    "Rambutan 1",
    "Raspberry 1",
    "Redcurrant 1",
    "Salak 1",
    "Strawberry 1",
    "Strawberry Wedge 1",
    "Tamarillo 1",
    "Tangelo 1",
    "Tomato 1",
    "Tomato 2",
    "Tomato 3",
    "Tomato 4",
    "Tomato Cherry Red 1",
    "Tomato Heart 1",
    "Tomato Maroon 1",
    "Tomato Yellow 1",
    "Tomato not Ripened 1",
    "Walnut 1",
    "Watermelon 1",
    "Zucchini 1",
    "Zucchini dark 1",
]


def test_class_list_is_complete() -> None:
    assert len(CLASS_NAMES) == 141
    assert len(set(CLASS_NAMES)) == 141


def test_json_classes_match_class_list() -> None:
    text = (
        resources.files("fruits").joinpath("data").joinpath("fruit_facts.json").read_text("utf-8")
    )
    raw = json.loads(text)
    assert sorted(raw["classes"]) == sorted(CLASS_NAMES)
    assert {c["fruit"] for c in raw["classes"].values()} <= set(raw["fruits"])
    assert sorted(load_facts()) == sorted(CLASS_NAMES)


def _problems(class_name: str) -> list[str]:
    facts = facts_for(class_name)
    if not isinstance(facts, FruitFacts):
        return ["no facts"]
    problems = []
    if facts.class_name != class_name:
        problems.append(f"class_name {facts.class_name!r}")
    for field in ("fruit", "name", "family", "season", "description"):
        value = getattr(facts, field)
        if not (isinstance(value, str) and value.strip()):
            problems.append(f"empty {field}")
    if facts.variety is not None and not facts.variety.strip():
        problems.append("blank variety")
    if not facts.family.endswith("aceae"):
        problems.append(f"family {facts.family!r} is no plant family")
    kcal = facts.energy_kcal_per_100g
    if not (isinstance(kcal, int) and 0 < kcal < 800):
        problems.append(f"energy {kcal!r}")
    return problems


def test_every_class_has_facts() -> None:
    """One test over the 141 classes (not 141 instances of it): a failure lists every class
    that would show the app an empty or nonsense card."""
    bad = {name: p for name in CLASS_NAMES if (p := _problems(name))}
    assert not bad, bad


def test_known_class() -> None:
    facts = facts_for("Banana 1")
    assert facts is not None
    assert facts.name == "Banana"


def test_variety_from_class_name() -> None:
    facts = facts_for("Apple Granny Smith 1")
    assert facts is not None
    assert facts.variety == "Granny Smith"


def test_unknown_class_returns_none() -> None:
    assert facts_for("Spaceship 1") is None
    assert facts_for("") is None


def test_new_index_of_known_class_resolves() -> None:
    facts = facts_for("Banana 7")
    assert facts is not None
    assert facts.name == "Banana"
    assert facts.class_name == "Banana 7"


def test_unknown_variety_resolves_by_first_word() -> None:
    facts = facts_for("kiwi gold 1")
    assert facts is not None
    assert facts.fruit == "kiwi"
    assert facts.variety is None


# -- biodiversity facts with their sources (issue 22 item 4) ----------------------------------

_FRUIT_KEYS = {
    "name",
    "family",
    "season",
    "description",
    "energy_kcal_per_100g",
    *BIODIVERSITY_FIELDS,
    "sources",
    "varieties",
}


def _raw() -> dict:
    text = (
        resources.files("fruits").joinpath("data").joinpath("fruit_facts.json").read_text("utf-8")
    )
    return json.loads(text)


def _bad_sources(sources) -> list[str]:
    if not sources:
        return ["no sources"]
    return [
        f"source {s!r}"
        for s in sources
        if not (s.title.strip() and s.url.startswith("https://") and " " not in s.url)
    ]


def test_every_species_the_model_answers_has_facts_with_sources() -> None:
    """Every class -> its species carries sources (https pages) and at least its origin (the
    other biodiversity lines only where a source states them); a failure lists every class
    whose card would show unsourced facts."""
    bad = {}
    for name in CLASS_NAMES:
        facts = facts_for(name)
        assert facts is not None, name
        problems = _bad_sources(facts.sources)
        if not facts.origin:  # every species' sources say at least where it comes from
            problems.append("no origin")
        if facts.variety_note and (facts.variety is None or _bad_sources(facts.variety_sources)):
            problems.append("variety note without a variety or its sources")
        if problems:
            bad[name] = problems
    assert not bad, bad


def test_the_table_has_no_unknown_fields() -> None:
    """A misspelt field ("season_eu") would be silently dropped by the loader: the card would
    lose a sourced line nobody sees go."""
    raw = _raw()
    for key, fruit in raw["fruits"].items():
        assert set(fruit) <= _FRUIT_KEYS, (key, set(fruit) - _FRUIT_KEYS)
        for variety, about in fruit.get("varieties", {}).items():
            assert set(about) <= {"note", "sources"}, (key, variety)
            classes = [c for c in raw["classes"].values() if c["fruit"] == key]
            assert any(c.get("variety") == variety for c in classes), (key, variety)


def test_variety_facts_follow_the_class() -> None:
    """A named cultivar's note goes with its class only; an unknown variety falls back to the
    species and must not borrow another cultivar's note."""
    raw = _raw()
    noted = [
        (cls, entry)
        for cls, entry in raw["classes"].items()
        if entry.get("variety") in raw["fruits"][entry["fruit"]].get("varieties", {})
    ]
    assert noted, "no variety has a note"
    for cls, entry in noted:
        facts = facts_for(cls)
        assert facts is not None and facts.variety_note, cls
        expected = raw["fruits"][entry["fruit"]]["varieties"][entry["variety"]]["note"]
        assert facts.variety_note == expected.strip()
    assert facts_for("kiwi gold 1").variety_note is None
    assert facts_for("Banana 7").sources == facts_for("Banana 1").sources


def test_the_answer_card_carries_the_same_sourced_facts() -> None:
    """The API's answer builds its facts through `human_name` (species as a label map spells
    them): those must carry the same sources and variety note as the class table, or the card
    shows biodiversity lines without their sources."""
    from fruits.facts import human_name

    said = human_name("Red-Grapefruit")
    assert said.facts is not None and said.facts.sources == facts_for("Grapefruit Pink 1").sources
    said = human_name("Apple", "Apple Granny Smith 1")
    assert said.facts is not None and said.facts.origin and said.facts.sources
    assert said.facts.variety_note == facts_for("Apple Granny Smith 1").variety_note
    assert said.facts.variety_note and said.facts.variety_sources
