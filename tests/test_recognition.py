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


# --- against independent references written here (numpy by hand) -------------------------

CLASSES3 = ["Apple Red 1", "Apple Golden 1", "Banana 1"]


def _ref_softmax(logits: np.ndarray, t: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / t
    z = z - z.max(axis=1, keepdims=True)  # exp of huge logits would overflow without this
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_softmax_divides_the_logits_by_the_temperature():
    logits = np.random.default_rng(1).normal(size=(50, 4)) * 3
    for t in (1.0, 2.5, 0.5):
        by_hand = np.exp(logits / t) / np.exp(logits / t).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(softmax(logits, t), by_hand, rtol=1e-12)


def test_softmax_stays_finite_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4 + 1, -1e4 + 2], [800.0, 800.0, 0.0]])
    got = softmax(logits, 1.5)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _ref_softmax(logits, 1.5), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got[2], [0.5, 0.5, 0.0], atol=1e-12)


def test_a_species_probability_equal_to_the_threshold_is_answered():
    species = species_table(CLASSES3)
    said = answer(np.array([[0.6, 0.0, 0.4], [0.3, 0.29, 0.41]]), CLASSES3, species, 0.6)
    assert said.species_probability[0] == 0.6  # exactly: 0.6 + 0.0
    assert list(said.known) == [True, False]  # >= threshold answers; 0.59 is "not sure"


def test_the_variety_shown_is_the_best_of_the_best_species_not_the_best_class():
    species = species_table(CLASSES3)
    # Banana 1 is the single most probable class, but Apple (0.3 + 0.3) is the best species
    said = answer(np.array([[0.3, 0.3, 0.4], [0.25, 0.35, 0.4]]), CLASSES3, species, 0.5)
    assert said.species == ["Apple", "Apple"]
    assert said.label == ["Apple Red 1", "Apple Golden 1"]
    m = metrics(
        said,
        [{"Apple Red 1"}, {"Apple Red 1"}],
        [{"Apple Red 1"}, {"Apple Red 1"}],
        [False, False],
        species,
    )
    assert (m["species_top1"], m["variety_top1"]) == (1.0, 0.5)


def test_ece_matches_binning_by_hand():
    rng = np.random.default_rng(7)
    conf = np.concatenate([rng.uniform(0.0, 1.0, 500), [0.0, 1.0]])
    # right more often than confident in some bins, less in others: binning matters
    correct = rng.uniform(size=len(conf)) < np.clip(conf + 0.4 * np.sin(40 * conf), 0, 1)
    # 15 equal bins, right-closed ((a, b]), 0 in the first: bin = ceil(15 c) - 1
    which = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
    by_hand = sum(
        (which == b).mean() * abs(correct[which == b].mean() - conf[which == b].mean())
        for b in range(15)
        if (which == b).any()
    )
    assert ece(conf, correct) == pytest.approx(by_hand, abs=1e-12)


def test_threshold_is_the_lowest_per_source_level_and_ignores_negatives():
    rng = np.random.default_rng(3)
    studio = rng.uniform(0.7, 1.0, 300)
    phone = rng.uniform(0.3, 0.9, 60)
    negatives = np.full(40, 0.01)  # in the studio group, but no fruit: never refused-counted
    p = np.concatenate([studio, phone, negatives])
    groups = np.array([0] * 300 + [1] * 60 + [0] * 40)
    positive = np.array([True] * 360 + [False] * 40)
    levels = [np.quantile(studio, 0.05), np.quantile(phone, 0.05)]
    assert 0.25 < min(levels) < max(levels) - 0.2 < 0.9  # the sources differ: min matters
    assert choose_threshold(p, positive, groups) == pytest.approx(min(levels), abs=1e-6)


def test_weighted_temperature_matches_a_grid_search():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(600, 4)) * 5
    y = np.where(np.arange(600) < 500, logits.argmax(axis=1), rng.integers(0, 4, 600))
    w = np.where(np.arange(600) < 500, 1 / 500, 1 / 100)  # each source counts equally
    grid = np.exp(np.linspace(0.0, np.log(20.0), 20001))
    nll = [-(w * np.log(_ref_softmax(logits, t)[np.arange(600), y])).sum() for t in grid]
    best = grid[int(np.argmin(nll))]
    assert best > 1.2  # the noisy second source asks for a real temperature
    assert fit_temperature(logits, y, w) == pytest.approx(best, rel=1e-3)
    unweighted = grid[
        int(np.argmin([-np.log(_ref_softmax(logits, t)[np.arange(600), y]).sum() for t in grid]))
    ]
    assert abs(unweighted - best) > 0.05 * best  # the weights change the answer
