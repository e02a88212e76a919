"""Background composites (augment.py), Spark-free: which images count as studio frames, the
fruit's mask, and that each frame's composite is the same on every run and every worker.
References are hand-made images whose answer is known by construction."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from fruits.augment import (
    STUDIO_WHITE,
    augment_frame,
    fruit_mask,
    is_studio,
    seed_of,
    shrink_photo,
)
from fruits.images import decode_image


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _studio(radius: int = 30, highlight: int = 6) -> Image.Image:
    """A red disc with a white highlight inside it, on white: a Fruits-360-like frame."""
    img = Image.new("RGB", (100, 100), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.ellipse((50 - radius, 50 - radius, 50 + radius, 50 + radius), fill=(200, 30, 30))
    d.ellipse((40 - highlight, 40 - highlight, 40 + highlight, 40 + highlight), fill="white")
    return img


def test_studio_frames_are_told_from_photos(sample_dir):
    frames = sorted((sample_dir / "Training").glob("*/*.jpg"))[::12]
    assert all(is_studio(decode_image(f.read_bytes(), size=100)) for f in frames)
    rng = np.random.default_rng(0)
    table = Image.new("RGB", (240, 180), (120, 90, 60))  # a fruit on a table: no white border
    table.paste(Image.open(frames[0]).convert("RGB"), (70, 40))
    noise = Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8))
    for photo in (table, noise):
        assert not is_studio(decode_image(_jpeg(photo), size=100))


def test_the_mask_covers_the_fruit_and_its_highlight_not_the_white():
    img = np.asarray(_studio())
    alpha = fruit_mask(img)
    assert alpha.shape == (100, 100) and alpha.dtype == np.float32
    assert alpha[50, 50] > 0.99 and alpha[40, 40] > 0.99  # the white highlight is fruit
    assert alpha[:5, :5].max() < 0.01 and alpha[95:, 95:].max() < 0.01
    disc = np.pi * 30**2 / 100**2  # the disc's share of the frame, by hand
    assert abs(float(alpha.mean()) - disc) < 0.03
    yy, xx = np.mgrid[:100, :100]
    r = np.hypot(yy - 50, xx - 50)  # by geometry: inside the disc is fruit, outside is not
    assert alpha[r < 27].min() > 0.95 and alpha[r > 33].max() < 0.05


def test_a_frame_gives_the_same_composite_everywhere_and_a_photo_gives_none():
    data = _jpeg(_studio())
    photos = [np.full((300, 400, 3), (30, 140, 60), np.uint8)]
    paths = [f"file:/d/Apple Red 1/{i}_100.jpg" for i in range(12)]
    for path in paths:
        made = augment_frame(data, path, 224, photos)
        assert made == augment_frame(data, path, 224, photos)  # deterministic per path
        kinds = [k for k, _, _ in made]
        assert kinds == (["composite", "background"] if seed_of(path) % 2 == 0 else ["composite"])
        comp = decode_image(made[0][1], size=224)
        assert comp.shape == (224, 224, 3)
        # the studio white is gone from the corners; the red fruit is there
        corners = np.concatenate([comp[:8, :8], comp[:8, -8:], comp[-8:, :8], comp[-8:, -8:]])
        assert (corners.reshape(-1, 3).min(axis=1) >= STUDIO_WHITE).mean() < 0.5
        red = (comp[..., 0] > 150) & (comp[..., 1] < 90) & (comp[..., 2] < 90)
        assert red.mean() > 0.05
    assert len({augment_frame(data, p, 224, photos)[0][1] for p in paths}) == len(paths)
    assert (
        augment_frame(_jpeg(Image.new("RGB", (100, 100), (90, 60, 40))), paths[0], 224, photos)
        == []
    )
    assert augment_frame(b"not an image", paths[0], 224, photos) == []
    assert augment_frame(data[: len(data) // 2], paths[0], 224, photos) == []  # truncated


def test_a_surprise_from_one_frame_is_no_composite_not_a_failed_run(monkeypatch):
    """As in featurize (issue 18): anything raised while making one frame's composite costs
    that frame its composite, never the task or the run."""
    import fruits.augment as augment

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(augment, "paste", broken)
    assert augment.augment_frame(_jpeg(_studio()), "file:/d/x.jpg", 224, []) == []


def test_background_photos_are_shrunk_upright_and_bad_ones_dropped():
    big = Image.new("RGB", (1200, 900), (10, 200, 10))
    small = Image.open(io.BytesIO(shrink_photo(_jpeg(big)))) if shrink_photo(_jpeg(big)) else None
    assert small is not None and min(small.size) == 448 and small.size[0] > small.size[1]
    assert shrink_photo(b"\xff\xd8 truncated") is None
