"""`recognition.load_label_map` refuses entries of the wrong shape in one line naming the entry,
in plain Python (preflight calls it before Spark starts)."""

from __future__ import annotations

import json

import pytest

from fruits.recognition import LabelMapError, load_label_map

KNOWN = {"Banana 1", "Lemon 1"}


LIST = "must be a list of class names, got"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"strict": "Banana 1"}, rf"'Cavendish': 'strict' {LIST} the string 'Banana 1'"),
        ({"lenient": [["Banana 1"]]}, rf"'Cavendish': 'lenient' {LIST} a list of list"),
        ({"lenient": ["Banana 1", 3]}, rf"'lenient' {LIST} a list of int, str"),
        ({"lenient": ["x"], "coarse_class": {}}, r"'coarse_class' must be a name, got a dict"),
        ({"strict": [], "lenient": []}, r"'Cavendish' names no class"),
        (["Banana 1"], r"'Cavendish' is neither a name nor \{\}"),
        ("", r"'Cavendish': an empty class name"),
    ],
)
def test_a_wrong_entry_is_one_line_naming_it(tmp_path, entry, message):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"Lemon": "Lemon 1", "Cavendish": entry}))
    with pytest.raises(LabelMapError, match=message) as err:
        load_label_map(path, known=KNOWN)
    assert "\n" not in str(err.value)


def test_a_deeply_nested_value_is_one_line_not_a_recursion_error(tmp_path):
    for depth in (900, 100_000):  # below and above what Python's JSON parser accepts
        path = tmp_path / f"deep{depth}.json"
        path.write_text('{"Cavendish": {"coarse_class": ' + "[" * depth + "]" * depth + "}}")
        with pytest.raises(LabelMapError, match=r"Cavendish|nested too deeply"):
            load_label_map(path, known=KNOWN)


def test_the_extra_keys_of_the_shared_maps_are_accepted(tmp_path):
    path = tmp_path / "map.json"
    entry = {"coarse_class": "Banana", "strict": ["Banana 1"], "lenient": [], "n_images": 12}
    path.write_text(json.dumps({"Cavendish": entry}))
    mapping = load_label_map(path, known=KNOWN)
    assert mapping.target == {"Cavendish": "Banana 1"}
    assert mapping.species_of() == {"Banana 1": "Banana"}  # `lenient` empty: strict's
    assert mapping.lenient["Cavendish"] == ("Banana 1",)


def write(path, mapping):
    path.write_text(json.dumps(mapping))
    return path


def test_several_maps_merge_as_the_shared_sources_ship_them(tmp_path):
    a = write(
        tmp_path / "a.json", {"Cavendish": {"coarse_class": "Banana", "strict": ["Banana 1"]}}
    )
    b = write(
        tmp_path / "b.json",
        {"Lime": "Lemon 1", "Cavendish": {"coarse_class": "Banana", "strict": ["Banana 1"]}},
    )
    mapping = load_label_map([a, b], known=KNOWN)
    assert mapping.target == {"Cavendish": "Banana 1", "Lime": "Lemon 1"}
    assert mapping.species_of() == {"Banana 1": "Banana"}
    assert load_label_map([a]) == load_label_map(a)  # one file given as a list: the same map


def test_a_folder_two_maps_send_to_different_classes_is_one_line_naming_both(tmp_path):
    a = write(tmp_path / "a.json", {"Lime": "Lemon 1"})
    b = write(tmp_path / "b.json", {"Lime": "Banana 1"})
    with pytest.raises(
        LabelMapError, match=r"'Lime' is mapped differently by .*a\.json and .*b\.json"
    ):
        load_label_map([a, b], known=KNOWN)


def test_the_cli_takes_label_map_twice_and_refuses_a_conflict_before_spark(tmp_path):
    from typer.testing import CliRunner

    from fruits.cli import app

    (tmp_path / "in" / "Training" / "Lime").mkdir(parents=True)
    a = write(tmp_path / "a.json", {"Lime": "Lemon 1"})
    b = write(tmp_path / "b.json", {"Lime": "Banana 1"})
    args = ["run", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")]
    res = CliRunner().invoke(app, [*args, "--label-map", str(a), "--label-map", str(b)])
    assert res.exit_code == 2
    (line,) = res.stderr.strip().splitlines()
    assert "'Lime' is mapped differently by" in line
    assert not (tmp_path / "o").exists()
