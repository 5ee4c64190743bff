"""Figures 3 and 4: alignment against training step, and its correlation with translation quality across
checkpoints (the paper: Pearson 0.9635 with COMET and 0.9286 with CometKiwi, Llama 3.1 8B, English-Icelandic).

`make reproduce-fig3` fine-tunes (task=training, conf/experiment/fig3.yaml), then plots the logged run. Runs
that scored checkpoints one by one (a sweep over `model.revision=` or checkpoint folders, tagged with their
step) in the same experiment are plotted against step too.
"""

from __future__ import annotations

import pandas as pd

from experiments.common import arguments, artifact, print_table
from neuronxa.tasks import plots
from neuronxa.tasks.tracking import runs
from neuronxa.tasks.training import by_step

PAPER_PEARSON = {"comet": 0.9635, "cometkiwi": 0.9286}


def training_runs(uri: str, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None:
    """The latest finished training run's alignment, translation and correlation tables (None without one)."""
    found = runs(uri, experiment)
    found = found[(found.status == "FINISHED") & (found["tags.task"] == "training")]
    if found.empty:
        return None
    run_id = found.sort_values("start_time").run_id.iloc[-1]
    return tuple(artifact(uri, run_id, name) for name in
                 ("alignment_by_step.csv", "translation_by_step.csv", "correlations.csv"))


def checkpoint_runs(uri: str, experiment: str) -> pd.DataFrame | None:
    """Layer-pooled scores (step, metric, language, score, model) of the alignment runs tagged with a step."""
    found = runs(uri, experiment)
    if "tags.step" not in found:
        return None
    found = found[(found.status == "FINISHED") & found["tags.step"].notna() & (found["tags.task"] == "align")]
    frames = [artifact(uri, run_id, "summary.csv").assign(step=int(step))
              for run_id, step in zip(found.run_id, found["tags.step"])]
    return pd.concat(frames, ignore_index=True) if frames else None


def main() -> None:
    args = arguments(__doc__, "fig3")
    folder = args.outputs / "figures"
    trained = training_runs(args.uri, args.experiment)
    if trained is not None:
        pooled, quality, correlations = trained
        role = dict(zip(pooled.language, pooled.role))
        print(f"figure: {plots.over_steps(pooled, role, folder / f'{args.experiment}_alignment_by_step.png')}")
        print(f"figure: {plots.against_quality(pooled, quality, folder / f'{args.experiment}_alignment_vs_chrf.png')}")
        for metric, rows in pooled.groupby("metric"):
            print_table(f"{metric} (layer-pooled) by training step (the paper's Figure 3)", by_step(rows, role), 3)
        print_table("translation quality by training step", quality.pivot_table(
            index=["metric", "language"], columns="step", values="value"), 1)
        shown = correlations[correlations.language == "all"].assign(
            paper_pearson=lambda t: t.quality.map(PAPER_PEARSON))
        print_table("Pearson / Spearman across checkpoints and languages (the paper's Figure 4: COMET 0.9635, "
                    "CometKiwi 0.9286, one language pair)", shown.set_index(["metric", "quality"]), 3)
    checkpoints = checkpoint_runs(args.uri, args.experiment)
    if checkpoints is not None:
        for metric, rows in checkpoints.groupby("metric"):
            print_table(f"{metric} of scored checkpoints by step",
                        rows.pivot_table(index="language", columns="step", values="score"), 3)
            role = {language: "scored" for language in rows.language}
            path = folder / f"{args.experiment}_{metric}_checkpoints.png"
            print(f"figure: {plots.over_steps(rows, role, path, title=f'{metric} of checkpoints')}")
    if trained is None and checkpoints is None:
        raise SystemExit(f"error: no training run and no checkpoint runs (tag step) in experiment {args.experiment!r}")


if __name__ == "__main__":
    main()
