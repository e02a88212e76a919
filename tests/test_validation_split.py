"""The grouped validation split on real Fruits-360 file names: near-duplicate neighbours (video
frames one or two apart, same class and series) never sit on both sides of train / val."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from fruits.ingest import GUARD, with_validation

SAMPLE = Path(__file__).parents[1] / "src/fruits/sample_data/fruits-360-sample"
DEV = Path(__file__).parents[2] / "shared/datasets/fruits-360-dev"
NAME = re.compile(r"^((?:r\d*_)?)(\d+)_\d+\.")  # written here, not imported: the series rule


def _names(root: Path) -> list[tuple[str, str]]:
    """(path, label) of every Training image under a Fruits-360 tree, as Spark lists them."""
    return [(f"file:{p}", p.parent.name) for p in sorted((root / "Training").glob("*/*.jpg"))]


def _full_series() -> list[tuple[str, str]]:
    """Every frame of three series of two classes, named like the full Fruits-360 (the sample
    and dev trees hold a subset, so neighbours are rarer there)."""
    return [
        (f"file:/data/Training/{label}/{prefix}{frame}_100.jpg", label)
        for label in ("Apple Red 1", "Banana 1")
        for prefix in ("", "r_", "r2_")
        for frame in range(328)
    ]


def _split(spark, rows: list[tuple[str, str]]) -> dict[str, str]:
    df = spark.createDataFrame(
        [(p, lab, "train") for p, lab in rows], "path string, label string, split string"
    )
    out = with_validation(df, 0.1, has_val=False).collect()
    return {r["path"]: r["split"] for r in out}


def _leaks(rows: list[tuple[str, str]], split: dict[str, str], within: int) -> list[str]:
    """Val frames with a train frame of the same class and series at most `within` away."""
    frames: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for path, label in rows:
        m = NAME.match(path.rsplit("/", 1)[-1])
        if m:
            frames[(label, m.group(1))][int(m.group(2))] = split[path]
    leaks = []
    for key, by_frame in frames.items():
        for f, s in by_frame.items():
            if s != "val":
                continue
            for d in range(-within, within + 1):
                if by_frame.get(f + d) == "train":
                    leaks.append(f"{key} val {f} / train {f + d}")
    return leaks


@pytest.mark.parametrize("source", ["full", "sample", "dev"])
def test_no_train_frame_within_two_frames_of_a_val_frame(spark, source):
    if source == "dev" and not DEV.exists():
        pytest.skip("shared Fruits-360 dev set absent")
    rows = {"full": _full_series, "sample": lambda: _names(SAMPLE), "dev": lambda: _names(DEV)}[
        source
    ]()
    split = _split(spark, rows)
    assert _leaks(rows, split, within=2) == []
    counts = {s: list(split.values()).count(s) for s in set(split.values())}
    assert counts.get("val", 0) > 0.04 * len(rows)  # about a tenth still goes to val
    assert counts.get(GUARD, 0) < 0.05 * len(rows)  # the guard band is small
    assert counts["train"] + counts["val"] + counts.get(GUARD, 0) == len(rows)  # none lost


def test_whole_blocks_of_25_frames_go_to_val_and_other_files_are_their_own_group(spark):
    rows = _full_series() + [(f"file:/data/Training/Kiwi/photo_{i}.jpg", "Kiwi") for i in range(50)]
    split = _split(spark, rows)
    blocks: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for path, label in rows:
        m = NAME.match(path.rsplit("/", 1)[-1])
        if m:
            blocks[(label, m.group(1), int(m.group(2)) // 25)].add(split[path])
    assert all(("val" not in sides) or sides == {"val"} for sides in blocks.values())
    assert {split[p] for p, _ in rows if "photo_" in p} <= {"train", "val"}


def test_test_rows_and_a_source_with_its_own_val_split_are_left_alone(spark):
    rows = _full_series()
    df = spark.createDataFrame(
        [(p, lab, "test") for p, lab in rows], "path string, label string, split string"
    )
    assert {r["split"] for r in with_validation(df, 0.1, has_val=False).collect()} == {"test"}
    df = spark.createDataFrame(
        [(p, lab, "all") for p, lab in rows], "path string, label string, split string"
    )
    assert {r["split"] for r in with_validation(df, 0.1, has_val=True).collect()} == {"train"}


def test_a_photo_named_like_a_flickr_id_is_its_own_group_not_a_frame(spark):
    """`5999024446_5721493894.jpg` (tf-flowers) matched the frame pattern, and its id, too big
    for an int, stopped a 17,000-image run after 19 minutes of featurize."""
    rows = [(f"file:/data/Training/Sunflower/5999{i:06d}_57214938{i:02d}.jpg", "Sunflower")
            for i in range(40)]  # fmt: skip
    split = _split(spark, rows)
    assert set(split) == {p for p, _ in rows}
    assert set(split.values()) <= {"train", "val"} and "val" in split.values()


def test_the_same_photos_split_the_same_wherever_they_live(spark):
    """A laptop folder, Azure and a volume holding the same files give the same validation
    photos: the split follows the files' names, not the place (it once hashed whole paths)."""
    names = [f"{c}/photo_{i}.jpg" for c in ("Kiwi", "Lemon") for i in range(150)]
    names += [f"Apple Red 1/r_{f}_100.jpg" for f in range(200)]
    roots = (
        "file:/home/me/fruits/Training",
        "abfss://images@acct.dfs.core.windows.net/fruits/Training",
        "dbfs:/Volumes/main/fruits/photos/Training",
    )
    splits = []
    for root in roots:
        rows = [(f"{root}/{n}", n.split("/")[0]) for n in names]
        got = _split(spark, rows)
        splits.append({p[len(root) + 1 :]: s for p, s in got.items()})
    assert splits[0] == splits[1] == splits[2]
    assert 0.04 * len(names) < list(splits[0].values()).count("val") < 0.2 * len(names)
