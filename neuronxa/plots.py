"""Plots of a run: score by layer per language, a language × layer heatmap, t-SNE of NAS beside hidden states."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def by_layer(scores: pd.DataFrame, metric: str) -> pd.DataFrame:
    """language × layer table of one metric, languages ordered by their mean score (best first)."""
    table = scores[scores.metric == metric].pivot(index="language", columns="layer", values="value")
    return table.loc[table.mean(axis=1).sort_values(ascending=False).index]


def layer_curves(scores: pd.DataFrame, metric: str, path: Path, title: str = "") -> Path:
    """One line per language over the layers (the paper's Figure 2)."""
    table = by_layer(scores, metric)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.cm.viridis(np.linspace(0, 0.95, len(table)))
    for colour, (language, values) in zip(colours, table.iterrows()):
        ax.plot(values.index, values.values, marker=".", color=colour, label=language, linewidth=1.2)
    ax.set(xlabel="layer", ylabel=metric, title=title or f"{metric} by layer", ylim=(-0.02, 1.02))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(table) > 10 else 1, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def heatmap(table: pd.DataFrame, path: Path, title: str, xlabel: str = "layer", vmin: float | None = 0,
            vmax: float | None = 1, cmap: str = "magma") -> Path:
    """A table as a coloured grid (e.g. languages × layers, or deactivated × evaluated language)."""
    fig, ax = plt.subplots(figsize=(0.38 * table.shape[1] + 2.8, 0.3 * len(table) + 1.6))
    image = ax.imshow(table.values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_yticks(range(len(table)), table.index, fontsize=7)
    ax.set_xticks(range(table.shape[1]), table.columns, fontsize=7, rotation=90 if xlabel != "layer" else 0)
    ax.set(xlabel=xlabel, ylabel=table.index.name or "", title=title)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def tsne_pairs(panels: dict[str, tuple[np.ndarray, np.ndarray]], names: tuple[str, str], path: Path,
               title: str = "", seed: int = 0) -> Path:
    """t-SNE of pivot and target units, one panel per representation, parallel units joined by a line."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (label, (X, Y)) in zip(axes[0], panels.items()):
        points = np.vstack([X, Y]).astype(np.float64)
        embedded = _tsne(points.tobytes(), points.shape, seed)
        first, second = embedded[: len(X)], embedded[len(X):]
        for a, b in zip(first, second):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.8", linewidth=0.6, zorder=1)
        ax.scatter(*first.T, s=14, label=names[0], zorder=2)
        ax.scatter(*second.T, s=14, label=names[1], zorder=2)
        ax.set(title=label, xticks=[], yticks=[])
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@lru_cache(maxsize=32)
def _tsne(points: bytes, shape: tuple[int, int], seed: int) -> np.ndarray:
    """2-D t-SNE (cosine) of the rows; memoised on their bytes, so the jobs of a sweep that plot the same
    states (one pooling, several metrics) fit it once."""
    from sklearn.manifold import TSNE

    data = np.frombuffer(points, dtype=np.float64).reshape(shape)
    perplexity = max(2.0, min(30.0, (len(data) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                metric="cosine").fit_transform(data)


def stacked_by_layer(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Counts per layer (rows) stacked by column (e.g. neuron type)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = np.zeros(len(table))
    for column in table.columns:
        ax.bar(table.index, table[column], bottom=bottom, label=column)
        bottom += table[column].to_numpy()
    ax.set(xlabel="layer", ylabel="neurons", title=title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
