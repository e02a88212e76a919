"""Fine-tune the backbone on the run's sources, with Spark's own distributed trainer.

Why (issue 21, lever 4): every frozen-feature lever measured left one source out moved one
held-out source up and another down (docs/recognition-study.md); what is left is to let the
network itself learn fruit across kinds of photo. This is the step that does it, built so the
rest of the chain is unchanged: it writes backbone weights, and `fruits run --weights` turns
them into the ONNX graph that the pipeline, the API and the MLflow model use as today.

How, in one pass over the same sources as `fruits run` (same ingest, labels, label maps and
splits, so the validation photos a later run judges on are never trained on):
- the training split's rows (class index, source index, bytes) are written as Parquet in the
  run's staging folder by Spark;
- `pyspark.ml.torch.distributor.TorchDistributor` runs `train` in N processes (torchrun; local
  processes under a local master, barrier tasks on a cluster), CUDA where asked for and present;
- each epoch draws its rows again, every source the same weight, and each image its
  augmentation again (a random crop of 60-100 %, a mirror, colour; half the studio frames
  pasted on a crop of a negatives photo, `fruits.augment`'s own paste);
- the loss is cross-entropy on a new linear head plus L2-SP (the squared distance of the
  backbone's weights from the pretrained ones), so a few thousand narrow photos pull the
  network only as far as they must; batch-norm statistics stay the pretrained ones (small
  batches on a CPU would estimate them badly);
- rank 0 saves the backbone's state dict (the layout `--weights` loads) and the run publishes
  it with a report (per-epoch loss and train accuracy, rows per source, seconds, device).

Decoding is `fruits.images.decode_image` (EXIF-upright, sized to the model input) and the
scaling `fruits.engine.normalise`: the network learns on the pixels it will see in the
pipeline. Needs the `export` extra (torch and the weights packages).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fruits.common import InputError, local_path
from fruits.images import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from fruits.config import PipelineConfig
    from fruits.stage import Run

log = logging.getLogger(__name__)

WEIGHTS_FILE = "backbone-weights.pt"  # in the output's models/: what `--weights` reads
HEAD_FILE = "backbone-weights-head.npz"  # beside it: the head trained with it (for studies)
CROP_MIN = 0.6  # a random square crop of 60-100 % of the (squared) image's side
COLOUR = 0.25  # brightness, contrast, saturation each scaled by 1 +- this
COMPOSITE_SHARE = 0.5  # studio frames pasted on a negatives photo (when there are negatives)
POOL_MAX = 256  # negatives photos kept as backgrounds


@dataclass(frozen=True)
class FinetuneConfig:
    """How the backbone is fine-tuned; recorded in the output's report."""

    epochs: int = 3
    image_size: int = 224
    batch_size: int = 32
    lr: float = 1e-4  # the backbone's; 0 trains the head alone (a linear probe, the baseline)
    head_lr: float = 0.0  # 0: 10x lr
    l2sp: float = 1e-2  # weight of ||w - w_pretrained||^2 / 2 in the loss
    processes: int = 1
    gpu: bool = False
    seed: int = 0
    steps_per_epoch: int = 0  # 0: as many draws as training rows, shared by the processes
    max_pixels: int = DEFAULT_MAX_PIXELS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- per image: the augmentation (numpy + Pillow, no torch) ----------------------------------


def augment_image(
    data: bytes,
    size: int,
    rng: np.random.Generator,
    pool: list[np.ndarray],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """One training view of an encoded image: (size, size, 3) uint8, drawn anew on every call.

    Decoded by the pipeline's own `decode_image` at 1/CROP_MIN of the input so the crop keeps
    detail; a studio frame (white border) goes on a crop of a negatives photo with probability
    COMPOSITE_SHARE; then a random square crop, a mirror, brightness, contrast and saturation.
    Raises `fruits.images.ImageError` for an image the pipeline would quarantine."""
    from PIL import Image, ImageEnhance

    from fruits.augment import FRAME_SIZE, background, is_studio, paste
    from fruits.images import decode_image

    big = round(size / CROP_MIN)
    img = decode_image(data, size=big, max_pixels=max_pixels)
    if pool and rng.random() < COMPOSITE_SHARE:
        small = np.asarray(Image.fromarray(img).resize((FRAME_SIZE, FRAME_SIZE)))
        if is_studio(small):
            canvas, _ = background(rng, big, pool)
            img = paste(canvas, img, rng)
    side = max(1, round(big * rng.uniform(CROP_MIN, 1.0)))
    x, y = (int(rng.integers(0, big - side + 1)) for _ in range(2))
    out = Image.fromarray(img[y : y + side, x : x + side]).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(float(rng.uniform(1 - COLOUR, 1 + COLOUR)))
    return np.asarray(out, dtype=np.uint8)


def draw_rows(sources: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` row indices drawn with replacement, each source (an int per row) the same share:
    a row's probability is 1 / (sources x rows of its source). Why: Fruits-360 has ten times
    the rows of any photo source, and a model fitted in proportion learns its studio."""
    _, inverse, counts = np.unique(sources, return_inverse=True, return_counts=True)
    p = 1.0 / (len(counts) * counts[inverse])
    return rng.choice(len(sources), size=n, replace=True, p=p / p.sum())


# -- the training function TorchDistributor runs in every process ---------------------------


def _read_rows(uri: str) -> Any:
    """The training rows' Parquet (local path or any fsspec URI) as an Arrow table."""
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(uri)
    return pq.read_table(path, filesystem=fs, columns=["y", "source", "negative", "content"])


def train(
    rows_uri: str,
    n_classes: int,
    cfg: dict[str, Any],
    backbone: str,
    weights: bytes | None,
    out_path: str,
) -> dict[str, Any]:
    """Fine-tune `backbone` in this process (one of TorchDistributor's); rank 0 writes the
    backbone's state dict to `out_path` (the head beside it, HEAD_FILE) and returns the
    per-epoch figures."""
    import os

    import torch
    import torch.distributed as dist
    from torch import nn

    from fruits.engine import normalise
    from fruits.images import ImageError
    from fruits.models import build_torch, get_spec

    c = FinetuneConfig(**cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = c.gpu and torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if use_cuda else "cpu")
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if not use_cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, world)))
    torch.manual_seed(c.seed)

    table = _read_rows(rows_uri)
    ys = table.column("y").to_numpy()
    sources = table.column("source").to_numpy()
    negative = table.column("negative").to_numpy(zero_copy_only=False)
    contents = table.column("content").to_pylist()
    pool = _background_pool([contents[i] for i in np.flatnonzero(negative)[:POOL_MAX]])

    spec = get_spec(backbone)
    features = build_torch(backbone, weights)  # pixels -> pooled features, pretrained
    head = nn.Linear(spec.feature_dim, n_classes)
    model = nn.Sequential(features, head).to(device)
    anchor = [p.detach().clone() for p in features.parameters()]
    groups = [
        {"params": list(head.parameters()), "lr": c.head_lr or c.lr * 10, "weight_decay": 1e-4}
    ]
    if c.lr > 0:
        groups.append({"params": list(features.parameters()), "lr": c.lr, "weight_decay": 0.0})
    else:  # a linear probe: no gradient through the backbone at all
        features.requires_grad_(False)
    opt = torch.optim.AdamW(groups)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if use_cuda else None)

    per_rank = c.steps_per_epoch * c.batch_size or -(-len(ys) // world)
    epochs = []
    for epoch in range(c.epochs):
        t0 = time.perf_counter()
        model.train()
        for m in model.modules():  # pretrained batch-norm statistics stay
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        order = draw_rows(sources, per_rank * world, np.random.default_rng([c.seed, epoch]))
        mine = order[rank::world]
        rng = np.random.default_rng([c.seed, epoch, rank, 1])
        seen = right = 0
        total_loss = 0.0
        for start in range(0, len(mine), c.batch_size):
            pixels, labels = [], []
            for i in mine[start : start + c.batch_size]:
                try:
                    pixels.append(augment_image(contents[i], c.image_size, rng, pool, c.max_pixels))
                    labels.append(int(ys[i]))
                except ImageError:  # the pipeline quarantines it; here it is simply not drawn
                    continue
            if not pixels:
                continue
            x = torch.from_numpy(normalise(np.stack(pixels), spec)).to(device)
            y = torch.tensor(labels, device=device)
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y)
            total = loss
            if c.lr > 0 and c.l2sp > 0:  # a frozen backbone never drifts
                drift = sum(
                    ((p - a) ** 2).sum() for p, a in zip(features.parameters(), anchor, strict=True)
                )
                total = loss + c.l2sp / 2 * drift
            opt.zero_grad()
            total.backward()  # type: ignore[no-untyped-call]  # torch stubs
            opt.step()
            seen += len(labels)
            right += int((logits.argmax(1) == y).sum())
            total_loss += float(loss.detach()) * len(labels)
        figures = torch.tensor([seen, right, total_loss], dtype=torch.float64)
        if world > 1:
            figures = figures.to(device)
            dist.all_reduce(figures)
        n, ok, lsum = (float(v) for v in figures.cpu())
        epochs.append(
            {
                "epoch": epoch + 1,
                "images": int(n),
                "loss": lsum / max(n, 1),
                "train_accuracy": ok / max(n, 1),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        if rank == 0:  # TorchDistributor streams it to the driver's console
            e = epochs[-1]
            print(
                f"finetune epoch {e['epoch']}/{c.epochs}: loss {e['loss']:.3f}, train accuracy "
                f"{100 * e['train_accuracy']:.1f} % on {e['images']} images, {e['seconds']} s",
                flush=True,
            )
    if rank == 0:
        buf = io.BytesIO()
        torch.save(_state_dict(features), buf)
        with open(out_path, "wb") as fh:
            fh.write(buf.getvalue())
        np.savez(  # the head trained with it: for studies judging the network alone
            os.path.join(os.path.dirname(out_path), HEAD_FILE),
            weight=head.weight.detach().cpu().numpy(),
            bias=head.bias.detach().cpu().numpy(),
        )
    if world > 1:
        dist.destroy_process_group()
    return {"epochs": epochs, "device": str(device), "processes": world}


def _state_dict(features: Any) -> dict[str, Any]:
    """What `--weights` loads for this backbone: the EfficientNet's own state dict (its
    ImageNet head unchanged) for efficientnet_lite0, the feature module's otherwise."""
    inner = getattr(features, "net", features)
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


def _background_pool(photos: list[bytes]) -> list[np.ndarray]:
    """Negatives photos as composite backgrounds, shrunk as the pipeline's augment stage does."""
    from fruits.augment import decoded_pool, shrink_photo

    shrunk = [s for s in (shrink_photo(p) for p in photos) if s is not None]
    return decoded_pool(shrunk) if shrunk else []


# -- the Spark side -------------------------------------------------------------------------


def _distributor(spark: SparkSession, cfg: FinetuneConfig) -> Any:
    """Spark's TorchDistributor: local processes under a local master, else barrier tasks."""
    from pyspark.ml.torch.distributor import TorchDistributor

    master = spark.conf.get("spark.master", "") or ""
    local = master == "local" or master.startswith("local[")
    return TorchDistributor(num_processes=cfg.processes, local_mode=local, use_gpu=cfg.gpu)


def finetune(pcfg: PipelineConfig, cfg: FinetuneConfig, spark: SparkSession) -> dict[str, Any]:
    """List and label the sources as `fruits run` does, fine-tune on their training split and
    publish `models/backbone-weights.pt` + `report.json` in `pcfg.output`."""
    from datetime import UTC, datetime

    from pyspark.sql import functions as F

    from fruits.classify import source_column, spellings
    from fruits.ingest import read_sources
    from fruits.models import read_weights
    from fruits.recognition import NEGATIVE
    from fruits.run_context import RunContext

    if not pcfg.featurizer.backbone.startswith("efficientnet"):
        raise InputError(f"finetune: backbone {pcfg.featurizer.backbone} is not supported yet")
    with RunContext(pcfg, spark) as run:
        t0 = time.perf_counter()
        with run.stage("ingest"):
            listed = read_sources(run)
            train_rows = listed.files.where(F.col("split") == "train").withColumn(
                "source", source_column(spellings(run))
            )
            counts = train_rows.groupBy("source", "label").count().collect()
        classes = sorted({r["label"] for r in counts})
        if len(classes) < 2:
            raise InputError(f"finetune needs 2+ classes in the training split, found {classes}")
        rows_uri = _write_rows(run, train_rows, classes)
        weights_out = run.local / "models" / WEIGHTS_FILE
        weights_out.parent.mkdir(parents=True, exist_ok=True)
        with run.stage("train"):
            trained = _distributor(spark, cfg).run(
                train,
                local_path(rows_uri) or rows_uri,
                len(classes),
                cfg.to_dict(),
                pcfg.featurizer.backbone,
                read_weights(pcfg.featurizer.weights),
                str(weights_out),
            )
        per_source: dict[str, int] = {}
        for r in counts:
            name = run.inputs[r["source"]] if r["source"] >= 0 else "?"
            per_source[name] = per_source.get(name, 0) + r["count"]
        report = {
            "run_id": run.run_id,
            "kind": "finetune",
            "started_at": run.started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "backbone": pcfg.featurizer.backbone,
            "from_weights": pcfg.featurizer.weights,
            "classes": classes,
            "negative_class": NEGATIVE if NEGATIVE in classes else None,
            "train_rows_per_source": per_source,
            "config": cfg.to_dict(),
            "training": trained,
            "weights": f"models/{WEIGHTS_FILE}",
            "head": f"models/{HEAD_FILE}",  # its rows: "classes", in order
            "use": f"fruits run --weights {run.output.rstrip('/')}/models/{WEIGHTS_FILE} ...",
            "stage_seconds": run.timer.seconds,
            "total_seconds": round(time.perf_counter() - t0, 1),
        }
        run.publish(report)
        return report


def _write_rows(run: Run, train_rows: Any, classes: list[str]) -> str:
    """The training split (with its `source`: the index of the input it came from) as Parquet
    in the staging folder: y (class index), source, negative (a --negatives source), content
    (the file's bytes)."""
    from pyspark.sql import functions as F

    from fruits.sources.local import content

    roles = [role for _, role in run.cfg.sources]
    index = F.create_map(*[F.lit(x) for n, c in enumerate(classes) for x in (c, n)])
    negatives = [n for n, role in enumerate(roles) if role == "negatives"]
    uri = run.uri("_work", "finetune_rows.parquet")
    (
        train_rows.withColumn("content", content(train_rows))
        .where(F.col("content").isNotNull())  # unreadable: featurize's quarantine says why
        .select(
            index[F.col("label")].cast("int").alias("y"),
            "source",
            F.col("source").isin(negatives).alias("negative"),
            "content",
        )
        .write.parquet(uri)
    )
    return uri
