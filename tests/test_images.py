import numpy as np
import pytest
from imagegen import bomb_png, corrupt_header, jpeg_bytes, png16_bytes, png_bytes, truncated_jpeg

from fruits.images import ImageError, decode_image, decode_many


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
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
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
