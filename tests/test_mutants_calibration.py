"""`Calibration` as serving.json stores it (issue 18, mutation testing): older runs without a
`recognition` block serve with T = 1 and never refuse; a stored block is read back as written,
and `serving()` writes exactly what the served model needs."""

from __future__ import annotations

import json

from fruits.calibration import Calibration

CLASSES = ["Apple Red 1", "Kaki 1", "Xyzzy 2"]


def test_an_older_run_serves_with_temperature_one_and_never_refuses():
    for meta in (None, {}):
        cal = Calibration.from_meta(meta, CLASSES)
        assert (cal.temperature, cal.threshold) == (1.0, 0.0)
        assert cal.species == {"Apple Red 1": "Apple", "Kaki 1": "Persimmon", "Xyzzy 2": "Xyzzy"}
        assert cal.metrics == {}


def test_a_stored_block_is_read_back_as_floats_with_its_species():
    species = {"Apple Red 1": "Pome", "Kaki 1": "Kaki", "Xyzzy 2": "Xyzzy"}
    meta = {"temperature": "1.5", "threshold": 0.42, "species": species}
    cal = Calibration.from_meta(meta, CLASSES)
    assert (cal.temperature, cal.threshold, cal.species) == (1.5, 0.42, species)
    assert isinstance(cal.temperature, float)
    partial = Calibration.from_meta({"threshold": 0.3}, CLASSES)
    assert (partial.temperature, partial.threshold) == (1.0, 0.3)
    assert partial.species is not None and partial.species["Kaki 1"] == "Persimmon"


def test_serving_writes_what_from_meta_reads_and_leaves_the_metrics_out():
    species = {"Apple Red 1": "Apple"}
    cal = Calibration(2.5, 0.6, species, metrics={"val": {"ece": 0.1}})
    block = json.loads(json.dumps(cal.serving()))
    assert block == {"temperature": 2.5, "threshold": 0.6, "species": species}
    assert Calibration.from_meta(block, ["Apple Red 1"]) == Calibration(2.5, 0.6, species)
