"""Per-image maths: bytes -> RGB pixels at the model's size. Shared by the Spark UDF and the API.

Every failure becomes an `ImageError` with a reason a person can read, so callers can quarantine
the file instead of crashing a run.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# Pillow's own bomb check only warns below 2x its limit; we enforce our limit explicitly.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An input that cannot become pixels; `reason` is what the quarantine table records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    """Bring every mode (L, LA, P, RGBA, CMYK, I;16, F...) to 8-bit RGB on a white background,
    because Fruits-360 fruits sit on white and alpha should not turn into black."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def decode_image(data: bytes, *, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one encoded image to a (size, size, 3) uint8 array.

    The pixel count is checked from the header before decoding, so a decompression bomb costs
    nothing. Large JPEGs are decoded at a reduced scale (`draft`) since we downsample anyway.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageError(f"invalid dimensions {width}x{height}")
            if width * height > max_pixels:
                raise ImageError(
                    f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels}"
                )
            if img.format == "JPEG":
                img.draft("RGB", (size, size))
            img.load()
            img = _to_rgb(img)
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
            return np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image: format not recognised") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    except MemoryError:
        raise ImageError("image too large to decode in memory") from None


def decode_many(
    contents: list[bytes | None], *, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, list[str | None]]:
    """Decode a batch; bad items get a reason and a zero image so batch shapes stay fixed."""
    pixels = np.zeros((len(contents), size, size, 3), dtype=np.uint8)
    errors: list[str | None] = [None] * len(contents)
    for i, data in enumerate(contents):
        try:
            pixels[i] = decode_image(data or b"", size=size, max_pixels=max_pixels)
        except ImageError as exc:
            errors[i] = exc.reason
    return pixels, errors
