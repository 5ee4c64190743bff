"""Plots of a run: score by layer per language, a language × layer heatmap, t-SNE of NAS beside hidden states.

Each plot is its own ``matplotlib.figure.Figure`` drawn on an Agg canvas (no pyplot state, no global backend);
matplotlib is imported only when a plot is made.
"""

from __future__ import annotations

import textwrap
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd


def _figure(width: float, height: float):
    """A new figure of ``width`` × ``height`` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _colours(name: str, positions) -> np.ndarray:
    """Colours of the colormap ``name`` at ``positions`` (0..1, or indices for a qualitative map)."""
    from matplotlib import colormaps

    return colormaps[name](positions)


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def fit_titles(fig) -> bool:
    """Break every title that runs past the figure's edges (centred where it is) into lines that fit; True when
    one was broken."""
    renderer, width, broken = fig.canvas.get_renderer(), fig.bbox.width, False
    for text in [ax.title for ax in fig.axes] + list(fig.texts):
        box = text.get_window_extent(renderer)
        centre = (box.x0 + box.x1) / 2
        room = 2 * min(centre, width - centre) * 0.96
        if text.get_text() and box.width > room:
            longest = max(len(line) for line in text.get_text().splitlines())
            text.set_text(textwrap.fill(text.get_text(), max(12, int(longest * room / box.width)),
                                      break_on_hyphens=False))
            broken = True
    return broken


def _saved(fig, path: Path) -> Path:
    """Lay the figure out with titles that fit, and save it (making its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    if fit_titles(fig):
        fig.tight_layout()
    fig.set_layout_engine(None)   # laid out: else savefig draws the figure twice (once for a layout engine)
    fig.savefig(path, dpi=120)
    return path


def by_layer(scores: pd.DataFrame, metric: str) -> pd.DataFrame:
    """language × layer table of one metric, languages ordered by their mean score (best first)."""
    table = scores[scores.metric == metric].pivot(index="language", columns="layer", values="value")
    return table.loc[table.mean(axis=1).sort_values(ascending=False).index]


def layer_curves(scores: pd.DataFrame, metric: str, path: Path, *, title: str = "") -> Path:
    """One line per language over the layers (the paper's Figure 2)."""
    table = by_layer(scores, metric)
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    colours = _colours("viridis", np.linspace(0, 0.95, len(table)))
    for colour, (language, values) in zip(colours, table.iterrows()):
        ax.plot(values.index, values.values, marker=".", color=colour, label=language, linewidth=1.2)
    ax.set(xlabel="layer", ylabel=metric, title=title or f"{metric} by layer", ylim=(-0.02, 1.02))
    _integer_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(table) > 10 else 1, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _saved(fig, path)


def heatmap(table: pd.DataFrame, path: Path, title: str, *, xlabel: str = "layer", vmin: float | None = 0,
            vmax: float | None = 1, cmap: str = "magma") -> Path:
    """A table as a coloured grid (e.g. languages × layers, or deactivated × evaluated language)."""
    fig = _figure(0.38 * table.shape[1] + 2.8, 0.3 * len(table) + 1.6)
    ax = fig.subplots()
    image = ax.imshow(table.values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_yticks(range(len(table)), table.index, fontsize=7)
    ax.set_xticks(range(table.shape[1]), table.columns, fontsize=7, rotation=90 if xlabel != "layer" else 0)
    ax.set(xlabel=xlabel, ylabel=table.index.name or "", title=title)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _saved(fig, path)


def tsne_pairs(panels: dict[str, tuple[np.ndarray, np.ndarray]], names: tuple[str, str], path: Path, *,
               title: str = "", seed: int = 0) -> Path:
    """t-SNE of pivot and target units, one panel per representation, parallel units joined by a line."""
    fig = _figure(5 * len(panels), 4.5)
    axes = fig.subplots(1, len(panels), squeeze=False)
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
    return _saved(fig, path)


@lru_cache(maxsize=32)
def _tsne(points: bytes, shape: tuple[int, int], seed: int) -> np.ndarray:
    """2-D t-SNE (cosine) of the rows; memoised on their bytes, so the jobs of a sweep that plot the same
    states (one pooling, several metrics) fit it once."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    data = np.frombuffer(points, dtype=np.float64).reshape(shape)
    perplexity = max(2.0, min(30.0, (len(data) - 1) / 3))
    with threadpool_limits(1):   # a few dozen points: OpenMP threads mostly wait on each other (10× slower on 2 cores)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    metric="cosine").fit_transform(data)


def stacked_by_layer(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Counts per layer (rows) stacked by column (e.g. neuron type)."""
    fig = _figure(8, 4)
    ax = fig.subplots()
    bottom = np.zeros(len(table))
    for column in table.columns:
        ax.bar(table.index, table[column], bottom=bottom, label=column)
        bottom += table[column].to_numpy()
    ax.set(xlabel="layer", ylabel="neurons", title=title)
    _integer_ticks(ax.xaxis)
    ax.legend()
    return _saved(fig, path)


def score_intervals(summary: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Each language's layer-pooled score per metric with its interval (languages by the first metric)."""
    metrics = list(dict.fromkeys(summary.metric))
    order = summary[summary.metric == metrics[0]].sort_values("score").language.tolist()
    fig = _figure(7, 0.28 * len(order) + 1.6)
    ax = fig.subplots()
    offsets = np.linspace(-0.25, 0.25, len(metrics)) if len(metrics) > 1 else [0.0]
    for offset, metric in zip(offsets, metrics):
        rows = summary[summary.metric == metric].set_index("language").reindex(order)
        y = np.arange(len(order)) + offset
        below, above = (rows.score - rows.ci_low).clip(lower=0), (rows.ci_high - rows.score).clip(lower=0)
        ax.errorbar(rows.score, y, xerr=[below, above], fmt="o", markersize=3.5, capsize=2, linewidth=1, label=metric)
    ax.set_yticks(range(len(order)), order, fontsize=7)
    ax.set(xlabel="layer-pooled score with interval", title=title, xlim=(-0.02, 1.02))
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    return _saved(fig, path)


def correlation_intervals(correlations: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Pearson r of each metric with each benchmark, with its bootstrap interval (a forest plot)."""
    rows = correlations.dropna(subset=["pearson_r"]).reset_index(drop=True)
    labels = [f"{row.metric} · {row.benchmark}" for row in rows.itertuples()]
    fig = _figure(7, 0.3 * len(rows) + 1.6)
    ax = fig.subplots()
    ax.errorbar(rows.pearson_r, range(len(rows)), fmt="o", markersize=4, capsize=2,
                xerr=[(rows.pearson_r - rows.pearson_ci_low).clip(lower=0),
                      (rows.pearson_ci_high - rows.pearson_r).clip(lower=0)])
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set(xlabel="Pearson r across languages (bootstrap interval)", title=title, xlim=(-1.02, 1.02))
    ax.grid(alpha=0.3, axis="x")
    return _saved(fig, path)


def clustered_heatmap(matrix: pd.DataFrame, path: Path, title: str = "") -> Path:
    """A language × language table with rows and columns in the leaf order of an average-linkage clustering
    on 1 − the symmetrised score."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    values = matrix.to_numpy(float)
    similarity = np.nan_to_num((values + values.T) / 2, nan=1.0)
    distance = np.clip(1 - similarity, 0, None)
    np.fill_diagonal(distance, 0)
    order = (leaves_list(linkage(squareform(distance, checks=False), "average")) if len(matrix) > 2
             else range(len(matrix)))
    languages = [matrix.index[i] for i in order]
    table = matrix.loc[languages, languages]
    return heatmap(table, path, title, xlabel="target")


def over_steps(pooled: pd.DataFrame, role: dict[str, str], path: Path, *, title: str = "") -> Path:
    """Layer-pooled alignment against training step, one line per language (trained solid, untrained dashed),
    one panel per metric (the NeuronXA paper's Figure 3)."""
    metrics = list(dict.fromkeys(pooled.metric))
    fig = _figure(5.5 * len(metrics), 4)
    axes = fig.subplots(1, len(metrics), squeeze=False)
    languages = sorted(pooled.language.unique(), key=lambda language: (role[language], language))
    colours = dict(zip(languages, _colours("tab10", np.arange(len(languages)) % 10)))
    for ax, metric in zip(axes[0], metrics):
        for language in languages:
            rows = pooled[(pooled.metric == metric) & (pooled.language == language)].sort_values("step")
            ax.plot(rows.step, rows.score, marker="o", markersize=3, color=colours[language],
                    linestyle="-" if role[language] == "trained" else "--", label=f"{language} ({role[language]})")
        ax.set(xlabel="training step", ylabel=f"{metric} (layer-pooled)", title=metric)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title, fontsize=10)
    return _saved(fig, path)


def against_quality(pooled: pd.DataFrame, quality: pd.DataFrame, path: Path, *, title: str = "") -> Path:
    """Alignment against translation quality, one point per (language, checkpoint), one panel per alignment
    metric, the steps of a language joined in order (the NeuronXA paper's Figure 4)."""
    chrf = quality[quality.metric == "chrf"].rename(columns={"value": "chrf"})[["step", "language", "chrf"]]
    joined = pooled.merge(chrf, on=["step", "language"])
    metrics = list(dict.fromkeys(joined.metric))
    fig = _figure(5 * max(len(metrics), 1), 4)
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for language, rows in joined[joined.metric == metric].groupby("language"):
            rows = rows.sort_values("step")
            ax.plot(rows.score, rows.chrf, marker="o", markersize=3, linewidth=0.8, label=language)
        ax.set(xlabel=f"{metric} (layer-pooled)", ylabel="chrF", title=metric)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _saved(fig, path)


def steering(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Share of continuations in the target language against strength, per mode with its interval: a row per
    target, language neurons on the left and the random control beside them; no intervention and the
    source-only modes as horizontal lines."""
    targets = list(dict.fromkeys(table.target))
    fig = _figure(10, 3 * len(targets) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(targets), 2, sharey=True, squeeze=False))
    for ax_row, target in zip(axes, targets):
        rows = table[table.target == target]
        for ax, neurons in zip(ax_row, ("language", "random")):
            modes = rows[rows.neurons == neurons].groupby("mode")
            for colour, (mode, group) in zip(_colours("tab10", range(10)), modes):
                if group.strength.notna().any():
                    errors = [(group.share - group.low).clip(lower=0), (group.high - group.share).clip(lower=0)]
                    ax.errorbar(group.strength, group.share, yerr=errors, fmt="o-", capsize=2, color=colour,
                                label=mode)
                else:
                    ax.axhline(group.share.iloc[0], color=colour, linestyle="--", linewidth=1, label=mode)
            ax.axhline(rows[rows.neurons == "none"].share.iloc[0], color="grey", linestyle=":", label="none")
            ax.set(xscale="log", ylim=(-0.03, 1.03), xlabel="strength", ylabel=f"share in {target}",
                   title=f"{neurons} neurons → {target}")
            ax.grid(alpha=0.3)
        ax_row[0].legend(fontsize=7)
    fig.suptitle(title)
    return _saved(fig, path)
