"""A deterministic fuzzed corpus: real sample photos, mutated (bit flips, truncations, header
edits, zeroed JPEG sampling factors, other formats under a .jpg/.png name), must each give
features or a short reason, never an exception out of the batch (issue 18: one crafted file
stopped a whole run with 209 Java frames).

The mutants are made here from the bundled Fruits-360 images, so there is no binary fixture;
the same seed always gives the same ~200 files.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fruits.engine import featurize_contents

SEED = 18  # the number: any fixed seed would do


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def sof_offset(jpeg: bytes) -> int:
    """Offset of the first SOF0/SOF1/SOF2 marker (frame header) of a JPEG."""
    found = [i for i in (jpeg.find(m) for m in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2")) if i > 0]
    assert found, "no frame header"
    return min(found)


def zero_sampling(jpeg: bytes) -> bytes:
    """Every component's sampling factors set to 0 (the 606-byte crash of issue 18)."""
    out = bytearray(jpeg)
    sof = sof_offset(jpeg)
    for c in range(out[sof + 9]):
        out[sof + 11 + 3 * c] = 0
    return bytes(out)


def jpeg_header_edits(jpeg: bytes) -> dict[str, bytes]:
    sof = sof_offset(jpeg)

    def put(offset: int, value: bytes) -> bytes:
        out = bytearray(jpeg)
        out[offset : offset + len(value)] = value
        return bytes(out)

    return {
        "zero sampling": zero_sampling(jpeg),
        "sampling 15x15": put(sof + 11, b"\xff"),
        "height 0": put(sof + 5, struct.pack(">H", 0)),
        "width 0": put(sof + 7, struct.pack(">H", 0)),
        "width 65535": put(sof + 7, struct.pack(">H", 65535)),
        "precision 12": put(sof + 4, b"\x0c"),
        "components 0": put(sof + 9, b"\x00"),
        "components 255": put(sof + 9, b"\xff"),
        "quant table id 9": put(sof + 12, b"\x09"),
        "no EOI": jpeg[:-2],
        "SOI only": jpeg[:2],
        "segment length 0": put(4, b"\x00\x00"),
        "segment length huge": put(4, b"\xff\xff"),
    }


def png_header_edits(png: bytes) -> dict[str, bytes]:
    def put(offset: int, value: bytes) -> bytes:
        out = bytearray(png)
        out[offset : offset + len(value)] = value
        return bytes(out)

    return {  # IHDR data starts at 16: width, height, depth, colour type, ...
        "png width 0": put(16, struct.pack(">I", 0)),
        "png width 2^31": put(16, struct.pack(">I", 2**31 - 1)),
        "png depth 7": put(24, b"\x07"),
        "png colour type 5": put(25, b"\x05"),
        "png interlace 9": put(28, b"\x09"),
        "png no IEND": png[:-12],
        "png signature only": png[:8],
    }


def wrong_formats(img: Image.Image) -> dict[str, bytes]:
    """The same picture in formats we refuse (or accept) under a .jpg/.png name."""
    small = img.resize((32, 32))
    out = {
        "BLP": encode(small.convert("P"), "BLP"),
        "TIFF": encode(small, "TIFF"),
        "TIFF deflate": encode(small, "TIFF", compression="tiff_adobe_deflate"),
        "EPS": encode(small, "EPS"),
        "ICO": encode(small, "ICO"),
        "PPM": encode(small, "PPM"),
        "TGA": encode(small, "TGA"),
        "PCX": encode(small, "PCX"),
        "SGI": encode(small, "SGI"),
        "DDS": encode(small, "DDS"),
        "QOI": encode(small, "QOI"),
        "ICNS": encode(small, "ICNS"),
        "JPEG2000": encode(small, "JPEG2000"),
        "WEBP": encode(small, "WEBP"),
        "GIF": encode(small, "GIF"),
        "BMP": encode(small, "BMP"),
        "PDF-like": b"%PDF-1.4\n1 0 obj<</Type /Catalog>>endobj\n%%EOF\n",  # Pillow's has a date
        "PSD-like": b"8BPS\x00\x01" + b"\x00" * 40,
    }
    tiff = out["TIFF"]  # a TIFF with its first IFD's tag types scrambled
    out["TIFF bad tag types"] = tiff[:10] + bytes(b ^ 0x07 for b in tiff[10:40]) + tiff[40:]
    return out


def bit_flips(data: bytes, rng: np.random.Generator, n: int, *, head: int | None = None) -> bytes:
    out = bytearray(data)
    span = min(len(out), head or len(out))
    for pos in rng.integers(0, span, n):
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def mutants(sample_dir: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """-> (the untouched originals, ~200 mutants), both named `kind/n.ext`."""
    rng = np.random.default_rng(SEED)
    photos = sorted(sample_dir.glob("Training/*/*.jpg"))[::40][:3]
    originals: dict[str, bytes] = {}
    out: dict[str, bytes] = {}
    for k, path in enumerate(photos):
        jpeg = path.read_bytes()
        img = Image.open(path).convert("RGB")
        sources = {
            "jpg": jpeg,
            "progressive.jpg": encode(img, "JPEG", quality=90, progressive=True),
            "png": encode(img, "PNG"),
        }
        for ext, data in sources.items():
            originals[f"original/{k}.{ext}"] = data
            for j in range(4):
                out[f"flip{j}/{k}.{ext}"] = bit_flips(data, rng, int(rng.integers(1, 32)))
                out[f"headflip{j}/{k}.{ext}"] = bit_flips(data, rng, 3, head=400)
            for j in range(3):
                cut = int(rng.integers(1, len(data)))
                out[f"cut{j}/{k}.{ext}"] = data[:cut]
        for edit, data in jpeg_header_edits(sources["progressive.jpg"]).items():
            out[f"prog {edit}/{k}.jpg"] = data
        out[f"baseline zero sampling/{k}.jpg"] = zero_sampling(jpeg)
        for edit, data in png_header_edits(sources["png"]).items():
            out[f"{edit}/{k}.png"] = data
        if k < 2:
            for fmt, data in wrong_formats(img).items():
                out[f"as {fmt}/{k}.{'jpg' if k == 0 else 'png'}"] = data
    return originals, out


class MeanFeaturizer:
    """A stub network (per-channel mean), so the corpus costs decoding only."""

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return pixels.reshape(len(pixels), -1, 3).mean(axis=1).astype(np.float32)


def test_the_mutant_corpus_is_large_and_deterministic(sample_dir):
    _, first = mutants(sample_dir)
    _, again = mutants(sample_dir)
    assert 180 <= len(first) <= 260
    assert first == again


def test_every_mutant_gives_features_or_a_short_reason(sample_dir):
    originals, bad = mutants(sample_dir)
    names = list(originals) + list(bad)
    contents = list(originals.values()) + list(bad.values())
    feats, errs = featurize_contents(
        MeanFeaturizer(), contents, size=224, max_pixels=40_000_000, batch_size=16, views=8
    )
    assert len(feats) == len(errs) == len(contents)
    for name, f, e in zip(names, feats, errs, strict=True):
        assert (f is None) != (e is None), name  # exactly one of features, reason
        if e is not None:
            assert "\n" not in e and len(e) <= 120, (name, e)
            assert "0x" not in e and "<" not in e and "/" not in e, (name, e)  # no internals
    for name in originals:  # the untouched photos all decode
        assert errs[names.index(name)] is None, (name, errs[names.index(name)])
    reasons = dict(zip(names, errs, strict=True))
    assert reasons["prog zero sampling/0.jpg"] == "corrupt image: invalid JPEG sampling factors"
    assert "looks like EPS" in reasons["as EPS/0.jpg"]
    assert "looks like BLP" in reasons["as BLP/0.jpg"]
    assert reasons["as TIFF/0.jpg"] is None  # an accepted format under the wrong name is fine
    quarantined = sum(e is not None for e in errs)
    assert quarantined >= 100  # most mutants are broken; the rest decode to some pixels


@pytest.mark.slow
def test_a_run_over_mutants_exits_zero_and_accounts_for_every_file(spark, sample_dir, tmp_path):
    """One real pipeline run (real CNN) over ~20 mutants and a few good photos: no exception,
    each file in exactly one of images / quarantine, each quarantine row with a reason; then
    `fruits evaluate` over the same files (it crashed the same way) gives the same reasons."""
    from fruits.config import FeaturizerConfig, PipelineConfig, ReduceConfig
    from fruits.evaluate import evaluate_run
    from fruits.pipeline import run_pipeline

    originals, bad = mutants(sample_dir)
    kinds = ["prog zero sampling", "baseline zero sampling", "as EPS", "as BLP", "as ICO"]
    kinds += ["as TIFF", "as TIFF bad tag types", "as PSD-like", "cut0", "headflip0", "flip0"]
    picked = {n: bad[n] for n in sorted(bad) if n.split("/")[0] in kinds and n[-5] in "01"}
    assert 20 <= len(picked) <= 30
    inp = tmp_path / "in"
    written: dict[str, Path] = {}
    for i, (name, data) in enumerate([*originals.items(), *picked.items()]):
        label = f"Class {Path(name).name.split('.')[0]}"  # the photo it was made from
        # the PNG originals are the Test split, so the run fits a classifier `evaluate` loads
        split = "Test" if name.startswith("original/") and name.endswith(".png") else "Training"
        folder = inp / split / label
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{i:03d}-{Path(name).name}"
        target.write_bytes(data)
        written[name] = target
    cfg = PipelineConfig(
        input=str(inp),
        output=str(tmp_path / "out"),
        featurizer=FeaturizerConfig(image_size=100),
        reduce=ReduceConfig(k=2),
    )
    result = run_pipeline(cfg, spark=spark)
    out = Path(result.output)
    images = set(pd.read_parquet(out / "images.parquet")["path"])
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    q_paths = set(quarantine["path"])
    every = {f"file:{p}" for p in written.values()}
    assert images | q_paths == every
    assert not images & q_paths
    assert quarantine["path"].is_unique
    assert quarantine["reason"].notna().all() and (quarantine["reason"].str.len() > 0).all()
    assert {f"file:{written[n]}" for n in originals} <= images
    assert len(q_paths) >= 10
    reason = quarantine.set_index("path")["reason"]
    assert reason[f"file:{written['prog zero sampling/0.jpg']}"] == (
        "corrupt image: invalid JPEG sampling factors"
    )
    assert "looks like EPS" in reason[f"file:{written['as EPS/0.jpg']}"]

    assert (out / "models" / "serving.npz").exists()
    scored = evaluate_run(out, [str(inp / "Training")])
    unreadable = {f"file:{u['path']}": u["reason"] for u in scored["unreadable"]}
    assert unreadable == reason.to_dict()
