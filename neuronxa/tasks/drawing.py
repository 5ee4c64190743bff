"""The alignment job's plots: drawn in the job (``score.plots=inline``), in a separate process once the tables are
written (``background``: the job ends without waiting for matplotlib; the plots go to the same MLflow run), or
again on demand from a run folder:

    python -m neuronxa.tasks.drawing outputs/runs/2026-01-01_12-00-00

which reads the folder's ``.hydra/config.yaml``, ``scores.csv``, ``summary.csv`` and ``correlations.csv`` and the
cached states of its t-SNE (never a forward pass), and writes ``plots/`` beside them.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import models
from neuronxa.stage_one.cache import stage_one_store
from neuronxa.stage_one.store import StateStore
from neuronxa.stage_two import registry
from neuronxa.tasks import plots
from neuronxa.tasks.common import stage_one_options

log = logging.getLogger(__name__)
LOG_NAME = "plots.log"   # the background process's output, in the run folder


def make_plots(cfg: DictConfig, scores: pd.DataFrame, store: StateStore, *, folder: Path) -> list[Path]:
    """Layer curves and a heatmap per metric, and a t-SNE of NAS beside hidden states (Figure 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    title = f"{scores.model.iloc[0]} · {scores.dataset.iloc[0]} · {cfg.pooling.name}"
    for metric in scores.metric.unique():
        if not registry.score(metric).headline:
            continue
        made.append(plots.layer_curves(scores, metric, folder / f"{metric}_by_layer.png",
                                       title=f"{metric} · {title}"))
        made.append(plots.heatmap(plots.by_layer(scores, metric), folder / f"{metric}_heatmap.png", f"{metric} · {title}"))
    pivot = scores["pivot"].iloc[0]
    target = cfg.score.tsne_language or scores.language.iloc[0]
    layer = cfg.score.tsne_layer if cfg.score.tsne_layer is not None else store.n_layers(pivot) // 2
    pivot_rows = {unit: row for row, unit in enumerate(store.ids(pivot))}
    shared = [(pivot_rows[u], row) for row, u in enumerate(store.ids(target)) if u in pivot_rows]
    panels = {}
    for kind, label in (("hidden", "hidden states (embedding)"), ("nas", "neuron activation states (NAS)")):
        X = store.read(pivot, kind, cfg.pooling.name, layer)[[p for p, _ in shared]]
        Y = store.read(target, kind, cfg.pooling.name, layer)[[t for _, t in shared]]
        panels[label] = (X, Y)
    made.append(plots.tsne_pairs(panels, (pivot, target), folder / f"tsne_{target}_layer{layer}.png",
                                 title=f"{pivot} vs {target}, layer {layer} · {title}"))
    return made


def interval_plots(summary: pd.DataFrame, correlations: pd.DataFrame | None, folder: Path) -> list[Path]:
    """The alignment scores with their intervals per language, and each correlation with its interval."""
    shares = summary[summary.metric.isin(registry.of_kind("alignment"))]
    made = []
    if len(shares) and shares.ci_low.notna().any():
        made.append(plots.score_intervals(shares, folder / "alignment_intervals.png",
                                          f"layer-pooled alignment, {summary.model.iloc[0]}"))
    if correlations is not None and correlations.pearson_ci_low.notna().any():
        made.append(plots.correlation_intervals(correlations, folder / "correlation_intervals.png",
                                                f"correlation with downstream results, {summary.model.iloc[0]}"))
    return made


def all_plots(cfg: DictConfig, tables: dict[str, pd.DataFrame | None], store: StateStore, folder: Path) -> list[Path]:
    """Every plot of an alignment run from its ``scores``, ``summary`` and ``correlations`` tables."""
    return (make_plots(cfg, tables["scores"], store, folder=folder)
            + interval_plots(tables["summary"], tables["correlations"], folder))


def cached_store(cfg: DictConfig, dataset: str) -> StateStore:
    """The stage-one store a run of ``cfg`` on the corpus named ``dataset`` read (no model is loaded)."""
    spec = models.spec_from_config(cfg.model)
    identity = models.identity(spec, models_dir=cfg.paths.models)
    return stage_one_store(cfg.cache.dir, stage_one_options(cfg, cfg.model).cache_key(identity, dataset))


def draw(run: Path) -> list[Path]:
    """The plots of the alignment run in folder ``run``, drawn again from its tables and the cached states."""
    config = run / ".hydra" / "config.yaml"
    if not config.is_file() or not (run / "scores.csv").is_file():
        raise NeuronXAError(f"{run} is no alignment run folder (it needs .hydra/config.yaml and scores.csv): "
                            "give a folder that `python -m neuronxa.run` wrote")
    cfg = OmegaConf.load(config)
    tables = {name: pd.read_csv(run / f"{name}.csv") if (run / f"{name}.csv").is_file() else None
              for name in ("scores", "summary", "correlations")}
    store = cached_store(cfg, tables["scores"].dataset.iloc[0])
    return all_plots(cfg, tables, store, run / "plots")


def in_background(run: Path, run_id: str | None, *, uri: str) -> None:
    """Start drawing the plots of ``run`` in a separate process that outlives the job; with ``run_id``, it logs
    them to that MLflow run at ``uri``. Its output goes to ``plots.log`` in the run folder. It runs at the lowest
    CPU priority, so that the jobs after this one (a sweep's next job) are not slowed by it."""
    command = [sys.executable, "-m", __name__, str(run), "--low-priority"] + (
        ["--run-id", run_id, "--tracking-uri", uri] if run_id else [])
    with open(run / LOG_NAME, "w") as output:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    log.info(f"plots: drawn in the background (process {child.pid}) into {run / 'plots'}; its log: "
             f"{run / LOG_NAME}")


def main(argv: list[str] | None = None) -> None:
    """``python -m neuronxa.tasks.drawing RUN_FOLDER [--run-id ID --tracking-uri URI]``."""
    parser = argparse.ArgumentParser(prog="python -m neuronxa.tasks.drawing", description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="an alignment run's folder (where its scores.csv is)")
    parser.add_argument("--run-id", help="the MLflow run to log the plots to (with --tracking-uri)")
    parser.add_argument("--tracking-uri", help="its tracking store, e.g. sqlite:///outputs/mlflow.db")
    parser.add_argument("--low-priority", action="store_true", help="draw at the lowest CPU priority (as a job's "
                        "background drawing does)")
    args = parser.parse_args(argv)
    if args.low_priority and hasattr(os, "nice"):
        os.nice(19)
    try:
        made = draw(args.run)
    except NeuronXAError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(args.tracking_uri)
        for path in made:
            client.log_artifact(args.run_id, str(path))
    print(f"{len(made)} plots in {args.run / 'plots'}")


if __name__ == "__main__":
    main()
