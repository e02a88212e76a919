"""A corpus of bad and odd files, made by the test, through a real `fruits run` (real CNN, local
Spark in a subprocess): no crash, every usable file processed, every other one quarantined
with its reason.

Unreadable files: tests run as root, and root reads a mode-000 file anyway. The run is
therefore started through `setpriv` without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, the
capabilities that let root ignore permissions; the JVM then gets EACCES like any user would.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fruits.ingest import InputError, labelled
from fruits.sources.hadoop import HadoopSource
from fruits.sources.local import unlisted_files


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def fruit(size: int = 100) -> Image.Image:
    """A red disc on white, like a Fruits-360 image."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    arr = np.full((size, size, 3), 255, np.uint8)
    arr[disc] = (200, 30, 40)
    return Image.fromarray(arr)


def bomb_png(side: int = 30000) -> bytes:
    """A valid PNG header claiming 30000 x 30000 pixels (900 Mpx), about 1 KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + chunk(b"IEND", b"")
    )


def make_corpus(root: Path, sample_dir: Path) -> tuple[dict[str, Path], dict[str, tuple]]:
    """-> (usable kind -> path, unusable kind -> (path, expected reason fragment))."""
    odd = root / "Training" / "Odd"
    odd.mkdir(parents=True)
    usable: dict[str, Path] = {}
    for label in ("Banana 1", "Kiwi 1"):  # real images, so PCA has something to fit
        (root / "Training" / label).mkdir(parents=True)
        for f in sorted((sample_dir / "Training" / label).iterdir())[:3]:
            usable[f"sample {label} {f.name}"] = shutil.copy(f, root / "Training" / label)
    jpeg = encode(fruit(), "JPEG", quality=90)

    def put(name: str, data: bytes) -> Path:
        (odd / name).write_bytes(data)
        return odd / name

    rgba = fruit().convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(100, dtype=np.uint8), (100, 1))))
    usable["png with alpha"] = put("alpha.png", encode(rgba, "PNG"))
    sixteen = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    usable["16-bit png"] = put("sixteen.png", encode(Image.fromarray(sixteen), "PNG"))
    usable["cmyk jpeg"] = put("cmyk.jpg", encode(fruit().convert("CMYK"), "JPEG"))
    usable["grayscale jpeg"] = put("gray.jpg", encode(fruit().convert("L"), "JPEG"))
    usable["1x1 pixel"] = put("tiny.png", encode(Image.new("RGB", (1, 1), (9, 200, 9)), "PNG"))
    usable["unicode and spaces"] = put("pomme rouge é 🍎 (1).jpg", jpeg)
    usable["png named .jpg"] = put("really-a-png.jpg", encode(fruit(), "PNG"))
    usable["upper-case extension"] = put("SHOUT.JPG", jpeg)
    (odd / "link-to-fruit.jpg").symlink_to(odd / "gray.jpg")
    usable["symlink to an image"] = odd / "link-to-fruit.jpg"
    # names Spark's listing hides or Hadoop's Path rejects: counted like any other
    usable["leading underscore"] = put("_x.jpg", jpeg)
    usable["leading dot"] = put(".x.jpg", jpeg)
    usable["colon in the name"] = put("12:30.jpg", jpeg)
    usable["percent and brackets"] = put("50% [v2] {a}.jpg", jpeg)
    for folder in ("_batch", ".hidden"):
        (root / "Training" / folder).mkdir()
        usable[f"folder {folder}"] = shutil.copy(odd / "SHOUT.JPG", root / "Training" / folder)
    progressive = encode(fruit(), "JPEG", quality=90, progressive=True)
    usable["progressive jpeg"] = put("progressive.jpg", progressive)
    sixteen_big = Image.fromarray(np.zeros((6300, 6300), dtype=np.uint16))
    usable["rgb png large"] = put("large.png", encode(fruit(1200), "PNG"))
    # 77 KB that once decoded to 1 GB of float64: now shrunk in 16-bit, bounded (images.py)
    usable["16-bit 6300x6300 png"] = put("gray16.png", encode(sixteen_big, "PNG"))
    usable["mpo-like jpeg with exif"] = put(
        "exif.jpg", encode(fruit(), "JPEG", exif=b"Exif\x00\x00")
    )

    usable["tiff named .png"] = put("really-a-tiff.png", encode(fruit(), "TIFF"))

    bad = bytearray(jpeg)
    bad[0:40] = b"\x00" * 40
    zero_sampling = bytearray(progressive)  # issue 18: ZeroDivisionError stopped the whole run
    sof = zero_sampling.find(b"\xff\xc2")
    for c in range(zero_sampling[sof + 9]):
        zero_sampling[sof + 11 + 3 * c] = 0
    unusable = {
        "corrupt header": (put("corrupt-header.jpg", bytes(bad)), "not an image"),
        "truncated jpeg": (put("truncated.jpg", jpeg[: len(jpeg) // 2]), "truncated"),
        "zero bytes": (put("empty.jpg", b""), "empty file (0 bytes)"),
        "text renamed .jpg": (put("notes.jpg", b"some text, not pixels\n" * 20), "not an image"),
        "decompression bomb": (put("bomb.png", bomb_png()), "image too large: 30000x30000"),
        "unreadable": (put("locked.jpg", jpeg), "unreadable"),
        "zero jpeg sampling factors": (
            put("zero-sampling.jpg", bytes(zero_sampling)),
            "corrupt image: invalid JPEG sampling factors",
        ),
        "eps named .jpg": (put("postscript.jpg", encode(fruit(), "EPS")), "looks like EPS"),
        "blp named .png": (put("texture.png", encode(fruit().convert("P"), "BLP")), "like BLP"),
    }
    os.chmod(unusable["unreadable"][0], 0)
    (odd / "loop-a.jpg").symlink_to(odd / "loop-b.jpg")
    (odd / "loop-b.jpg").symlink_to(odd / "loop-a.jpg")
    unusable["symlink loop"] = (odd / "loop-a.jpg", "symlink loop")
    unusable["symlink loop (other end)"] = (odd / "loop-b.jpg", "symlink loop")
    (odd / "dangling.jpg").symlink_to(odd / "gone.jpg")
    unusable["broken symlink"] = (odd / "dangling.jpg", "broken symlink")
    (odd / "readme.txt").write_text("not an image extension: never listed")
    return usable, unusable


def without_root_privileges() -> list[str]:
    """A command prefix under which file permissions apply, even for root."""
    if os.geteuid() != 0:
        return []
    from conftest import require_service

    setpriv = shutil.which("setpriv")
    require_service(
        "setpriv (util-linux)", setpriv is not None, "as root, no file can be made unreadable"
    )
    assert setpriv is not None
    drop = "-dac_override,-dac_read_search"
    return [setpriv, "--inh-caps", drop, "--bounding-set", drop]


def uri(path: Path) -> str:
    return f"file:{path}"


@pytest.mark.slow
def test_bad_and_odd_files_never_crash_a_run(sample_dir, tmp_path):
    usable, unusable = make_corpus(tmp_path / "in", sample_dir)
    assert len(usable) - 6 + len(unusable) >= 25  # kinds beyond the 6 plain sample images
    out = tmp_path / "out"
    cmd = [
        *without_root_privileges(), sys.executable, "-m", "fruits", "run",
        "--input", str(tmp_path / "in"), "--output", str(out), "--master", "local[2]",
        "--no-classify", "--pca-k", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "\tat org.apache" not in proc.stderr and "Traceback" not in proc.stderr  # no traces

    rows = pd.read_parquet(out / "images.parquet")
    assert rows["path"].is_unique
    assert sorted(rows["path"]) == sorted(uri(p) for p in usable.values())
    assert all(len(f) == 1280 for f in rows["features"])

    quarantine = pd.read_parquet(out / "quarantine.parquet").set_index("path")["reason"]
    assert quarantine.index.is_unique
    assert sorted(quarantine.index) == sorted(uri(p) for p, _ in unusable.values())
    for kind, (path, why) in unusable.items():
        assert why in quarantine[uri(path)], (kind, quarantine[uri(path)])

    report = json.loads((out / "report.json").read_text())
    assert report["images_total"] == len(usable) + len(unusable)
    assert (report["images_ok"], report["images_quarantined"]) == (len(usable), len(unusable))
    csv = pd.read_csv(out / "quarantine.csv")
    assert list(csv.columns) == ["path", "reason"] and len(csv) == len(unusable)


def test_a_folder_symlink_loop_is_refused_in_one_line(spark, tmp_path):
    (tmp_path / "Training" / "Kiwi").mkdir(parents=True)
    (tmp_path / "Training" / "Kiwi" / "a.jpg").write_bytes(encode(fruit(), "JPEG"))
    (tmp_path / "Training" / "Kiwi" / "again").symlink_to(tmp_path / "Training")
    with pytest.raises(InputError, match=r"symlink loop in the input: .*again"):
        labelled(HadoopSource(str(tmp_path)).read(spark))


def test_files_spark_would_drop_silently_are_found(tmp_path):
    """Spark's scan gives no row for these; `unlisted_files` turns them into quarantine rows."""
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "empty.txt").write_bytes(b"")  # not an image extension: ignored
    (tmp_path / "ok.jpg").write_bytes(encode(fruit(), "JPEG"))
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "dangling.jpeg").symlink_to(tmp_path / "nowhere.jpeg")
    got = {Path(p[len("file:") :]).name: (reason, n) for p, reason, n, _ in unlisted_files(
        str(tmp_path), ["jpg", "jpeg", "png"]
    )}  # fmt: skip
    assert got == {
        "empty.jpg": ("empty file (0 bytes)", 0),
        "a.png": ("symlink loop: a.png -> " + str(tmp_path / "b.png"), None),
        "b.png": ("symlink loop: b.png -> " + str(tmp_path / "a.png"), None),
        "dangling.jpeg": (
            "broken symlink: dangling.jpeg -> " + str(tmp_path / "nowhere.jpeg"),
            None,
        ),
    }
