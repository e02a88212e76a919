"""Background composites: studio frames pasted on real backgrounds, and those backgrounds alone.

Why: Fruits-360 frames show one fruit on white; a classifier trained on them learns "white
background" as much as "mango". Left one source out (bench/loso.py, docs/recognition-study.md),
one composite per studio training frame (the fruit, masked, at 55-100 % of the frame on a crop
of a negatives photo, 60 %, or a smooth random texture, 40 %) named 8-10 points more species
right on every held-out real-photo source; the same backgrounds with no fruit, labelled "not a
fruit" (one per two composites), kept the refusal of no-fruit photos within noise (composites
alone cost 5 points on everyday scenes).

The maths here is Spark-free (numpy + Pillow); `composites` is the Spark stage: it runs only on
the training split, writes its rows apart (`_work/augmented.parquet`) and feeds the classifier
only: images.parquet, the PCA and every figure judged stay the real photos'.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fruits.images import ImageError, decode_image

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from fruits.artifact import ModelArtifact
    from fruits.stage import Run

log = logging.getLogger(__name__)

STUDIO_WHITE = 230  # a channel minimum at least this bright is the studio's white
STUDIO_BORDER = 0.5  # share of the border that is white in a studio frame (Fruits-360: 99 % of
# frames >= 0.62, median 0.89, the fruit often touches the edge; real photos: 95 % <= 0.13-0.28)
FRAME_SIZE = 100  # studio frames are decoded at Fruits-360's size before pasting
PHOTO_SHARE = 0.6  # backgrounds: a crop of a negatives photo, else a random texture
POOL_SIZE = 384  # negatives photos shipped to the workers as backgrounds (about 40 KB each)
POOL_SIDE = 448  # their short side once shrunk on the executors
BACKGROUND_EVERY = 2  # one background-only "not a fruit" image per this many composites
AUGMENTED_SCHEMA = (
    "path string, label string, split string, features array<float>, _source int, _bg_source int"
)


def is_studio(img: np.ndarray) -> bool:
    """A studio frame: the fruit on white, so its border is (nearly all) white."""
    h, w = img.shape[:2]
    b = max(1, min(h, w) // 25)
    ring = np.concatenate(
        [
            img[:b].reshape(-1, 3),
            img[-b:].reshape(-1, 3),
            img[:, :b].reshape(-1, 3),
            img[:, -b:].reshape(-1, 3),
        ]
    )
    return float((ring.min(axis=1) >= STUDIO_WHITE).mean()) >= STUDIO_BORDER


def fruit_mask(img: np.ndarray) -> np.ndarray:
    """Soft alpha in [0, 1]: pixels not near-white, opened (specks go), holes filled (a pale
    highlight inside the fruit stays fruit), eroded one pixel and blurred (no white fringe)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageOps

    m = Image.fromarray(((img.min(axis=2) < STUDIO_WHITE) * 255).astype(np.uint8))
    m = m.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
    framed = ImageOps.expand(m, 1, fill=0)  # a white-free ring: the flood reaches all around
    ImageDraw.floodfill(framed, (0, 0), 128)
    inside = (np.asarray(framed)[1:-1, 1:-1] != 128).astype(np.uint8) * 255
    m = Image.fromarray(inside).filter(ImageFilter.MinFilter(3))
    m = m.filter(ImageFilter.GaussianBlur(0.8))
    return np.asarray(m, dtype=np.float32) / 255.0


def background(
    rng: np.random.Generator, size: int, photos: Sequence[np.ndarray]
) -> tuple[np.ndarray, int]:
    """(size, size, 3) float32 canvas and the index of the photo it was cut from (-1: a
    texture): a random square crop of 30-100 % of a photo's short side, else a smooth random
    colour field with noise."""
    from PIL import Image

    if photos and rng.random() < PHOTO_SHARE:
        k = int(rng.integers(len(photos)))
        im = photos[k]
        h, w = im.shape[:2]
        side = max(1, int(min(w, h) * rng.uniform(0.3, 1.0)))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = Image.fromarray(im[y : y + side, x : x + side]).resize((size, size))
        return np.asarray(crop, dtype=np.float32), k
    low = rng.uniform(0, 255, (int(rng.integers(2, 9)),) * 2 + (3,)).astype(np.uint8)
    field = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
    noisy = np.asarray(field, dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.float32), -1


def paste(canvas: np.ndarray, fruit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The masked fruit at 55-100 % of the canvas side, at a random place; uint8."""
    from PIL import Image

    size = canvas.shape[0]
    side = int(size * rng.uniform(0.55, 1.0))
    x, y = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    f = np.asarray(Image.fromarray(fruit).resize((side, side)), dtype=np.float32)
    alpha = Image.fromarray((fruit_mask(fruit) * 255).astype(np.uint8)).resize((side, side))
    a = np.asarray(alpha, dtype=np.float32)[..., None] / 255.0
    out = canvas.copy()
    out[y : y + side, x : x + side] = out[y : y + side, x : x + side] * (1 - a) + f * a
    return cast(np.ndarray, np.clip(out, 0, 255).astype(np.uint8))  # numpy's stubs: Any


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def seed_of(path: str) -> int:
    """Each frame's own random draws, the same in every run and on every worker."""
    return zlib.crc32(path.encode("utf-8"))


def augment_frame(
    data: bytes, path: str, size: int, photos: Sequence[np.ndarray]
) -> list[tuple[str, bytes, int]]:
    """A studio frame -> [("composite", JPEG, photo index)] plus, for every
    `BACKGROUND_EVERY`-th frame, ("background", JPEG, photo index): another background alone.
    Anything else (a real photo, an image that does not decode) -> []."""
    try:
        frame = decode_image(data, size=FRAME_SIZE)
        if not is_studio(frame):
            return []
        rng = np.random.default_rng(seed_of(path))
        canvas, k = background(rng, size, photos)
        out = [("composite", jpeg(paste(canvas, frame, rng)), k)]
        if seed_of(path) % BACKGROUND_EVERY == 0:
            alone, k2 = background(rng, size, photos)
            out.append(("background", jpeg(alone), k2))
        return out
    except ImageError:  # featurize quarantined it already, with its reason
        return []
    except Exception as exc:  # one frame's surprise must not stop the run (issue 18's rule)
        log.warning("augment: no composite for one frame: %s", type(exc).__name__)
        return []


def shrink_photo(data: bytes) -> bytes | None:
    """A negatives photo as a background: upright, short side `POOL_SIDE`, JPEG (shipped)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (POOL_SIDE, POOL_SIDE))
            img = ImageOps.exif_transpose(im).convert("RGB")
    except Exception:  # a bad negatives photo is simply no background (featurize reports it)
        return None
    scale = POOL_SIDE / min(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    return jpeg(np.asarray(img))


# -- the Spark stage -------------------------------------------------------------------------


@dataclass
class Augmented:
    """What `composites` made: the rows (for the classifier) and how many of each kind."""

    rows: DataFrame
    composites: int
    backgrounds: int
    background_photos: int

    def summary(self) -> dict[str, int]:
        return {
            "composites": self.composites,
            "backgrounds": self.backgrounds,
            "background_photos": self.background_photos,
        }


def composites(
    run: Run, files: DataFrame, source: Column, roles: list[str], artifact: ModelArtifact
) -> Augmented | None:
    """The training split's studio frames as composites (their own label) and backgrounds
    alone ("not a fruit"), featurized like any image, with the source of the frame and of the
    background photo (-1: a texture) so that leave-one-source-out fits can drop both. None
    when the run has no negatives to cut backgrounds from or no studio frame. `source`: the
    index into `roles` of the source a row's path lies under (classify.source_column);
    `artifact`: the network the featurize stage used (built once per run)."""
    from pyspark.sql import functions as F

    from fruits.arrow import batch_contents
    from fruits.engine import featurize_contents, worker_featurizer
    from fruits.features import threads_per_task
    from fruits.recognition import NEGATIVE
    from fruits.spark import Session

    negatives = [n for n, role in enumerate(roles) if role == "negatives"]
    labelled = [n for n, role in enumerate(roles) if role == "labelled"]
    if not negatives:
        log.info("augment: no negatives to cut backgrounds from; no composites")
        return None
    cfg, spark, session = run.cfg, run.spark, Session(run.spark)
    fcfg = cfg.featurizer
    size = fcfg.image_size
    extra = [c for c in ("_local",) if c in files.columns]
    train = files.where(F.col("split") == "train").withColumn("_source", source)

    def shrink(batches: Iterable[Any]) -> Iterator[Any]:
        import pyarrow as pa

        for rows in batches:
            small = [None if c is None else shrink_photo(c) for c in batch_contents(rows)]
            yield pa.RecordBatch.from_arrays(
                [rows.column("_source"), pa.array(small, pa.binary())], ["_source", "photo"]
            )

    pool_rows = (
        train.where(F.col("_source").isin(negatives) & (F.col("label") == NEGATIVE))
        .orderBy(F.xxhash64("path"))
        .limit(POOL_SIZE)
        .select("_source", "content", *extra)
        .mapInArrow(shrink, "_source int, photo binary")
        .where(F.col("photo").isNotNull())
        .collect()
    )
    pool = [(int(r["_source"]), bytes(r["photo"])) for r in pool_rows]
    shipped = session.ship(pool)
    art = session.ship(artifact)
    threads = threads_per_task(fcfg, spark)
    label_of = {"composite": None, "background": NEGATIVE}

    def make(batches: Iterable[Any]) -> Iterator[Any]:
        import pyarrow as pa

        got = shipped.value if hasattr(shipped, "value") else shipped
        photos = decoded_pool([b for _, b in got])
        fz, batch = worker_featurizer(art, artifact.fingerprint, fcfg, threads)
        for rows in batches:
            paths = rows.column("path").to_pylist()
            labels = rows.column("label").to_pylist()
            sources = rows.column("_source").to_pylist()
            made: list[tuple[str, str, int, int, bytes]] = []
            for path, label, src, data in zip(
                paths, labels, sources, batch_contents(rows), strict=True
            ):
                if data is None:
                    continue
                for kind, image, k in augment_frame(data, path, size, photos):
                    bg_source = got[k][0] if k >= 0 else -1
                    made.append((f"{path}#{kind}", label_of[kind] or label, src, bg_source, image))
            if not made:
                continue
            feats, _ = featurize_contents(
                fz, [m[4] for m in made], size=size, max_pixels=fcfg.max_pixels, batch_size=batch
            )
            keep = [i for i, f in enumerate(feats) if f is not None]
            vectors = [np.asarray(feats[i], dtype=np.float32) for i in keep]
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array([made[i][0] for i in keep], pa.string()),
                    pa.array([made[i][1] for i in keep], pa.string()),
                    pa.array(["train"] * len(keep), pa.string()),
                    pa.array(vectors, pa.list_(pa.float32())),
                    pa.array([made[i][2] for i in keep], pa.int32()),
                    pa.array([made[i][3] for i in keep], pa.int32()),
                ],
                ["path", "label", "split", "features", "_source", "_bg_source"],
            )

    frames = train.where(F.col("_source").isin(labelled)).select(
        "path", "label", "_source", "content", *extra
    )
    work = run.uri("_work", "augmented.parquet")
    session.describe(f"fruits {run.run_id}: augment")
    try:
        frames.mapInArrow(make, AUGMENTED_SCHEMA).write.parquet(work)
    finally:
        session.describe(None)
    out = spark.read.parquet(work)
    counts = {r["kind"]: r["n"] for r in _kinds(out).collect()}
    made = Augmented(out, counts.get("composite", 0), counts.get("background", 0), len(pool))
    log.info("augment: %s", made.summary())
    return made if counts else None


_POOL: dict[int, list[np.ndarray]] = {}  # per worker process: the decoded backgrounds


def decoded_pool(photos: list[bytes]) -> list[np.ndarray]:
    """The shipped backgrounds as pixels, decoded once per worker process (a task reuses the
    previous task's), keyed by their content."""
    from PIL import Image

    key = zlib.crc32(b"".join(p[:64] + len(p).to_bytes(8, "little") for p in photos))
    if key not in _POOL:
        _POOL.clear()
        decoded = []
        for data in photos:
            with Image.open(io.BytesIO(data)) as im:
                decoded.append(np.asarray(im.convert("RGB")))
        _POOL[key] = decoded
    return _POOL[key]


def _kinds(df: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    kind = F.substring_index(F.col("path"), "#", -1)
    return df.groupBy(kind.alias("kind")).agg(F.count(F.lit(1)).alias("n"))
