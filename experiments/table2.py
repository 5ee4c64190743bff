"""Table 2: NASCA with non-English pivots (high→high, high→low, low→low language pairs).

`make reproduce-table2` runs the sweep (conf/experiment/table2.yaml) and prints this table beside the paper's.
"""

from __future__ import annotations

import pandas as pd

from experiments.common import PAPER, arguments, collect, print_table


def main() -> None:
    args = arguments(__doc__, "table2")
    summary = collect(args.uri, args.experiment, ["model", "score.pivot"], "summary.csv")
    ours = summary[summary.metric == "nasca"].set_index(["pivot", "language"])["score"]
    pairs = pd.read_csv(PAPER / "table2.csv").rename(columns={"nasca": "paper (Llama 3.1 8B, FLORES)"})
    pairs.insert(3, "NASCA here", [ours.get((p, t), float("nan")) for p, t in zip(pairs["pivot"], pairs["target"])])
    model = summary.model.iloc[0]
    print_table(f"Table 2 — NASCA of language pairs; here: {model} on {summary.dataset.iloc[0]} "
                f"(NaN: the pair's language is not in the corpus)", pairs.set_index(["group", "pivot", "target"]))


if __name__ == "__main__":
    main()
