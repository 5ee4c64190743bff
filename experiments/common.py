"""Reading logged runs back for the paper's tables: the latest run per setting, and its CSV artifacts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from neuronxa.stage_one.models import composed
from neuronxa.tasks.tracking import runs

PAPER = Path(__file__).resolve().parent / "paper"
# The paper's FLORES-200 "head" languages (its appendix A); every other language is "long-tail".
FLORES_HEAD = set("""bel_Cyrl bos_Latn hun_Latn epo_Latn khm_Khmr urd_Arab srp_Cyrl jav_Latn hye_Armn gla_Latn
por_Latn lit_Latn bul_Cyrl slk_Latn mal_Mlym ita_Latn nno_Latn mar_Deva hrv_Latn hin_Deva kat_Geor ben_Beng fin_Latn
cym_Latn oci_Latn cat_Latn fao_Latn xho_Latn spa_Latn ron_Latn amh_Ethi ces_Latn swe_Latn nld_Latn tat_Cyrl kor_Hang
glg_Latn fra_Latn eus_Latn ind_Latn dan_Latn tha_Thai deu_Latn tel_Telu afr_Latn pol_Latn est_Latn uig_Arab ukr_Cyrl
uzn_Latn heb_Hebr kaz_Cyrl nob_Latn rus_Cyrl vie_Latn arb_Arab zho_Hans tuk_Latn khk_Cyrl jpn_Jpan ell_Grek isl_Latn
tam_Taml slv_Latn tur_Latn mkd_Cyrl tgl_Latn gle_Latn""".split())


def arguments(description: str, experiment: str) -> argparse.Namespace:
    """The script's options: the experiment, the outputs folder (figures go in its ``figures/``) and the tracking
    store, the last two by default those of the configuration (``paths.outputs``, ``tracking.uri``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--experiment", default=experiment, help="the MLflow experiment the sweep logged to")
    parser.add_argument("--outputs", type=Path, help="outputs folder (default: the configuration's paths.outputs)")
    parser.add_argument("--uri", help="MLflow tracking URI (default: the configuration's tracking.uri)")
    args = parser.parse_args()
    cfg = composed()
    if args.outputs is not None:
        cfg.paths.outputs = str(args.outputs)
    args.outputs, args.uri = Path(cfg.paths.outputs), args.uri or cfg.tracking.uri
    return args


def latest_runs(uri: str, experiment: str, settings: list[str]) -> pd.DataFrame:
    """The most recent finished run for each combination of the given settings: tags (``model``,
    ``dataset``, ``pooling``) or config keys (``score.pivot``)."""
    found = runs(uri, experiment)
    found = found[found.status == "FINISHED"].sort_values("start_time", ascending=False)
    columns = [f"tags.{name}" if f"tags.{name}" in found.columns else f"params.{name}" for name in settings]
    return found.drop_duplicates(columns)


def artifact(uri: str, run_id: str, name: str) -> pd.DataFrame:
    """A CSV logged with a run (scores.csv, summary.csv, correlations.csv)."""
    import mlflow

    return pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, tracking_uri=uri))


def collect(uri: str, experiment: str, settings: list[str], name: str) -> pd.DataFrame:
    """One CSV artifact of every latest run, concatenated."""
    found = latest_runs(uri, experiment, settings)
    return pd.concat([artifact(uri, run_id, name) for run_id in found.run_id], ignore_index=True)


def print_table(title: str, table: pd.DataFrame, digits: int = 4) -> None:
    print(f"\n{title}")
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(table.round(digits).to_string())


POOLING_ORDER = {"weighted": 0, "mean": 1, "last": 2}
METRIC_ORDER = {"mexa": 0, "nasca": 1, "navca": 2}


def correlation_table(correlations: pd.DataFrame, models: list[str] | None = None) -> pd.DataFrame:
    """Rows: benchmark × pooling × metric; columns: models, then AVG (the paper's layout)."""
    wide = correlations.pivot_table(index=["benchmark", "pooling", "metric"], columns="model", values="pearson_r")
    if models:
        wide = wide[[model for model in models if model in wide.columns]]
    wide["AVG"] = wide.mean(axis=1)
    order = sorted(wide.index, key=lambda key: (key[0], POOLING_ORDER.get(key[1], 9), METRIC_ORDER.get(key[2], 9)))
    return wide.loc[order]


def print_correlation_tables(description: str, experiment: str, paper_csv: str) -> None:
    """The sweep's Pearson correlations in the paper's layout, then the paper's own table."""
    args = arguments(description, experiment)
    correlations = collect(args.uri, args.experiment, ["model", "pooling"], "correlations.csv")
    standin = correlations.benchmark.str.startswith("standin:").any()
    label = " (STAND-IN benchmark: negative bits per byte on held-out units, not the paper's tasks)" if standin else ""
    print_table(f"Pearson r across languages; experiment {args.experiment!r}{label}", correlation_table(correlations))
    counts = correlations.groupby("model")["n"].max().to_dict()
    print(f"languages per correlation: {counts}")
    paper = pd.read_csv(PAPER / paper_csv)
    table = paper[paper.model != "AVG"].rename(columns={"value": "pearson_r"})
    print_table(f"The paper's {paper_csv.removesuffix('.csv').title()} (FLORES-200, 100 sentences):",
                correlation_table(table, list(dict.fromkeys(table.model))))
    comparisons = collect(args.uri, args.experiment, ["model", "pooling"], "comparisons.csv")
    print_table("Is NASCA's correlation different from MEXA's? Here: difference with a paired bootstrap interval "
                "over languages and Williams' p; beside it the paper's difference (no interval published)",
                nasca_against_mexa(comparisons, table))


def nasca_against_mexa(comparisons: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Pearson r of NASCA minus MEXA's per benchmark, model and pooling: here (with interval and p) and in the
    paper (the same models' difference, where the paper has them)."""
    rows = comparisons[(comparisons.correlation == "pearson") & comparisons.metric_a.isin(["nasca", "mexa"])
                       & comparisons.metric_b.isin(["nasca", "mexa"])].copy()
    sign = rows.metric_a.map({"nasca": 1, "mexa": -1})   # the difference as NASCA − MEXA whatever the order
    rows["difference"] = sign * rows.difference
    rows["ci_low"], rows["ci_high"] = (rows.ci_low.where(sign > 0, -rows.ci_high),
                                       rows.ci_high.where(sign > 0, -rows.ci_low))
    published = paper.pivot_table(index=["benchmark", "pooling", "model"], columns="metric", values="pearson_r")
    published = (published["nasca"] - published["mexa"]).rename("paper NASCA − MEXA")
    table = rows.set_index(["benchmark", "pooling", "model"])[["n", "difference", "ci_low", "ci_high", "p"]]
    table = table.rename(columns={"difference": "NASCA − MEXA"})
    return table.join(published, how="outer") if len(table) else published.to_frame()
