"""Table 1: retrieval accuracy with NAS vs hidden states (the embedding), best layer, head vs long-tail.

`make reproduce-table1` runs the sweep (conf/experiment/table1.yaml) and prints this table, then the paper's.
"""

from __future__ import annotations

import pandas as pd

from experiments.common import FLORES_HEAD, PAPER, arguments, collect, print_table
from neuronxa.stage_two import registry

DIRECTIONS = {"pivot_to_target": "En→xx", "target_to_pivot": "xx→En", "bidirectional": "En⇔xx"}
REPRESENTATIONS = {"hidden": "Embedding", "nas": "NAS"}


def best_layer_accuracy(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model, dataset, representation, direction and language: the accuracy (%) of the best layer."""
    entries = [registry.score(metric) for metric in scores.metric]
    retrieval = scores.assign(representation=[entry.representation for entry in entries],
                              direction=[entry.direction for entry in entries])
    retrieval = retrieval[[entry.kind == "retrieval" for entry in entries]]
    best = retrieval.groupby(["model", "dataset", "representation", "direction", "language"])["value"].max()
    return (100 * best).reset_index()


def table(scores: pd.DataFrame) -> pd.DataFrame:
    """Rows: representation × direction; columns: dataset × (head, long-tail), mean over languages."""
    best = best_layer_accuracy(scores)
    best["group"] = best.language.map(lambda code: "head" if code in FLORES_HEAD else "long_tail")
    wide = best.groupby(["model", "representation", "direction", "dataset", "group"])["value"].mean().unstack(
        ["dataset", "group"])
    counts = best.groupby(["dataset", "group"]).language.nunique()
    wide.columns = [f"{dataset} {group} (n={counts[dataset, group]})" for dataset, group in wide.columns]
    return _ordered(wide.rename(index=REPRESENTATIONS, level=1).rename(index=DIRECTIONS, level=2))


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Rows as the paper orders them: Embedding then NAS; En→xx, xx→En, En⇔xx."""
    rank = {name: i for i, name in enumerate([*REPRESENTATIONS.values(), *DIRECTIONS.values()])}
    return table.sort_index(key=lambda level: level.map(lambda value: rank.get(value, -1)))


def main() -> None:
    args = arguments(__doc__, "table1")
    scores = collect(args.uri, args.experiment, ["model", "dataset"], "scores.csv")
    print_table(f"Table 1 — retrieval accuracy (%), best layer, mean over languages; experiment {args.experiment!r}",
                table(scores), 2)
    paper = pd.read_csv(PAPER / "table1.csv").pivot_table(
        index=["representation", "direction"], columns=["dataset", "group"], values="value")
    paper = _ordered(paper.rename(index={"embedding": "Embedding", "nas": "NAS"}, level=0).rename(
        index=DIRECTIONS, level=1))
    print_table("The paper's Table 1 (Llama 3.1 8B, FLORES-200 and Tatoeba):", paper, 2)


if __name__ == "__main__":
    main()
