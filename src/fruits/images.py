"""Per-image maths: bytes -> RGB pixels at the model's size. Shared by the Spark UDF and the API.

Every failure becomes an `ImageError` with a short reason a person can read (no decoder
internals, memory addresses or paths: the API returns it as is), so callers can quarantine the
file instead of crashing a run. Only the decoders in `ACCEPTED_FORMATS` ever see the bytes.

What one decode may cost is known from the header before any pixel is decoded: the pixel count
(`max_pixels`) and the bytes the decoder and our conversions will hold at once (`decode_cost`,
checked against `max_decode_bytes`). A small file can describe a huge image (a 6300 x 6300 16-bit
PNG compresses to a few hundred KB), so the file size says nothing about the memory it needs.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

# Pillow's own bomb check only warns below 2x its limit; we enforce our limits explicitly.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

log = logging.getLogger(__name__)

# The decoders a photo of fruit needs: JPEG (MPO, the phones' multi-picture JPEG, opens through
# it), PNG, WebP, GIF and BMP (what cameras, phones and the web write, all accepted by the API),
# and TIFF, the only one that carries the 16/32-bit and float grayscale of scanners and lab
# cameras (`HIGH_BIT_MODES`). Every other Pillow plugin is refused before it parses a byte:
# EPS/PS would hand the file to a Ghostscript subprocess, and icon, game-texture and scientific
# formats (ICO, BLP, DDS, FITS, PSD...) only widen what a crafted file can reach.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF"

DEFAULT_MAX_PIXELS = 40_000_000
# 100 MiB holds a 24 MP RGB PNG (6000 x 4000, 4 bytes a pixel in Pillow), a 6300 x 6300 16-bit
# grayscale PNG (2 bytes a pixel) or a 12 MP progressive JPEG; see `decode_cost`.
DEFAULT_MAX_DECODE_BYTES = 100 * 2**20

CROP_SIDE = 0.8  # photo views: crops of 80% of the side (decode_views)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# MPO: a JPEG with extra pictures (depth maps, previews), as many phones write them; Pillow opens
# its first picture with the JPEG decoder, draft included.
JPEG_FORMATS = ("JPEG", "MPO")
ALPHA_MODES = ("RGBA", "LA", "PA")

# EXIF Orientation -> the transposition that makes the picture upright (the table of
# PIL.ImageOps.exif_transpose, which we do not call: it copies even upright images and
# re-serialises the EXIF block, work thrown away here).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

UNDECODABLE = "corrupt or truncated image: the image data is invalid"

# Measured peak memory of Pillow's WebP decoder for a 6000 x 4000 photo: 377 MB, about 16 bytes
# a pixel, i.e. three RGBA frames on top of the image it returns.
_WEBP_DECODER_BYTES_PER_PIXEL = 12


class ImageError(ValueError):
    """An input that cannot become pixels; `reason` is what the quarantine table records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def stored_bytes_per_pixel(mode: str) -> int:
    """Bytes a pixel of `mode` takes in Pillow's memory: 1 for "1", "L" and "P", 2 for the
    16-bit modes, 4 for every other mode (Pillow pads RGB to 4 bytes; "I" and "F" are 32-bit)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def _working_bytes_per_pixel(img: Image.Image) -> int:
    """Full-size copies `_to_rgb` makes on top of the decoded image, in bytes a pixel."""
    if img.mode in ("RGB", "L") or img.mode in HIGH_BIT_MODES:
        return 0  # RGB is used as is; the others are shrunk before they are converted
    if img.mode == "1":
        return 1  # to L, then shrunk
    if _has_alpha(img):
        # an RGBA copy (unless it is RGBA already), its alpha channel, the white background
        return (0 if img.mode == "RGBA" else 4) + 1 + 4
    return 4  # P, CMYK, YCbCr...: one conversion to RGB


def _jpeg_coefficient_bytes(img: Image.Image, full_size: tuple[int, int]) -> int:
    """A progressive JPEG is decoded from whole-image DCT coefficient buffers (libjpeg keeps
    every scan's coefficients, 2 bytes a sample, at full resolution whatever the draft scale):
    measured 73 MB for a 6000 x 4000 4:2:0 photo, 141 MB at 4:4:4."""
    if img.format not in JPEG_FORMATS or not img.info.get("progressive"):
        return 0
    width, height = full_size
    layers = getattr(img, "layer", None) or [(None, 1, 1, None)] * len(img.getbands())
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    if min(min(h, v) for _, h, v, _ in layers) <= 0:  # libjpeg refuses them too, on load
        raise ImageError("corrupt image: invalid JPEG sampling factors")
    samples = sum(h * v for _, h, v, _ in layers) / (h_max * v_max)
    return int(width * height * samples * 2)


def decode_cost(
    img: Image.Image, *, transpose: bool = False, full_size: tuple[int, int] | None = None
) -> int:
    """Bytes an opened, not yet loaded image will hold at its peak while `decode_image` turns it
    into pixels: the decoded image (width x height x `stored_bytes_per_pixel`), the full-size
    copies of the conversion to RGB, the transposed copy when EXIF asks for one, and what the
    decoder itself buffers (progressive JPEG, WebP). Read from the header only. Call it after
    `draft`, which shrinks a JPEG's size to what will really be decoded; `full_size` is the size
    before the draft (default: the current size)."""
    width, height = img.size
    pixels = width * height
    stored = stored_bytes_per_pixel(img.mode)
    cost = pixels * (stored + _working_bytes_per_pixel(img))
    if transpose:
        cost += pixels * stored
    if img.format == "WEBP":
        cost += pixels * _WEBP_DECODER_BYTES_PER_PIXEL
    return cost + _jpeg_coefficient_bytes(img, full_size or img.size)


def _orientation(img: Image.Image) -> int:
    """EXIF Orientation (1 = upright) without decoding any pixel."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # PngImageFile.getexif() would decode the pixels to find a late eXIf chunk
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a broken EXIF block costs the photo its rotation, not its pixels
        return 1
    return value if value in _UPRIGHT else 1


def _shrink(img: Image.Image, size: int) -> Image.Image:
    """Reduce each side to at most `size`, never enlarge: enlarging is `_square`'s job, after
    the conversion to RGB, so a small grayscale image keeps its own size (and `decode_views`
    sees it as small, like the same image in RGB)."""
    target = (min(img.width, size), min(img.height, size))
    if img.size == target:
        return img
    if img.mode.startswith("I;16"):  # Pillow's reduce() refuses 16-bit modes: plain bilinear
        return img.resize(target, Image.Resampling.BILINEAR)
    return img.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)


def _high_bit_to_rgb(img: Image.Image, size: int) -> Image.Image:
    """16/32-bit grayscale: shrink in the image's own mode first, then scale the (at most
    size x size) result to 8 bits, so no full-size float copy is ever made (it used to be
    float64: 8 bytes a pixel plus temporaries, 1 GB for a 6300 x 6300 PNG)."""
    _, high = img.getextrema()
    top = 65535.0 if float(high) > 255 else 255.0  # type: ignore[arg-type]  # one band: a number
    small = np.asarray(_shrink(img, size), dtype=np.float32)
    arr8 = np.clip(small * np.float32(255.0 / top) + np.float32(0.5), 0, 255).astype(np.uint8)
    return Image.fromarray(arr8).convert("RGB")


def _to_rgb(img: Image.Image, size: int) -> Image.Image:
    """Bring every mode (L, LA, P, RGBA, CMYK, I;16, F...) to 8-bit RGB on a white background,
    because Fruits-360 fruits sit on white and alpha should not turn into black. Grayscale modes
    come back with no side over `size`: shrinking before the conversion gives the same pixels
    for L (one channel or three, bilinear treats each alike) at a quarter of the memory. They
    are never enlarged here: a 100 px grayscale image stays 100 px, as an RGB one does, so
    `decode_views` gives both one view (enlarged first, it got eight)."""
    if _has_alpha(img):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in HIGH_BIT_MODES:
        return _high_bit_to_rgb(img, size)
    if img.mode in ("L", "1"):
        return _shrink(img.convert("L") if img.mode == "1" else img, size).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def decode_image(
    data: bytes,
    *,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> np.ndarray:
    """Decode one encoded image to an upright (size, size, 3) uint8 array.

    Everything that bounds the cost happens before decoding, from the header: the pixel count
    (`max_pixels`), then a JPEG's `draft` (libjpeg decodes at 1/2, 1/4 or 1/8 scale, the smallest
    still >= size: a 12 MP phone photo is decoded at 500 x 375 for 100 px), then the memory the
    decode will hold (`decode_cost` against `max_decode_bytes`). The EXIF orientation is applied
    after the draft reduction, where the copy is small.
    """
    img = decode_upright(data, size, max_pixels, max_decode_bytes)
    return _square(img, size)


def decode_views(
    data: bytes,
    *,
    size: int,
    views: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> np.ndarray:
    """(n, size, size, 3): the whole image, and for a photo larger than the model input
    (`views` = 8) its mirror and five crops of 80% side (centre, mirrored centre, 4 corners).

    Why: a phone photo of a crate shrunk whole to the model input keeps little of the fruit;
    averaging the CNN features of these views lifted real-photo accuracy by 5-8 points in
    docs/recognition-study.md. Studio frames no larger than the input stay one view, so
    Fruits-360 costs nothing more. Pipeline and API both call this: one code path.
    """
    if views <= 1:
        return decode_image(
            data, size=size, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes
        )[None]
    big = round(size / CROP_SIDE)
    img = decode_upright(data, big, max_pixels, max_decode_bytes)
    whole = _square(img, size)
    if min(img.size) <= size:
        return whole[None]
    large = _square(img, big)
    o, e = (big - size) // 2, big - size
    centre = large[o : o + size, o : o + size]
    out = [
        whole,
        whole[:, ::-1],
        centre,
        centre[:, ::-1],
        large[:size, :size],
        large[:size, e:],
        large[e:, :size],
        large[e:, e:],
    ]
    return np.ascontiguousarray(np.stack(out[:views]))


def _square(img: Image.Image, size: int) -> np.ndarray:
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def decode_upright(data: bytes, size: int, max_pixels: int, max_decode_bytes: int) -> Image.Image:
    """The decoded RGB image, upright, reduced (draft, shrink) no smaller than `size`, within the
    pipeline's bounds: one decode for the views, the API and the contributions' thumbnails."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    img_format = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            img_format = img.format
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageError(f"invalid dimensions {width}x{height}")
            if width * height > max_pixels:
                raise ImageError(
                    f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels}"
                )
            if img.format in JPEG_FORMATS:
                img.draft("RGB", (size, size))
            orientation = _orientation(img)
            cost = decode_cost(img, transpose=orientation != 1, full_size=(width, height))
            if cost > max_decode_bytes:
                raise ImageError(
                    f"image too large to decode: {width}x{height} {img.mode} needs about "
                    f"{cost / 2**20:.0f} MB of memory, over the limit of "
                    f"{max_decode_bytes / 2**20:.0f} MB"
                )
            img.load()
            if orientation != 1:
                img = img.transpose(_UPRIGHT[orientation])
            return _to_rgb(img, size)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(_unidentified_reason(data)) from None
    except MemoryError:
        # Decoding is bounded beforehand (`max_decode_bytes`), and Linux overcommits, so a
        # MemoryError here is a decoder asking for an absurd buffer the file describes: the
        # file's fault, deterministic, so a quarantine reason (and the API's "too large").
        raise ImageError("image too large to decode in memory") from None
    except Exception as exc:  # any decoder failure is this file's reason, never the batch's
        raise ImageError(_corrupt_reason(exc, img_format)) from None


def _unidentified_reason(data: bytes) -> str:
    """Name a format Pillow knows but we refuse (from its magic bytes only: no plugin parses
    the file), else say the content is not an image."""
    prefix = data[:16]
    Image.init()
    for name in list(Image.ID):
        accept = Image.OPEN.get(name, (None, None))[1]
        if name in ACCEPTED_FORMATS or accept is None:
            continue  # no magic-bytes test (TGA, IM...): cannot be told from noise
        try:
            hit = accept(prefix)
        except Exception:  # a plugin's test failing on a short prefix: not that format
            continue
        if hit and not isinstance(hit, str):
            return f"not an image we decode: looks like {name} (accepted: {_FORMAT_NAMES})"
    return "not an image: format not recognised"


def _corrupt_reason(exc: Exception, img_format: str | None) -> str:
    """A short, fixed reason for a decoder failure: the decoders' own messages name buffers,
    memory addresses and internal states, which mean nothing to a person and should not leave
    the service; the exception type goes to the log for whoever debugs."""
    log.debug("decoder failure: %s", type(exc).__name__)
    what = f"the {img_format} data" if img_format else "the image data"
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "truncat" in text or "premature end" in text:
        return f"corrupt or truncated image: {what} ends early"
    return f"corrupt or truncated image: {what} is invalid"


def decode_many(
    contents: list[bytes | None],
    *,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> tuple[np.ndarray, list[str | None]]:
    """Decode a batch; bad items get a reason and a zero image so batch shapes stay fixed."""
    pixels = np.zeros((len(contents), size, size, 3), dtype=np.uint8)
    errors: list[str | None] = [None] * len(contents)
    for i, data in enumerate(contents):
        try:
            pixels[i] = decode_image(
                data or b"", size=size, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes
            )
        except ImageError as exc:
            errors[i] = exc.reason
        except Exception:  # decode_image maps every decoder failure; this is the last guard
            errors[i] = UNDECODABLE
    return pixels, errors
