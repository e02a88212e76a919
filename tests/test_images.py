"""decode_image: every mode to RGB, bad bytes to reasons, EXIF orientation, bounded cost."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from imagegen import bomb_png, corrupt_header, jpeg_bytes, png16_bytes, png_bytes, truncated_jpeg
from PIL import ExifTags, Image

from fruits.images import (
    ImageError,
    decode_cost,
    decode_image,
    decode_many,
    stored_bytes_per_pixel,
)


@pytest.mark.parametrize(
    ("data", "expected_rgb"),
    [
        (jpeg_bytes((10, 200, 30)), (10, 200, 30)),
        (jpeg_bytes((120, 120, 120), mode="L"), (120, 120, 120)),
        (jpeg_bytes((10, 200, 30), mode="CMYK"), (10, 200, 30)),
        (png_bytes(np.full((20, 20, 3), (250, 5, 5), np.uint8)), (250, 5, 5)),
    ],
    ids=["rgb-jpeg", "grayscale-jpeg", "cmyk-jpeg", "rgb-png"],
)
def test_every_mode_becomes_rgb_at_the_requested_size(data, expected_rgb):
    out = decode_image(data, size=32)
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.uint8
    np.testing.assert_allclose(out[16, 16], expected_rgb, atol=12)


def test_transparent_pixels_become_white_not_black():
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent black
    out = decode_image(png_bytes(rgba, mode="RGBA"), size=10)
    assert (out == 255).all()


def test_palette_png_is_converted():
    img = np.full((8, 8, 3), (0, 0, 255), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).convert("P").save(buf, format="PNG")
    out = decode_image(buf.getvalue(), size=8)
    np.testing.assert_allclose(out[0, 0], (0, 0, 255), atol=2)


def test_sixteen_bit_png_keeps_its_range():
    out = decode_image(png16_bytes(), size=50)
    assert out.min() < 10 and out.max() > 245


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image, just text\n", "not an image"),
        (truncated_jpeg(), "corrupt or truncated"),
        (corrupt_header(), "not an image"),
        (bomb_png(), "image too large: 30000x30000"),
    ],
    ids=["empty", "text", "truncated", "corrupt-header", "bomb"],
)
def test_bad_bytes_raise_a_readable_reason(data, reason):
    with pytest.raises(ImageError) as err:
        decode_image(data, size=32)
    assert reason in err.value.reason


def test_decode_many_keeps_good_items_and_reports_bad_ones():
    pixels, errors = decode_many([jpeg_bytes(), b"", None, jpeg_bytes()], size=16)
    assert pixels.shape == (4, 16, 16, 3)
    assert errors[0] is None and errors[3] is None
    assert errors[1] == errors[2] == "empty file (0 bytes)"


def test_pixel_limit_is_configurable():
    with pytest.raises(ImageError, match="exceeds the limit of 100"):
        decode_image(jpeg_bytes(size=20), size=8, max_pixels=100)


# -- ordinary photos keep today's pixels ---------------------------------------------------------


def _plain_pillow(data: bytes, size: int) -> np.ndarray:
    """The straightforward decode: what any 8-bit RGB photo must still give, bit for bit."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img)


@pytest.mark.parametrize("size", [100, 224])
def test_fruits360_photos_decode_exactly_as_plain_pillow(sample_dir, size):
    photos = sorted(sample_dir.rglob("*.jpg"))[::8]
    assert len(photos) >= 40
    for path in photos:
        data = path.read_bytes()
        np.testing.assert_array_equal(decode_image(data, size=size), _plain_pillow(data, size))


def test_large_rgb_png_and_grayscale_keep_their_pixels():
    """RGB PNGs are never drafted; grayscale is now shrunk before it becomes RGB, which must
    give the same pixels as converting first (each channel is resampled alike)."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    png = encode(Image.fromarray(rgb), "PNG")
    np.testing.assert_array_equal(decode_image(png, size=100), _plain_pillow(png, 100))
    gray = encode(Image.fromarray(rgb[..., 0]), "PNG")
    np.testing.assert_array_equal(decode_image(gray, size=100), _plain_pillow(gray, 100))


# -- EXIF orientation ----------------------------------------------------------------------------

# How the EXIF specification says the stored pixels must be turned to be seen upright, written
# with numpy so the test does not share the code's own Pillow table.
UPRIGHT = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.swapaxes(0, 1),  # mirrored along the top-left to bottom-right diagonal
    6: lambda a: np.rot90(a, -1),  # the camera was turned 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, 1),
}
STORED = {o: (UPRIGHT[o] if o not in (6, 8) else UPRIGHT[14 - o]) for o in UPRIGHT}  # inverse


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def quadrants(width: int, height: int) -> np.ndarray:
    """An upright scene whose four quadrants have different colours."""
    arr = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    arr[:h, :w], arr[:h, w:] = (220, 30, 30), (30, 200, 30)
    arr[h:, :w], arr[h:, w:] = (30, 30, 220), (240, 240, 20)
    return arr


def jpeg_with_orientation(stored: np.ndarray, orientation: int, **kw) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes(), **kw)


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_gives_the_physically_rotated_pixels(orientation):
    upright = quadrants(60, 40)
    jpeg = jpeg_with_orientation(np.ascontiguousarray(STORED[orientation](upright)), orientation)
    stored_pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))  # EXIF ignored
    turned = np.ascontiguousarray(UPRIGHT[orientation](stored_pixels))
    rotated = encode(Image.fromarray(turned), "PNG")
    for size in (32, 60, 90):  # shrunk, squashed, enlarged: rotated before any resize
        np.testing.assert_array_equal(
            decode_image(jpeg, size=size), decode_image(rotated, size=size)
        )
    # and the right way up: each quadrant's colour where the scene has it
    out = decode_image(jpeg, size=32).astype(int)
    expected = decode_image(encode(Image.fromarray(upright), "PNG"), size=32).astype(int)
    for y, x in ((6, 6), (6, 25), (25, 6), (25, 25)):
        np.testing.assert_allclose(out[y, x], expected[y, x], atol=12)


def test_portrait_phone_photo_is_upright_and_drafted():
    """A 4000x3000 sensor frame of a portrait shot (Orientation 6) reaches the network upright,
    and it is decoded at 1/8 scale: 2 MB of working memory are enough for a 12 MP JPEG."""
    upright = quadrants(3000, 4000)
    jpeg = jpeg_with_orientation(np.ascontiguousarray(STORED[6](upright)), 6)
    assert Image.open(io.BytesIO(jpeg)).size == (4000, 3000)
    out = decode_image(jpeg, size=100, max_decode_bytes=2 * 2**20).astype(int)
    corners = {(20, 20): (220, 30, 30), (20, 80): (30, 200, 30), (80, 20): (30, 30, 220)}
    for (y, x), colour in corners.items():
        np.testing.assert_allclose(out[y, x], colour, atol=12)
    with pytest.raises(ImageError, match="image too large to decode"):
        decode_image(jpeg, size=100, max_decode_bytes=2**20)


def test_mpo_phone_photo_is_drafted_like_a_jpeg():
    """Phones often write MPO (a JPEG plus depth map or preview pictures): the same draft."""
    buf = io.BytesIO()
    Image.fromarray(quadrants(4000, 3000)).save(
        buf, "MPO", save_all=True, append_images=[Image.new("RGB", (400, 300))]
    )
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    out = decode_image(buf.getvalue(), size=100, max_decode_bytes=2 * 2**20).astype(int)
    np.testing.assert_allclose(out[20, 20], (220, 30, 30), atol=12)


def test_broken_exif_does_not_cost_the_photo():
    exif = bytearray(jpeg_with_orientation(quadrants(40, 40), 6))
    start = exif.index(b"Exif\x00\x00") + 6
    exif[start : start + 8] = b"XX\x00\x2a\xff\xff\xff\xff"  # unknown byte order, bad offset
    out = decode_image(bytes(exif), size=40)
    assert out.shape == (40, 40, 3)


# -- bounded decode cost -------------------------------------------------------------------------


def png_header(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG that claims `width` x `height` pixels of a given kind in a few dozen bytes: enough
    for every check that happens before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("bit_depth", "color_type", "mode", "bytes_per_pixel"),
    [
        (8, 0, "L", 1),
        (16, 0, "I;16", 2),
        (8, 2, "RGB", 4),  # Pillow pads RGB to 4 bytes
        (8, 6, "RGBA", 4 + 1 + 4),  # + its alpha channel + the white background
        (8, 4, "LA", 4 + 4 + 1 + 4),  # + an RGBA copy
    ],
)
def test_decode_cost_is_pixels_times_bytes_per_pixel(bit_depth, color_type, mode, bytes_per_pixel):
    img = Image.open(io.BytesIO(png_header(300, 200, bit_depth=bit_depth, color_type=color_type)))
    assert img.mode == mode
    assert decode_cost(img) == 300 * 200 * bytes_per_pixel
    transposed = bytes_per_pixel + stored_bytes_per_pixel(mode)  # + the turned copy
    assert decode_cost(img, transpose=True) == 300 * 200 * transposed
    assert stored_bytes_per_pixel("I") == stored_bytes_per_pixel("F") == 4


def test_huge_sixteen_bit_png_is_refused_before_decoding():
    """The issue's upload: 6300x6300 16-bit gray, under the 40 MP limit, 76 MB once decoded."""
    header = png_header(6300, 6300, bit_depth=16, color_type=0)
    with pytest.raises(ImageError) as err:
        decode_image(header, size=100, max_decode_bytes=50 * 2**20)
    assert err.value.reason == (
        "image too large to decode: 6300x6300 I;16 needs about 76 MB of memory, over the limit "
        "of 50 MB"
    )


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_modes_scale_to_eight_bits(mode):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64)
    arr = ramp.astype(np.uint16 if mode == "I;16" else np.int32 if mode == "I" else np.float32)
    data = encode(Image.fromarray(arr), "TIFF" if mode != "I;16" else "PNG")
    assert Image.open(io.BytesIO(data)).mode == mode
    out = decode_image(data, size=48)
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_allclose(out[..., 0], out[..., 2])  # gray
    # 65535 -> 255, 32768 -> 128, as 255 * v / 65535 rounded
    flat = encode(Image.fromarray(np.full((8, 8), 32768, np.uint16)), "PNG")
    assert (decode_image(flat, size=4) == 128).all()


PEAK_SCRIPT = """
import io, sys
import numpy as np
from PIL import Image
from fruits.images import decode_image

def peak_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1])

y, x = np.mgrid[0:6300, 0:6300]
buf = io.BytesIO()
Image.fromarray(((x * 7 + y * 3) % 65536).astype(np.uint16)).save(buf, "PNG", compress_level=1)
data = buf.getvalue()
del x, y
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak to the current RSS
before = peak_kb()
out = decode_image(data, size=100)
print(out.shape, len(data), (peak_kb() - before) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_sixteen_bit_6300px_png_decodes_within_the_memory_budget():
    """Measured, in a fresh process: it used to peak at 1 GB (float64 copies of 40 MP)."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    shape, _, peak_mb = proc.stdout.strip().rpartition(" ")
    assert shape.startswith("(100, 100, 3)")
    assert int(peak_mb) <= 100, proc.stdout


def test_a_photo_larger_than_the_input_is_seen_as_eight_views_a_small_one_as_one():
    from fruits.images import decode_views

    yy, xx = np.mgrid[:480, :640]
    scene = np.stack([xx * 255 // 640, yy * 255 // 480, (xx + yy) % 256], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(scene.astype(np.uint8)).save(buf, format="PNG")
    views = decode_views(buf.getvalue(), size=64, views=8)
    assert views.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(views[1], views[0][:, ::-1])  # the mirror
    np.testing.assert_array_equal(views[3], views[2][:, ::-1])  # the mirrored centre crop
    assert views[4][0, 0, 0] < views[5][0, -1, 0]  # top-left crop sits left of top-right
    small = jpeg_bytes(size=40)
    one = decode_views(small, size=64, views=8)
    assert one.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(one[0], decode_image(small, size=64))


# -- issue 18: bad images never stop a run -------------------------------------------------------


def gray_pair(mode: str, side: int) -> tuple[bytes, bytes]:
    """(a `mode` PNG, an RGB PNG of the very same 8-bit grey values), both side x side."""
    yy, xx = np.mgrid[:side, :side]
    grey = ((xx + yy) * 255 // (2 * side - 2)).astype(np.uint8)  # smooth: resizes agree
    if mode == "1":
        grey = np.where(grey > 127, 255, 0).astype(np.uint8)
        img = Image.fromarray(grey).convert("1", dither=Image.Dither.NONE)
    elif mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)  # 0..65535, 8-bit after scaling
    else:
        img = Image.fromarray(grey)
    assert img.mode == mode
    rgb = Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    return encode(img, "PNG"), encode(rgb, "PNG")


@pytest.mark.parametrize("mode", ["L", "1", "I;16"])
@pytest.mark.parametrize(("side", "views"), [(100, 1), (400, 8)])
def test_grayscale_images_get_as_many_views_as_the_same_rgb_image(mode, side, views):
    """B2: a 100 px grayscale image was enlarged before the size check and got 8 views."""
    from fruits.images import decode_views

    grey, rgb = gray_pair(mode, side)
    got = decode_views(grey, size=224, views=8)
    ref = decode_views(rgb, size=224, views=8)
    assert got.shape == ref.shape == (views, 224, 224, 3)
    if side == 100:  # one view: the plain Pillow decode of the RGB twin, pixel for pixel
        np.testing.assert_array_equal(got[0], _plain_pillow(rgb, 224))
        np.testing.assert_array_equal(got, ref)
    else:  # shrunk in grey then in RGB (the memory-saving path), the RGB twin in one step
        diff = np.abs(got.astype(int) - ref.astype(int))  # a 1-bit edge moves by a pixel
        assert diff.mean() < 1 and (mode == "1" or diff.max() <= 3)


def progressive_jpeg_with_zero_sampling() -> bytes:
    data = bytearray(encode(Image.new("RGB", (16, 16), (200, 40, 40)), "JPEG", progressive=True))
    sof = data.find(b"\xff\xc2")
    for c in range(data[sof + 9]):
        data[sof + 11 + 3 * c] = 0
    return bytes(data)


def test_zero_jpeg_sampling_factors_are_a_reason_not_a_division_by_zero():
    data = progressive_jpeg_with_zero_sampling()
    assert len(data) < 1000  # the file was 606 bytes
    with pytest.raises(ImageError) as err:
        decode_image(data, size=32)
    assert err.value.reason == "corrupt image: invalid JPEG sampling factors"


@pytest.mark.parametrize("exc", [TypeError, ZeroDivisionError, KeyError, IndexError, RuntimeError])
def test_any_decoder_exception_becomes_a_short_reason(monkeypatch, exc):
    """A decoder plugin failing with anything (the TIFF/BLP TypeError of issue 18) is one image's
    reason, with none of the decoder's words in it."""
    from PIL import ImageFile

    def broken_load(self):
        raise exc(f"internal state <object at 0x7f00deadbeef> in /usr/lib/{self.format}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(ImageError) as err:
        decode_image(png_bytes(np.zeros((8, 8, 3), np.uint8)), size=8)
    assert err.value.reason == "corrupt or truncated image: the PNG data is invalid"


def test_a_decoder_running_out_of_memory_is_an_image_too_large_reason(monkeypatch):
    from PIL import ImageFile

    def huge(self):
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", huge)
    with pytest.raises(ImageError, match=r"^image too large to decode in memory$"):
        decode_image(jpeg_bytes(), size=8)


def test_truncated_file_reason_is_short_and_has_no_decoder_internals():
    with pytest.raises(ImageError) as err:
        decode_image(truncated_jpeg(), size=32)
    assert err.value.reason == "corrupt or truncated image: the JPEG data ends early"


def postscript() -> bytes:
    return encode(Image.new("RGB", (16, 16), (1, 2, 3)), "EPS")


def test_eps_never_reaches_its_plugin_nor_ghostscript(monkeypatch):
    from PIL import EpsImagePlugin

    def refuse(*args, **kwargs):
        raise AssertionError("the EPS plugin was asked to parse the file")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", refuse)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    with pytest.raises(ImageError) as err:
        decode_image(postscript(), size=32)
    assert err.value.reason.startswith("not an image we decode: looks like EPS (accepted: JPEG")


@pytest.mark.parametrize(
    ("fmt", "mode"), [("ICO", "RGB"), ("BLP", "P"), ("PPM", "RGB"), ("DDS", "RGB")]
)
def test_formats_we_do_not_need_are_refused_by_name(fmt, mode):
    data = encode(Image.new(mode, (16, 16)), fmt)
    with pytest.raises(ImageError) as err:
        decode_image(data, size=16)
    assert err.value.reason.startswith(f"not an image we decode: looks like {fmt} ")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_accepted_formats_decode(fmt):
    data = encode(Image.new("RGB", (16, 16), (250, 250, 250)), fmt)
    assert decode_image(data, size=16).min() >= 240
