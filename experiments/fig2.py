"""Figure 2: NASCA across layers for every language, one panel per model; prints each model's layer profile.

`make reproduce-fig2` runs the sweep (conf/experiment/fig2.yaml), saves the figure and prints the profile.
"""

from __future__ import annotations

from pathlib import Path

from experiments.common import arguments, collect, print_table
from neuronxa.tasks import plots


def main() -> None:
    args = arguments(__doc__, "fig2")
    scores = collect(args.uri, args.experiment, ["model"], "scores.csv")
    nasca = scores[scores.metric == "nasca"]
    folder = args.outputs / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    for model, rows in nasca.groupby("model"):
        path = plots.layer_curves(rows, "nasca", folder / f"{args.experiment}_{Path(model).name}.png",
                                  title=f"NASCA by layer · {model} · {rows.dataset.iloc[0]}")
        print(f"figure: {path}")
    profile = nasca.groupby(["model", "layer"])["value"].mean().unstack("layer")
    print_table("Mean NASCA over languages by layer (the paper: low at the bottom and top, highest in the middle)",
                profile, 2)
    relative = profile.idxmax(axis=1) / (profile.notna().sum(axis=1) - 1)
    print("peak layer as a share of depth: " + ", ".join(f"{m} {v:.2f}" for m, v in relative.items()))


if __name__ == "__main__":
    main()
