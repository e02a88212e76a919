"""One typed configuration object for a pipeline run; the CLI maps its options onto it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

OnError = Literal["quarantine", "fail"]
Engine = Literal["auto", "onnx", "torch"]
Precision = Literal["fp32", "bf16"]
Augment = Literal["auto", "on", "off"]

DEFAULT_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png")
DEFAULT_OUTPUT = "fruits-output"
MAX_FILE_BYTES = 50 * 1024 * 1024  # larger files are refused unread
FILES_PER_PARTITION = 256  # small files per read task
ARROW_MAX_RECORDS = 256  # rows per Arrow batch to the Python UDF...
ARROW_MAX_BYTES = 64 * 1024 * 1024  # ...and bytes (large photos)


def cache_dir() -> Path:
    """Per-user cache (exported ONNX graphs, the JVM class archive): `$FRUITS_CACHE`, else
    `$XDG_CACHE_HOME/fruits`, else `~/.cache/fruits`. Everything in it can be deleted."""
    root = os.environ.get("FRUITS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fruits"
    )
    return Path(root)


def bundled_sample() -> str:
    """The sample ships inside the package so `fruits run` works with no download."""
    return str(resources.files("fruits") / "sample_data" / "fruits-360-sample")


def bundled_negatives() -> str:
    """Photos of no fruit that ship beside the sample (sample_data/negatives: packaged goods,
    orchard leaves, clothes, hands, flowers; permissive licences, notes per origin). `fruits run`
    with no `--input` and no `--negatives` trains "not a fruit" from them, so the quick-start
    model refuses a milk carton instead of naming a fruit; an explicit `--input` gets none."""
    return str(resources.files("fruits") / "sample_data" / "negatives")


@dataclass(frozen=True)
class FeaturizerConfig:
    """How pixels become feature vectors; everything here changes the features, so it is
    recorded in the report and in the saved run."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    # 224 px: real phone photos carry detail that 100 px loses (docs/recognition-study.md), and
    # the official Fruits-360 test split lost 1.1 points at 100 px; ~3x the CNN cost of 100 px.
    image_size: int = 224
    engine: Engine = "auto"
    precision: Precision = "fp32"
    channels_last: bool = False
    batch_size: int = 64
    threads_per_task: int = 0  # 0: cores // concurrent tasks, so tasks x threads <= cores
    max_pixels: int = 40_000_000  # larger images are refused: decompression-bomb guard
    # Photos larger than the model input are seen as 8 views (whole, mirror, 5 crops) whose
    # features are averaged: +5-8 points on real photos (docs/recognition-study.md); 1 = off.
    views: int = 8


@dataclass(frozen=True)
class ClassifierConfig:
    """Multinomial logistic regression on the PCA features (classify.py)."""

    max_iter: int = 200
    reg_param: float = 1e-3
    elastic_net: float = 0.0


@dataclass(frozen=True)
class ReduceConfig:
    """PCA settings: k comes from an explained-variance target unless fixed."""

    variance: float = 0.95
    k: int | None = None
    # Cap on a k chosen by variance: 95% of the variance of 141 classes takes ~600 components,
    # but accuracy is flat from ~256 (docs/recognition-study.md) while every later step (the
    # classifier, serving, the CSV) grows with k.
    max_k: int | None = 256
    scale_std: bool = True


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one `fruits run` needs; defaults run on the bundled sample, embedded."""

    input: str = field(default_factory=bundled_sample)
    extra_inputs: tuple[str, ...] = ()  # more labelled sources (`--input` repeated)
    negatives: tuple[str, ...] = ()  # photos of none of the classes: the class "not a fruit"
    # JSON: folder label -> class trained on (recognition.py); several files are merged
    label_map: str | tuple[str, ...] | None = None
    # with several sources, the temperature and "not sure" threshold are fitted leaving one
    # source out (classify.out_of_source: one extra fit per source); False: on the val split
    held_out_calibration: bool = True
    # background composites of the studio training frames + backgrounds alone as "not a fruit"
    # (augment.py), for the classifier only; auto: with 2+ labelled sources and negatives, the
    # setting they were measured in (bench/loso.py: +8-10 species points per held-out source)
    augment: Augment = "auto"
    val_fraction: float = 0.1  # of a source's train split set aside when it has no val split
    output: str = DEFAULT_OUTPUT
    master: str | None = None
    remote: str | None = None  # Spark Connect URL (sc://...); default: $SPARK_REMOTE
    on_error: OnError = "quarantine"
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    max_file_bytes: int = MAX_FILE_BYTES
    featurizer: FeaturizerConfig = field(default_factory=FeaturizerConfig)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    classify: bool = True
    incremental: bool = False  # process only new/changed files, project with the saved PCA
    refit: bool = False  # with `incremental`: refit scaler + PCA + classifier on every image
    verify_content: bool = False  # with `incremental`: compare content hashes, not only size+mtime
    storage: Literal["auto", "hadoop", "fsspec"] = "auto"
    arrow_max_records: int = ARROW_MAX_RECORDS
    arrow_max_bytes: int = ARROW_MAX_BYTES
    files_per_partition: int = FILES_PER_PARTITION
    output_files: int = 0  # 0: derived from the row count, so outputs never explode into tiny files
    # pca.csv / quarantine.csv above this many rows: a folder of CSV parts written in parallel,
    # since one file is coalesce(1), one task writing every row (docs/scaling.md); 0: one file.
    single_csv_max_rows: int = 1_000_000
    spark_conf: dict[str, str] = field(default_factory=dict)
    # Spark's own log in a session the run starts: ERROR keeps a run to its own few lines
    # (start-up, native-hadoop and BLAS warnings are noise to a user); `fruits run -v`: WARN.
    spark_log_level: str = "ERROR"

    @property
    def sources(self) -> list[tuple[str, str]]:
        """(URI, role) of every source: `labelled` (`input`, then `extra_inputs`) or
        `negatives`."""
        labelled = [(uri, "labelled") for uri in (self.input, *self.extra_inputs)]
        return labelled + [(uri, "negatives") for uri in self.negatives]

    @property
    def augments(self) -> bool:
        """Are composites made (`augment`; auto: 2+ labelled sources and a negatives one)?"""
        if self.augment != "auto":
            return self.augment == "on"
        labelled = sum(role == "labelled" for _, role in self.sources)
        return labelled >= 2 and bool(self.negatives)

    @property
    def inputs(self) -> list[str]:
        """Every source's URI, labelled first."""
        return [uri for uri, _ in self.sources]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
