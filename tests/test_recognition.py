"""The answer a person gets: label maps, calibration, species sums and refusals (plain numpy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fruits.recognition import (
    NEGATIVE,
    LabelMapError,
    answer,
    choose_threshold,
    ece,
    fit_temperature,
    load_label_map,
    metrics,
    softmax,
    species_table,
)

SHARED_MAP = (
    Path(__file__).parents[2] / "shared/datasets/grocery-store-train/mapping_to_fruits360.json"
)


def test_the_shared_mapping_is_accepted_as_it_is():
    if not SHARED_MAP.exists():
        pytest.skip("shared datasets absent")
    from fruits.facts import load_facts

    mapping = load_label_map(SHARED_MAP, known=set(load_facts()))
    assert mapping.target["Granny-Smith"] == "Apple Granny Smith 1"
    assert "Apple Red 1" in mapping.lenient["Granny-Smith"]
    assert mapping.species_of()["Apple Red 1"] == "Apple"


def test_unknown_names_in_a_label_map_are_one_line(tmp_path):
    path = tmp_path / "map.json"
    entry = {"coarse_class": "Apple", "strict": ["Apple Grany 1"], "lenient": ["Apple Red 1"]}
    path.write_text(json.dumps({"Granny": entry}))
    with pytest.raises(LabelMapError) as err:
        load_label_map(path, known={"Apple Red 1", "Banana 1"})
    assert "1 unknown class name(s): 'Apple Grany 1'" in str(err.value)
    assert "\n" not in str(err.value)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(LabelMapError, match="expected a JSON object"):
        load_label_map(tmp_path / "bad.json")
    with pytest.raises(LabelMapError, match="file not found"):
        load_label_map(tmp_path / "missing.json")


def test_a_plain_folder_to_class_map_is_accepted(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"granny": "Apple Red 1"}))
    mapping = load_label_map(path, known={"Apple Red 1"})
    assert mapping.target == {"granny": "Apple Red 1"}
    assert mapping.strict["granny"] == ("Apple Red 1",)


def test_temperature_scaling_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 6)) * 4.0
    true_t = 2.5
    p = softmax(logits, true_t)
    y = np.array([rng.choice(6, p=row) for row in p])
    assert fit_temperature(logits, y) == pytest.approx(true_t, rel=0.1)
    # over-confident logits get T > 1, and T never goes below 1
    assert fit_temperature(logits * 0.01, y) == 1.0


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_not():
    conf = np.full(1000, 0.8)
    correct = np.arange(1000) % 5 != 0  # 80% right
    assert ece(conf, correct) == pytest.approx(0.0, abs=1e-9)
    assert ece(np.full(1000, 0.99), correct) == pytest.approx(0.19, abs=1e-6)


def test_species_sum_their_varieties_and_negatives_are_refused():
    classes = ["Apple Red 1", "Apple Golden 1", "Banana 1", NEGATIVE]
    species = species_table(classes)
    assert species["Apple Golden 1"] == "Apple" and species[NEGATIVE] == NEGATIVE
    probs = np.array(
        [
            [0.35, 0.30, 0.35, 0.00],  # Apple 0.65 beats Banana 0.35: the variety is Apple Red
            [0.05, 0.05, 0.10, 0.80],  # a juice carton
            [0.20, 0.20, 0.30, 0.30],  # nothing is sure
        ]
    )
    said = answer(probs, classes, species, threshold=0.5)
    assert said.species == ["Apple", NEGATIVE, "Apple"]
    assert said.label[0] == "Apple Red 1"
    assert said.species_probability[0] == pytest.approx(0.65)
    assert list(said.known) == [True, False, False]


def test_threshold_refuses_at_most_five_percent_of_fruit_photos():
    p = np.linspace(0.3, 1.0, 200)
    t = choose_threshold(p, np.ones(200, dtype=bool))
    assert (p < t).mean() <= 0.05 and 0.3 < t < 0.9


def test_metrics_score_species_variety_top5_and_refusals():
    classes = ["Apple Red 1", "Apple Golden 1", "Banana 1", NEGATIVE]
    species = species_table(classes)
    probs = np.array(
        [[0.9, 0.05, 0.05, 0], [0.1, 0.8, 0.1, 0], [0.1, 0.1, 0.8, 0], [0, 0, 0.1, 0.9]]
    )
    said = answer(probs, classes, species, threshold=0.5)
    m = metrics(
        said,
        [{"Apple Golden 1"}, {"Apple Golden 1"}, set(), set()],
        [{"Apple Red 1", "Apple Golden 1"}, {"Apple Golden 1"}, {"Apple Red 1"}, set()],
        [False, False, False, True],
        species,
    )
    assert m["species_top1"] == pytest.approx(2 / 3, abs=1e-3)  # the banana answer is wrong
    assert m["variety_top1"] == 0.5  # photo 1 is Red, photo 2 Golden; photo 3 has no variety
    assert m["species_top5"] == 1.0
    assert (m["refused_negatives"], m["refused_positives"]) == (1.0, 0.0)
    assert m["most_confused"] == [{"true": "Apple", "predicted": "Banana", "count": 1}]
