"""Training from several labelled sources, a label map and negatives in one real run (real
CNN, local Spark), and `fruits evaluate` on the served model."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fruits.config import PipelineConfig, ReduceConfig
from fruits.pipeline import run_pipeline
from fruits.recognition import NEGATIVE, LabelMapError

CLASSES = ("Banana 1", "Lemon 1", "Strawberry 1")


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sources(tmp_path_factory, sample_dir):
    """studio: 3 sample classes; phone: the same fruit pasted on a coloured table, in folders
    named as a shop would (`train_`/`val_` file prefixes); neg: noise photos."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(3)
    for cls in CLASSES:
        for split in ("Training", "Test"):
            shutil.copytree(sample_dir / split / cls, root / "studio" / split / cls)
    shop = {"Banana 1": "Cavendish", "Lemon 1": "Lemon", "Strawberry 1": "Strawberries"}
    for cls, folder in shop.items():
        for i, src in enumerate(sorted((sample_dir / "Training" / cls).iterdir())[:12]):
            table = Image.new("RGB", (240, 180), tuple(int(v) for v in rng.integers(60, 200, 3)))
            table.paste(Image.open(src).convert("RGB"), (70, 40))
            prefix = "val" if i % 4 == 0 else "train"
            out = root / "phone" / folder / f"{prefix}_{i}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(jpeg(table))
    for i in range(30):
        noise = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        out = root / "neg" / "Carton" / f"{i}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(jpeg(Image.fromarray(noise)))
    mapping = {
        "Cavendish": {"coarse_class": "Banana", "strict": ["Banana 1"], "lenient": ["Banana 1"]},
        "Lemon": "Lemon 1",
        "Strawberries": {"coarse_class": "Strawberry", "strict": [], "lenient": ["Strawberry 1"]},
    }
    (root / "map.json").write_text(json.dumps(mapping))
    return root


@pytest.fixture(scope="module")
def multi_run(spark, sources):
    cfg = PipelineConfig(
        input=str(sources / "studio"),
        extra_inputs=(str(sources / "phone"),),
        negatives=(str(sources / "neg"),),
        label_map=str(sources / "map.json"),
        output=str(sources / "out"),
        reduce=ReduceConfig(k=16),
    )
    return run_pipeline(cfg, spark=spark)


def test_sources_are_mapped_to_the_trained_classes_and_negatives_join_as_one_class(
    multi_run, sources
):
    images = pd.read_parquet(sources / "out" / "images.parquet")
    phone = images[images["path"].str.contains("/phone/")]
    assert set(phone["label"]) == set(CLASSES)  # folder names mapped
    assert set(images[images["path"].str.contains("/neg/")]["label"]) == {NEGATIVE}
    assert (phone["split"] == "val").sum() == 9  # the val_ photos
    assert set(phone[phone["path"].str.contains("/val_")]["split"]) == {"val"}
    studio = images[images["path"].str.contains("/studio/")]
    assert set(studio["split"]) == {"train", "val", "test", "guard"}  # grouped val from Training
    assert multi_run.report["images_total"] == len(images) == 96 + 36 + 30


def test_the_run_is_calibrated_and_scored_per_source(multi_run, sources):
    rec = multi_run.report["recognition"]
    assert rec["temperature"] >= 1.0 and 0.25 <= rec["threshold"] <= 0.9
    phone = rec["val"][str(sources / "phone")]
    assert phone["photos"] == 9 and phone["species_top1"] is not None
    neg = rec["val"][str(sources / "neg")]
    assert neg["negatives"] == neg["photos"] > 0
    meta = json.loads((sources / "out" / "models" / "serving.json").read_text())
    assert meta["recognition"]["species"]["Banana 1"] == "Banana"
    assert NEGATIVE in meta["classes"]
    # leave one source out: every source scored by a classifier fitted without it
    held = rec["held_out_source"]
    assert set(held) == {str(sources / s) for s in ("studio", "phone", "neg")}
    assert held[str(sources / "neg")]["negatives"] == 30  # all of it (no test split there)
    assert held[str(sources / "phone")]["photos"] == 36


def test_the_served_model_answers_species_and_refuses_what_is_not_fruit(multi_run, sources):
    from fruits.predictor import Predictor

    predictor = Predictor.load(sources / "out", threads=1)
    banana = sorted((sources / "studio" / "Test" / "Banana 1").iterdir())[0].read_bytes()
    said = predictor.predict(banana)
    assert (said.species, said.verdict) == ("Banana", "known")
    carton = sorted((sources / "neg" / "Carton").iterdir())[-1].read_bytes()
    assert predictor.predict(carton).verdict == "unsure"


def test_evaluate_scores_the_served_model_on_photos(multi_run, sources, tmp_path):
    from fruits.evaluate import evaluate_run

    result = evaluate_run(
        sources / "out", [str(sources / "phone")], label_map=str(sources / "map.json"),
        negatives=[str(sources / "neg")], plot=tmp_path / "confused.png",
    )  # fmt: skip
    assert result["photos"] == 36 + 30 and result["positives"] == 36
    assert result["species_top1"] >= 0.9
    assert result["variety_top1"] is not None  # Strawberries: species only
    assert result["refused_negatives"] >= 0.9
    assert {"species_top5", "refused_positives", "ece", "per_species_recall"} <= set(result)
    assert (tmp_path / "confused.png").read_bytes()[:4] == b"\x89PNG"


def test_a_label_map_with_unknown_names_is_one_line_and_writes_nothing(spark, sources, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Cavendish": "Banana 99"}))
    cfg = PipelineConfig(
        input=str(sources / "studio"), extra_inputs=(str(sources / "phone"),),
        label_map=str(bad), output=str(tmp_path / "out"),
    )  # fmt: skip
    with pytest.raises(LabelMapError, match=r"unknown class name\(s\): 'Banana 99'"):
        run_pipeline(cfg, spark=spark)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_evaluate_gives_each_source_its_figures_and_names_the_worst(multi_run, sources):
    from fruits.evaluate import evaluate_run

    studio, phone, neg = (str(sources / s) for s in ("studio/Test", "phone", "neg"))
    result = evaluate_run(
        sources / "out", [studio, phone], label_map=str(sources / "map.json"), negatives=[neg]
    )
    per = result["per_source"]
    assert list(per) == [studio, phone, neg]
    assert [per[s]["photos"] for s in per] == [24, 36, 30]  # 3 classes x 8 Test photos
    # the pooled figure is the positives-weighted mean of the sources' (by hand)
    pooled = (per[studio]["species_top1"] * 24 + per[phone]["species_top1"] * 36) / 60
    assert result["species_top1"] == pytest.approx(pooled, abs=1e-3)
    worst = min((studio, phone), key=lambda s: per[s]["species_top1"])
    assert result["worst_source"]["source"] == worst
    assert per[neg]["negatives"] == 30 and per[neg]["positives"] == 0


def test_studio_frames_train_the_classifier_on_backgrounds_too(multi_run, sources):
    """Two labelled sources and negatives: augment=auto makes one composite per studio frame
    of the train split (the phone photos, on a coloured table, are no studio frames) and a
    background alone for every second one (by the crc32 of its path, counted here by hand);
    none of them reaches images.parquet or the judged splits."""
    import zlib

    images = pd.read_parquet(sources / "out" / "images.parquet")
    studio_train = images[images["path"].str.contains("/studio/") & (images["split"] == "train")]
    made = multi_run.report["augmented"]
    assert made["composites"] == len(studio_train) > 0
    halves = sum(zlib.crc32(p.encode()) % 2 == 0 for p in studio_train["path"])
    assert made["backgrounds"] == halves
    assert 0 < made["background_photos"] <= 30  # cut from the 30 negatives
    assert not images["path"].str.contains("#").any()
    assert "augment" in multi_run.report["stage_seconds"]
