"""The answer a person reads, through the real API (TestClient) with `answer_stub`'s predictor:
confidence in words that match the number, the name once and in everyday words, the facts of
the species named, no percentage beside "not sure" and never "not a fruit" as a guess."""

from __future__ import annotations

import re

import pytest
from answer_stub import CASES, AnswerStub, photo
from fastapi.testclient import TestClient

from fruits.api import ServeSettings, create_app
from fruits.facts import human_name


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(ServeSettings(), predictor=AnswerStub())) as c:  # type: ignore[arg-type]
        yield c


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_kind_of_answer_reads_as_it_should(client, name):
    case = CASES[name]
    resp = client.post("/v1/predict", files={"image": ("p.png", photo(case), "image/png")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    top = body["prediction"]
    assert (body["verdict"], body["confidence"], body["headline"]) == (
        case.verdict,
        case.confidence,
        case.headline,
    )
    assert top["variety"] == case.variety
    assert (top["facts"] or {}).get("name") == case.facts_name
    if top["facts"] is not None:  # the facts are the named species' own (no orange/mandarin mix)
        assert top["facts"]["name"] == top["species"] == top["name"]
    assert [o["species"] for o in body["others"]] == list(case.others)
    assert "not a fruit" not in [o["species"] for o in body["others"]]
    best = max(case.probs)
    assert top["species_probability"] == pytest.approx(best)
    if case.confidence == "not_sure":
        assert "%" not in body["headline"] + body["message"] + body["hint"]
        assert body["message"] == f"{body['headline']}. {body['hint']}"
    else:
        assert body["hint"] is None
        assert body["message"] == f"{case.headline} ({round(100 * best)}% likely)."
    # the Fruits-360 class is still the label, the name of the best class its everyday name
    assert top["label"] == body["top_k"][0]["label"]


def test_a_not_a_fruit_answer_names_no_fruit(client):
    body = client.post(
        "/v1/predict", files={"image": ("p.png", photo(CASES["not_a_fruit"]), "image/png")}
    ).json()
    assert body["hint"] == "It does not look like a fruit or vegetable I know."
    assert body["prediction"]["facts"] is None and body["others"] == []


def test_the_words_follow_the_confidence_bands(client):
    """An independent statement of the bands: >= 0.9 sure, >= 0.6 probably, below perhaps."""
    for name, case in CASES.items():
        if case.verdict != "known":
            continue
        p = max(case.probs)
        want = "sure" if p >= 0.9 else "probably" if p >= 0.6 else "perhaps"
        assert case.confidence == want, name


@pytest.mark.parametrize(
    ("species", "label", "name", "variety"),
    [
        ("Banana", "Banana 1", "Banana", None),
        ("Banana", "Banana Lady Finger 1", "Banana", "Lady Finger"),
        ("Pineapple 1", None, "Pineapple", None),
        ("Red-Grapefruit", None, "Grapefruit", "Red"),
        ("Passion-Fruit", None, "Passion fruit", None),
        ("Maracuja", "Maracuja 1", "Passion fruit", None),
        ("Orange", "Mandarine 1", "Orange", None),
        ("Mandarin", "Mandarine 1", "Mandarin", None),
        ("Apple", "Apple Red 1", "Apple", "Red"),
        ("Kiwi", "Kiwi Gold 1", "Kiwi", "Gold"),  # a class the facts table does not know
        ("Jackfruit", "Jackfruit 2", "Jackfruit", None),  # a fruit it does not know
    ],
)
def test_names_in_everyday_words(species, label, name, variety):
    said = human_name(species, label)
    assert (said.species, said.variety) == (name, variety)
    assert not re.search(r"\d|-|_", said.species + (said.variety or ""))
    if said.facts is not None:
        assert said.facts.name == said.species
