"""What a run's validation split taught about trusting its classifier; Spark-free, shared by
the pipeline (classify.calibrate fits it) and the served `Predictor` (serving.json reads it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Calibration:
    """Temperature, refusal threshold and species table, plus the recognition metrics per split
    and source (report.json `recognition`; empty when read back from serving.json). Absent in
    older runs' serving.json: T = 1, never unsure."""

    temperature: float = 1.0
    threshold: float = 0.0
    species: dict[str, str] | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None, classes: Sequence[str]) -> Calibration:
        """serving.json's `recognition` (None in older runs)."""
        from fruits.recognition import species_table

        meta = meta or {}
        species = meta.get("species") or species_table(classes)
        return cls(float(meta.get("temperature", 1.0)), float(meta.get("threshold", 0.0)), species)

    def serving(self) -> dict[str, Any]:
        """serving.json's `recognition`: what the served model needs, without the metrics."""
        return {
            "temperature": self.temperature,
            "threshold": self.threshold,
            "species": self.species,
        }
