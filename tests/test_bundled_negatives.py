"""The negatives that ship beside the bundled sample (sample_data/negatives): small, licensed
for a shipped model, and what `fruits run` trains "not a fruit" from when given no --input.
No Spark: the run itself is replaced by a stub that keeps the config it was given."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import fruits.cli as cli
from fruits.config import bundled_negatives, bundled_sample

# origin folder -> words its SOURCE.txt must hold (the licence), and whether a LICENSE file
# must sit beside it (MIT and Apache-2.0 ask for the licence text to travel with the work)
ORIGINS = {
    "grocery-packages": ("MIT", True),
    "orchard": ("CC BY 4.0", False),
    "clothing-small": ("CC0", False),
    "hands-sign-digits": ("Apache License 2.0", True),
    "tf-flowers": ("CC BY 2.0", False),
}
MAX_SIDE = 128
MAX_TOTAL_BYTES = 400 * 1024  # the wheel stays lean


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def test_the_shipped_negatives_are_few_small_photos_of_permitted_origins():
    root = Path(bundled_negatives())
    assert root.is_dir() and root.parent == Path(bundled_sample()).parent
    # only the permissively licensed origins; never a research-only scene source
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(ORIGINS)
    photos = _images(root)
    assert 60 <= len(photos) <= 150
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) <= MAX_TOTAL_BYTES
    for photo in photos:
        with Image.open(photo) as im:
            assert im.format == "JPEG" and im.mode == "RGB", photo
            assert max(im.size) <= MAX_SIDE, photo
    # none of them sits where ingest would read a Test or val split: all train "not a fruit"
    for photo in photos:
        parts = photo.relative_to(root).parts
        assert not {"Test", "Training", "val"} & set(parts), photo
        assert not parts[-1].startswith(("train_", "val_", "test_")), photo


@pytest.mark.parametrize("origin", sorted(ORIGINS))
def test_each_origin_names_its_licence_and_lists_its_files(origin):
    folder = Path(bundled_negatives()) / origin
    licence, needs_file = ORIGINS[origin]
    note = (folder / "SOURCE.txt").read_text()
    assert licence in note and "Changes:" in note
    listed = {line.strip() for line in note.splitlines() if line.startswith("  ")}
    assert listed == {p.name for p in _images(folder)}
    if needs_file:
        assert (folder / "LICENSE").stat().st_size > 500


@pytest.fixture()
def ran(monkeypatch):
    """`fruits run` with the pipeline stubbed out: the configs it would have run."""
    seen = []
    monkeypatch.setattr(cli, "_run", seen.append)
    monkeypatch.setattr(cli, "_print_summary", lambda result: None)
    return seen


def _run(ran, *args: str):
    result = CliRunner().invoke(cli.app, ["run", *args])
    assert result.exit_code == 0, result.output
    (cfg,) = ran
    return cfg


def test_the_quick_start_trains_not_a_fruit_from_the_bundled_negatives(ran, tmp_path):
    cfg = _run(ran, "--output", str(tmp_path / "o"))
    assert cfg.input == bundled_sample() and cfg.extra_inputs == ()
    assert cfg.negatives == (bundled_negatives(),)
    assert cfg.sources[-1] == (bundled_negatives(), "negatives")


def test_an_explicit_input_gets_no_negatives_unless_asked(ran, tmp_path):
    cfg = _run(ran, "--input", str(tmp_path), "--output", str(tmp_path / "o"))
    assert cfg.negatives == ()


def test_named_negatives_replace_the_bundled_ones(ran, tmp_path):
    cfg = _run(ran, "--negatives", str(tmp_path), "--output", str(tmp_path / "o"))
    assert cfg.input == bundled_sample() and cfg.negatives == (str(tmp_path),)
