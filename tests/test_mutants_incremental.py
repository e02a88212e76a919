"""The driver-side rules of incremental runs without Spark (issue 18, mutation testing): what a
plan counts, when a run has nothing to do, what report.json says, which previous output is
usable, and when the featurizer changed. The Spark parts (listing, comparison, kept rows) are
tested on real data in tests/test_incremental.py; these run for every `make mutate` mutant."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from fruits.incremental import (
    Delta,
    Increment,
    _classifier,
    _classifier_choice,
    _has_finished_output,
    check_same_featurizer,
    finished,
    read_report,
)
from fruits.sources import Ingested
from fruits.sources.hadoop import escape_glob
from fruits.storage.fsspec import FsspecStore, locate


def plan(**changes: object) -> Increment:
    """An incremental plan with nothing to do, changed by `changes`."""
    fields: dict[str, object] = dict(
        previous_run_id="0123456789ab",
        previous_report={},
        todo=None,
        todo_refused=None,
        kept_features=None,
        kept_quarantine=None,
        new=0,
        changed=0,
        deleted_paths=[],
        deleted=0,
        unchanged=5,
        refit=False,
    )
    fields.update(changes)
    return Increment(**fields)  # type: ignore[arg-type]


def test_a_full_run_is_an_increment_with_an_empty_past():
    full = Increment.full(Ingested(files="FILES", too_large="REFUSED", total=7))  # type: ignore[arg-type]
    assert (full.todo, full.todo_refused) == ("FILES", "REFUSED")
    assert (full.new, full.changed, full.deleted, full.unchanged) == (7, 0, 0, 0)
    assert full.processed == 7
    assert full.kept_features is None and full.kept_quarantine is None
    assert full.previous_run_id is None and full.previous_report == {}
    assert full.deleted_paths == [] and full.refit is False
    assert full.incremental is False
    assert full.nothing_to_do is False  # even with no file: a full run always writes
    assert Increment.full(Ingested(files=None, too_large=None, total=0)).nothing_to_do is False  # type: ignore[arg-type]
    assert full.describe() is None


@pytest.mark.parametrize(
    ("changes", "idle"),
    [
        ({}, True),
        ({"new": 1}, False),
        ({"changed": 1}, False),
        ({"deleted": 1, "deleted_paths": ["a"]}, False),
        ({"refit": True}, False),
        ({"classifier_refit": "refitted: the data's classes changed"}, False),
        ({"incremental": False}, False),
    ],
)
def test_nothing_to_do_only_when_no_file_model_or_class_changed(changes, idle):
    assert plan(**changes).nothing_to_do is idle


def test_processed_counts_new_and_changed_files():
    assert plan(new=3, changed=4, unchanged=9, deleted=2).processed == 7


def test_the_report_says_what_an_incremental_run_did():
    inc = plan(new=2, changed=1, unchanged=4, deleted=3, deleted_paths=["a", "b"])
    assert inc.describe() == {
        "mode": "incremental",
        "previous_run_id": "0123456789ab",
        "processed": 3,
        "new": 2,
        "changed": 1,
        "unchanged": 4,
        "deleted": 3,
        "deleted_policy": "removed from the output and listed here",
        "deleted_paths": ["a", "b"],
        "deleted_paths_truncated": True,
        "refit": False,
        "pca": "reused (no refit)",
        "classifier": "reused (no refit)",
        "compared_by": "path, size, modification time and a listing's own content version"
        " where it gives one",
    }


def test_the_report_of_a_refit_with_content_hashes():
    inc = plan(
        refit=True,
        classifier_refit="refitted (--refit)",
        verify_content=True,
        deleted=2,
        deleted_paths=["a", "b"],
    )
    described = inc.describe()
    assert described is not None
    assert described["deleted_paths_truncated"] is False
    assert described["refit"] is True
    assert described["pca"] == "refitted on every image"
    assert described["classifier"] == "refitted (--refit)"
    assert described["compared_by"] == (
        "path, size, modification time, content hash (every file read) and a listing's own"
        " content version where it gives one"
    )


def test_an_unchanged_run_reports_the_previous_figures_and_publishes_nothing():
    before = {
        "images_ok": 10,
        "images_quarantined": 1,
        "images_by_split": {"train": 8},
        "classes": 2,
        "pca_k": 3,
        "pca_explained_variance": 0.9,
        "accuracy": 0.75,
        "macro_f1": 0.7,
        "stages": {"featurize": 12.0},  # not carried over
    }
    report = plan(previous_report=before).unchanged_report("cafe00000001", 11)
    assert report == {
        "run_id": "cafe00000001",
        "published": False,
        "images_total": 11,
        "images_processed": 0,
        **{k: v for k, v in before.items() if k != "stages"},
        "incremental": plan().describe(),
    }


def test_delta_sorts_paths_by_status_and_by_what_must_be_read():
    delta = Delta({"new": 2, "changed": 1, "deleted": 1})
    delta.add("new", "n1", refused=False)
    delta.add("new", "n2", refused=True)
    delta.add("changed", "c1", refused=False)
    delta.add("deleted", "d1", refused=False)
    delta.add("deleted", "d2", refused=True)
    assert (delta.new, delta.changed, delta.deleted) == (["n1", "n2"], ["c1"], ["d1", "d2"])
    assert delta.todo == ["n1", "c1"]
    assert delta.refused == ["n2"]
    assert (delta.count("new"), delta.count("changed"), delta.count("unchanged")) == (2, 1, 0)


def test_escape_glob_backslashes_every_glob_character():
    assert escape_glob("/d/a*b?c[1]{x,y}\\z.jpg") == "/d/a\\*b\\?c\\[1\\]\\{x,y\\}\\\\z.jpg"
    assert escape_glob("/d/plain name.jpg") == "/d/plain name.jpg"


@pytest.fixture
def store(tmp_path: Path) -> FsspecStore:
    return FsspecStore(locate(str(tmp_path)))


def test_a_previous_output_is_usable_only_with_its_marker_and_its_models(store, tmp_path):
    out = tmp_path / "out"
    assert finished(store, str(out)) is False
    (out / "models" / "scaler_pca").mkdir(parents=True)
    assert finished(store, str(out)) is False  # killed before the marker
    (out / "_SUCCESS.json").write_text("{}")
    assert finished(store, str(out)) is True
    assert _has_finished_output(store, str(out)) is True
    (out / "models" / "scaler_pca").rmdir()
    assert finished(store, str(out)) is False  # an output without models (no Test split)


class Unreadable:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def exists(self, uri: str) -> bool:
        raise self.exc


def test_an_output_the_store_cannot_read_is_one_line():
    trouble = OSError("No FileSystem for scheme: az\n\tat org.apache.hadoop...")
    with pytest.raises(ValueError) as err:
        _has_finished_output(Unreadable(trouble), "az://c/out")  # type: ignore[arg-type]
    assert str(err.value) == (
        "--incremental needs an output Spark's Hadoop connector can read: az://c/out"
        " (No FileSystem for scheme: az)"
    )
    with pytest.raises(ValueError, match=r"can read: az://c/out \(PermissionError\)$"):
        _has_finished_output(Unreadable(PermissionError()), "az://c/out")  # type: ignore[arg-type]


def test_the_previous_report_is_read_through_the_store(store, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text(json.dumps({"run_id": "x", "pca_k": 3}))
    assert read_report(store, str(tmp_path / "out")) == {"run_id": "x", "pca_k": 3}


def test_the_saved_classifier_is_reused_unless_refit_or_absent(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert _classifier(store, str(out)) is None
    keep = SimpleNamespace(refit=False)
    assert _classifier_choice(store, str(out), keep, None) == (None, None, None)  # type: ignore[arg-type]
    (out / "models" / "classifier").mkdir(parents=True)
    assert _classifier(store, str(out)) == f"{out}/models/classifier"
    refit = SimpleNamespace(refit=True)
    assert _classifier_choice(store, str(out), refit, None) == (None, None, "refitted (--refit)")  # type: ignore[arg-type]


def featurizer_cfg(backbone: str, size: int) -> SimpleNamespace:
    return SimpleNamespace(
        featurizer=SimpleNamespace(backbone=backbone, weights=None, image_size=size)
    )


def test_new_rows_must_come_from_the_network_that_made_the_old_ones():
    same = hashlib.sha256(b"efficientnet_lite0").hexdigest()[:16]  # no custom weights
    before = {"featurizer": {"id": same, "image_size": 224}}
    check_same_featurizer(featurizer_cfg("efficientnet_lite0", 224), before)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as err:
        check_same_featurizer(featurizer_cfg("efficientnet_lite0", 160), before)  # type: ignore[arg-type]
    assert str(err.value) == (
        f"the output's features come from {same} at 224 px; this run asks for {same} at 160 px:"
        " run without --incremental to recompute every image"
    )
    with pytest.raises(ValueError, match="come from None at None px"):
        check_same_featurizer(featurizer_cfg("efficientnet_lite0", 224), {})  # type: ignore[arg-type]
    other = {"featurizer": {"id": "0" * 16, "image_size": 224}}
    with pytest.raises(ValueError, match=f"come from {'0' * 16} at 224 px"):
        check_same_featurizer(featurizer_cfg("efficientnet_lite0", 224), other)  # type: ignore[arg-type]


def test_custom_weights_are_part_of_the_featurizers_identity(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"fine-tuned weights")
    cfg = featurizer_cfg("efficientnet_lite0", 224)
    cfg.featurizer.weights = str(weights)
    with_weights = hashlib.sha256(b"efficientnet_lite0" + b"fine-tuned weights").hexdigest()[:16]
    check_same_featurizer(cfg, {"featurizer": {"id": with_weights, "image_size": 224}})  # type: ignore[arg-type]
    bare = hashlib.sha256(b"efficientnet_lite0").hexdigest()[:16]
    with pytest.raises(ValueError, match=f"come from {bare} at 224 px; this run asks for"):
        check_same_featurizer(cfg, {"featurizer": {"id": bare, "image_size": 224}})  # type: ignore[arg-type]
