"""Gaps `make mutate` found in the recognition maths (issue 18): every figure of `metrics` on a
case small enough to score by hand, the edges of `ece`, `fit_temperature`, `choose_threshold`
and `answer`, and where species names come from. References are written out here in numpy
or by hand, never the module's own helpers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fruits.recognition import (
    NEGATIVE,
    Answers,
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

SPECIES = {
    "Apple Red 1": "Apple",
    "Apple Golden 1": "Apple",
    "Banana 1": "Banana",
    "Kiwi 1": "Kiwi",
    NEGATIVE: NEGATIVE,
}

# photo: (label, species, probability, answered, top5, variety_ok, species_ok, negative)
APPLES = {"Apple Red 1", "Apple Golden 1"}
PHOTOS = [
    ("Apple Red 1", "Apple", 0.9, True, ["Apple", "Banana"], {"Apple Red 1"}, APPLES, False),
    ("Apple Golden 1", "Apple", 0.6, True, ["Apple", "Kiwi"], {"Apple Red 1"}, APPLES, False),
    ("Banana 1", "Banana", 0.7, True, ["Banana", "Apple"], set(), {"Apple Red 1"}, False),
    ("Banana 1", "Banana", 0.4, False, ["Banana", "Kiwi"], {"Kiwi 1"}, {"Kiwi 1"}, False),
    ("Banana 1", "Banana", 0.3, False, ["Banana"], set(), set(), True),
    ("Kiwi 1", "Kiwi", 0.95, True, ["Kiwi"], {"Kiwi 1"}, {"Kiwi 1"}, False),
    ("Banana 1", "Banana", 0.8, True, ["Banana"], {"Apple Golden 1"}, {"Apple Golden 1"}, False),
    ("Kiwi 1", "Kiwi", 0.5, True, ["Kiwi"], set(), set(), False),  # truth unknown: "?"
    ("Kiwi 1", "Kiwi", 0.0555, True, ["Kiwi"], {"Kiwi 2"}, {"Kiwi 1"}, False),
]


def scored(photos=PHOTOS):
    cols = list(zip(*photos, strict=True))
    ans = Answers(list(cols[0]), list(cols[1]), np.array(cols[2]), np.array(cols[3]), list(cols[4]))
    return ans, list(cols[5]), list(cols[6]), list(cols[7])


def test_metrics_match_a_case_scored_by_hand():
    got = metrics(*scored(), SPECIES)
    assert got == {
        "photos": 9,
        "positives": 8,
        "negatives": 1,
        "species_top1": 0.5,  # photos 0, 1, 5, 8 of 8 positives
        "variety_top1": 0.3333,  # 0, 5 of the 6 positives with a variety (0, 1, 3, 5, 6, 8)
        "species_top5": 0.75,  # all positives but 6 and 7 (no truth)
        "refused_negatives": 1.0,
        "refused_positives": 0.125,  # photo 3
        "species_top1_when_answered": 0.5714,  # 4 of 7 answered positives
        # one photo per 1/15 bin: the mean |correct - confidence| over the 8 positives
        "ece": 0.4868,  # (0.1 + 0.4 + 0.7 + 0.4 + 0.05 + 0.8 + 0.5 + 0.9445) / 8 = 0.4868125
        "per_species_recall": {"?": 0.0, "Apple": 0.5, "Kiwi": 0.6667},
        "most_confused": [
            {"true": "Apple", "predicted": "Banana", "count": 2},
            {"true": "Kiwi", "predicted": "Banana", "count": 1},
            {"true": "?", "predicted": "Kiwi", "count": 1},
        ],
    }


def test_metrics_without_positives_have_no_rates_nor_ece():
    negative = [p for p in PHOTOS if p[7]]
    got = metrics(*scored(negative), SPECIES)
    assert (got["photos"], got["positives"], got["negatives"]) == (1, 0, 1)
    for key in ("species_top1", "variety_top1", "species_top5", "refused_positives", "ece"):
        assert got[key] is None, key
    assert got["refused_negatives"] == 1.0
    assert got["per_species_recall"] == {} and got["most_confused"] == []


def test_metrics_keep_the_twenty_most_confused_pairs():
    species = {f"S{i} 1": f"S{i}" for i in range(30)}
    photos = [
        (f"S{i + 1} 1", f"S{i + 1}", 0.5, True, [f"S{i + 1}"], set(), {f"S{i} 1"}, False)
        for i in range(25)
    ]
    got = metrics(*scored(photos), species)
    assert len(got["most_confused"]) == 20
    assert got["most_confused"][0] == {"true": "S0", "predicted": "S1", "count": 1}


def test_metrics_refuse_top5_lists_of_another_length():
    ans, variety_ok, species_ok, negative = scored()
    short = Answers(
        ans.label, ans.species, ans.species_probability, ans.known, ans.top5_species[:-1]
    )
    with pytest.raises(ValueError):
        metrics(short, variety_ok, species_ok, negative, SPECIES)


def binned_ece(confidence: list[float], correct: list[int], bins: int = 15) -> float:
    """ECE by hand: bin b holds confidences in (b/bins, (b+1)/bins], bin 0 also holds 0."""
    total = 0.0
    n = len(confidence)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(confidence) if (lo < c <= hi) or (b == 0 and c == 0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidence[i] for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - conf)
    return total


def test_ece_puts_a_confidence_on_a_bin_edge_in_the_lower_bin():
    edge = float(np.linspace(0, 1, 16)[1])  # 1/15, exactly as the bins are cut
    confidence, correct = [edge, 0.05], [1, 0]
    want = binned_ece(confidence, correct)
    assert want == pytest.approx(abs(0.5 - (edge + 0.05) / 2))  # both in the first bin
    assert ece(np.array(confidence), np.array(correct)) == pytest.approx(want, abs=1e-12)


def test_ece_of_one_photo_and_of_none():
    assert ece(np.array([0.8]), np.array([1])) == pytest.approx(0.2)
    assert ece(np.array([]), np.array([])) == 0.0


def test_softmax_defaults_to_temperature_one():
    logits = np.array([[1.0, 2.0, 0.5]])
    e = np.exp(logits)
    np.testing.assert_allclose(softmax(logits), e / e.sum(), rtol=1e-12)


def test_temperature_of_no_photo_is_one_and_is_capped_at_twenty():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    # confidently wrong: the likelihood keeps rising with T, the search stops at its bound
    t = fit_temperature(np.array([[8.0, 0.0], [0.0, 8.0]]), np.array([1, 0]))
    assert 19.99 < t <= 20.0


def test_temperature_of_one_photo_is_fitted_from_float_labels():
    # Spark's StringIndexer gives labels as doubles; one photo, a wrong but unsure guess
    logits = np.array([[2.0, 1.0, 0.0]])
    t = fit_temperature(logits, np.array([1.0]))
    grid = np.exp(np.linspace(math.log(0.05), math.log(20.0), 20001))
    z = logits / grid[:, None]
    nll = -(z[:, 1] - np.log(np.exp(z).sum(axis=1)))
    assert t == pytest.approx(max(1.0, grid[np.argmin(nll)]), rel=1e-3)
    assert t > 1.0


def test_temperatures_are_rounded_to_six_digits():
    rng = np.random.default_rng(7)
    fitted = []
    for _ in range(5):  # over-confident guesses, right 7 times in 10: T between 1 and 20
        y = rng.integers(0, 4, size=30)
        guess = np.where(rng.random(30) < 0.7, y, rng.integers(0, 4, size=30))
        logits = np.eye(4)[guess] * 6 + rng.normal(size=(30, 4))
        fitted.append(fit_temperature(logits, y))
    assert all(1.0 < t < 20.0 for t in fitted)
    assert all(t == round(t, 6) for t in fitted)
    assert any(t != round(t, 5) for t in fitted)


def test_threshold_without_fruit_photos_is_one_half():
    assert choose_threshold(np.array([0.9, 0.2]), np.array([False, False])) == 0.5


def test_threshold_stays_within_its_bounds():
    sure = np.full(40, 0.99)
    assert choose_threshold(sure, np.ones(40, dtype=bool)) == 0.9
    unsure = np.full(40, 0.01)
    assert choose_threshold(unsure, np.ones(40, dtype=bool)) == 0.25


def test_threshold_is_the_5th_percentile_rounded_to_six_digits():
    p = np.linspace(0.3, 0.8, 37) + 4e-7
    got = choose_threshold(p, np.ones(37, dtype=bool))
    # numpy's default (linear) quantile by hand: position 0.05 * 36 = 1.8
    want = p[1] + 0.8 * (p[2] - p[1])
    assert got == round(want, 6)
    assert got != want


def test_answer_lists_at_most_five_species():
    classes = [f"S{i} 1" for i in range(7)]
    species = {c: c.split()[0] for c in classes}
    probs = np.array([[0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05]])
    got = answer(probs, classes, species, 0.0)
    assert got.top5_species == [["S0", "S1", "S2", "S3", "S4"]]


def test_species_come_from_the_label_map_then_the_facts_then_the_first_word(tmp_path):
    path = tmp_path / "map.json"
    entry = {"coarse_class": "Pome", "strict": ["Apple Red 1"], "lenient": ["Apple Red 1"]}
    path.write_text(json.dumps({"granny": entry}))
    mapping = load_label_map(path)
    classes = ["Apple Red 1", "Kaki 1", "Xyzzy 2", "Quux", NEGATIVE]
    assert species_table(classes, mapping) == {
        "Apple Red 1": "Pome",  # the map's coarse_class
        "Kaki 1": "Persimmon",  # the facts table's name
        "Xyzzy 2": "Xyzzy",  # first word
        "Quux": "Quux",
        NEGATIVE: NEGATIVE,
    }
    assert species_table(["Apple Red 1"]) == {"Apple Red 1": "Apple"}


def test_a_map_entry_with_strict_only_scores_leniently_by_its_strict_classes(tmp_path):
    path = tmp_path / "map.json"
    both = {"strict": ["Apple Red 1"], "lenient": ["Apple Red 1", "Apple Golden 1"]}
    path.write_text(
        json.dumps(
            {
                "red": {"strict": ["Apple Red 1"], "coarse_class": "Apple"},
                "pear": {"lenient": ["Pear 1", "Pear 2"], "coarse_class": "Pear"},
                "both": both,
                "plain": "Kiwi 1",
            }
        )
    )
    m = load_label_map(path)
    assert m.target == {
        "red": "Apple Red 1",
        "pear": "Pear 1",
        "both": "Apple Red 1",
        "plain": "Kiwi 1",
    }
    assert m.lenient["red"] == ("Apple Red 1",)
    assert m.lenient["both"] == ("Apple Red 1", "Apple Golden 1")
    assert m.strict["pear"] == ()
    assert m.species_of() == {"Apple Red 1": "Apple", "Pear 1": "Pear", "Pear 2": "Pear"}


def test_a_coarse_class_without_lenient_classes_names_no_species():
    from fruits.recognition import LabelMap

    m = LabelMap(target={"x": "A 1"}, coarse={"x": "A", "y": "B"}, lenient={"x": ("A 1",)})
    assert m.species_of() == {"A 1": "A"}


def test_many_unknown_names_are_listed_five_then_counted(tmp_path):
    path = tmp_path / "map.json"
    names = [f"Nope {i}" for i in range(7)]
    path.write_text(json.dumps({f"f{i}": n for i, n in enumerate(names)}))
    with pytest.raises(LabelMapError) as err:
        load_label_map(path, known=set())
    shown = ", ".join(repr(n) for n in names[:5])
    assert str(err.value) == (
        f"--label-map {path}: 7 unknown class name(s): {shown} and 2 more"
        " (not a class of the training data nor of the facts table)"
    )
    path.write_text(json.dumps({f"f{i}": n for i, n in enumerate(names[:6])}))
    with pytest.raises(LabelMapError, match=r"'Nope 4' and 1 more \(not a class"):
        load_label_map(path, known=set())
    path.write_text(json.dumps({f"f{i}": n for i, n in enumerate(names[:5])}))
    with pytest.raises(LabelMapError) as err:
        load_label_map(path, known=set())
    assert str(err.value).endswith(
        f"{shown} (not a class of the training data nor of the facts table)"
    )


def test_long_folder_names_are_cut_and_bad_json_is_one_line(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"f" * 100: ""}))
    with pytest.raises(LabelMapError) as err:
        load_label_map(path)
    assert str(err.value) == f"--label-map {path}: entry {'f' * 80!r}: an empty class name"
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LabelMapError, match=r"bad.json: not readable JSON \(Expecting"):
        load_label_map(tmp_path / "bad.json")
    path.write_text(json.dumps({" ": "Kiwi 1"}))
    with pytest.raises(LabelMapError, match=r"entry ' ': an empty folder name$"):
        load_label_map(path)


def test_a_long_string_where_a_list_belongs_is_shown_cut_to_forty_characters(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"x": {"strict": "A" * 60}}))
    with pytest.raises(LabelMapError) as err:
        load_label_map(path)
    assert str(err.value).endswith(f"got the string {'A' * 40!r}")
