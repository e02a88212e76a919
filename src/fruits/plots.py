"""The PNG plots a person looks at after a run (matplotlib, drawn on the driver, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_explained_variance(
    explained: list[float], k: int, target: float | None, path: Path
) -> None:
    plt = pyplot()
    cum = np.cumsum(explained)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(np.arange(1, len(cum) + 1), cum, lw=2, label="cumulative explained variance")
    ax.axvline(k, color="tab:red", ls="--", label=f"k = {k} ({cum[k - 1]:.1%})")
    if target is not None:
        ax.axhline(target, color="tab:gray", ls=":", label=f"target {target:.0%}")
    ax.set_xlabel("number of components k")
    ax.set_ylabel("explained variance (cumulative)")
    ax.set_ylim(0, 1.01)
    ax.set_title("PCA on CNN features (train split)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scatter(points: np.ndarray, labels: list[str], path: Path) -> None:
    """First two principal components of a bounded sample, one colour per label."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab20", max(len(names), 1))
    lab = np.asarray(labels)
    for i, name in enumerate(names):
        sel = lab == name
        ax.scatter(points[sel, 0], points[sel, 1], s=12, color=cmap(i), label=name, alpha=0.8)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2" if points.shape[1] > 1 else "")
    ax.set_title("Images in the first two principal components")
    if len(names) <= 20:
        ax.legend(fontsize=7, loc="best", markerscale=1.5)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(labels: list[str], confusion: list[list[int]], path: Path) -> None:
    plt = pyplot()
    cm = np.asarray(confusion, dtype=float)
    n = len(labels)
    size = min(4 + 0.18 * n, 28)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fs = 8 if n <= 30 else 4
    ax.set_xticks(range(n), labels, rotation=90, fontsize=fs)
    ax.set_yticks(range(n), labels, fontsize=fs)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test split, row-normalised colours)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
