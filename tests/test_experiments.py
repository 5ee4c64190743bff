"""Every embedded experiment config, shrunk (tiny model, 4 units), runs its sweep and prints its table beside the
paper's numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import ROOT, UDHR, composed

PAPER = ROOT / "experiments" / "paper"
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")
                     if (ROOT / "experiments" / f"{p.stem}.py").is_file())
SHRUNK = {"fig3": ["task.trainer.max_steps=2", "task.every=1", "task.translate_units=2", "task.max_new_tokens=3",
                   "task.untrained=[spa_Latn]"]}
NUMBER = r"-?\d+\.\d+"
LANGUAGE = r"[a-z]{3}_[A-Z][a-z]{3}"


def paper_numbers(name: str, column: str, digits: int) -> list[str]:
    """The paper's values of one table as the experiment prints them (its averages are recomputed, not shown)."""
    table = pd.read_csv(PAPER / f"{name}.csv")
    table = table[table.model != "AVG"] if "model" in table else table
    return [f"{value:.{digits}f}" for value in table[column].dropna()]


def split_at(stdout: str, marker: str) -> tuple[str, str]:
    """The output before and after the paper's table."""
    assert marker in stdout, stdout[-3000:]
    return tuple(stdout.split(marker, 1))


def check_table1(stdout: str, model: str) -> None:
    ours, paper = split_at(stdout, "The paper's Table 1")
    assert "Table 1 — retrieval accuracy (%), best layer" in ours and model in ours
    assert re.search(rf"Embedding\s+En→xx\s+{NUMBER}\s+{NUMBER}", ours)
    assert re.search(rf"NAS\s+En→xx\s+{NUMBER}\s+{NUMBER}", ours)
    assert len(re.findall(rf"(En→xx|xx→En|En⇔xx)\s+{NUMBER}\s+{NUMBER}\n", ours)) == 6   # 2 representations × 3
    assert all(value in paper for value in paper_numbers("table1", "value", 2))


def check_table2(stdout: str, model: str) -> None:
    assert f"Table 2 — NASCA of language pairs; here: {model}" in stdout
    pairs = pd.read_csv(PAPER / "table2.csv")
    rows = [re.search(rf"{target}\s+(\S+)\s+{paper:.4f}\n", stdout) for target, paper in zip(pairs.target, pairs.nasca)]
    assert all(rows), stdout[-3000:]                              # every pair: ours beside the paper's
    assert any(re.fullmatch(NUMBER, row[1]) for row in rows)     # pairs of the corpus's languages are measured


def check_correlations(stdout: str, model: str, table: str) -> None:
    ours, paper = split_at(stdout, f"The paper's {table.title()}")
    assert "Pearson r across languages" in ours and model in ours and "languages per correlation" in ours
    rows = re.findall(rf"(weighted|mean|last)?\s+(mexa|nasca|navca)\s+({NUMBER})\s+({NUMBER})\n", ours)
    assert {pooling for pooling, *_ in rows} == {"weighted", "mean", "last", ""}   # each pooling's rows
    assert all(r == average for *_, r, average in rows)           # one model: its r is the average
    assert all(value in paper for value in paper_numbers(table, "value", 4))
    assert "Williams" in paper                                    # the NASCA-vs-MEXA comparison beside the paper's


def check_fig2(stdout: str, model: str) -> None:
    figures = re.findall(r"figure: (\S+)", stdout)
    assert len(figures) == 1 and Path(figures[0]).is_file()
    assert "Mean NASCA over languages by layer (the paper: low at the bottom and top" in stdout
    assert re.search(rf"{re.escape(model)}(\s+{NUMBER}){{3}}\n", stdout)          # the profile over 3 layers
    assert re.search(rf"peak layer as a share of depth: {re.escape(model)} \d\.\d\d", stdout)


def check_fig3(stdout: str, model: str) -> None:
    assert re.search(r"nasca \(layer-pooled\) by training step \(the paper's Figure 3\)", stdout)
    trained = re.findall(rf"{LANGUAGE} \(trained\)(\s+{NUMBER}){{3}}\n", stdout)   # steps 0-2
    assert len(trained) == 3 * 2                                  # three trained languages, mexa and nasca
    assert len(re.findall(rf"spa_Latn \(untrained\)(\s+{NUMBER}){{3}}\n", stdout)) == 2
    translated = re.findall(rf"^(chrf)?\s+{LANGUAGE}(\s+{NUMBER}){{3}}$", stdout, re.MULTILINE)
    assert len(translated) == 4 and translated[0][0] == "chrf"    # chrF of each language at steps 0-2
    assert "the paper's Figure 4: COMET 0.9635, CometKiwi 0.9286" in stdout
    assert re.search(rf"nasca\s+chrf\s+all\s+\d+(\s+({NUMBER}|NaN)){{2}}\s+NaN\n", stdout)  # no paper value for chrF
    assert len(re.findall(r"figure: \S+alignment_(by_step|vs_chrf)\.png", stdout)) == 2


CHECKS = {"table1": check_table1, "table2": check_table2, "fig2": check_fig2, "fig3": check_fig3,
          "table3": lambda stdout, model: check_correlations(stdout, model, "table3"),
          "table4": lambda stdout, model: check_correlations(stdout, model, "table4")}


def test_every_experiment_script_has_its_output_checked():
    assert EXPERIMENTS and set(EXPERIMENTS) == set(CHECKS)


@pytest.mark.slow
@pytest.mark.skipif(not UDHR.is_dir(), reason="the udhr package is fetched by `make install`")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_shrunk_and_prints_its_table(experiment, tiny_folder, tmp_path):
    outputs = tmp_path / "outputs"
    overrides = [f"experiment={experiment}", "model=hf", f"model.name_or_path={tiny_folder}", "dataset.max_units=4",
                 "model.device=cpu", "model.dtype=float32",
                 f"paths.outputs={outputs}", f"hydra.run.dir={tmp_path / 'run'}",
                 f"hydra.sweep.dir={tmp_path / 'multirun'}", *SHRUNK.get(experiment, [])]
    if composed([f"experiment={experiment}"]).benchmark.source == "standin":
        overrides.append("benchmark.units=2")   # held-out units of the stand-in (an option of that source only)
    sweep = subprocess.run([sys.executable, "-m", "neuronxa.run", *overrides], cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    table = subprocess.run([sys.executable, "-m", f"experiments.{experiment}", "--experiment", experiment,
                            "--outputs", str(outputs)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={"PATH": ""})
    assert table.returncode == 0, table.stderr[-3000:]
    assert "paper" in table.stdout.lower()
    CHECKS[experiment](table.stdout, str(tiny_folder))


def test_nasca_against_mexa_is_oriented_whatever_the_metric_order():
    import pandas as pd

    from experiments.common import nasca_against_mexa

    comparisons = pd.DataFrame([
        {"model": "m1", "pooling": "mean", "benchmark": "b", "correlation": "pearson", "metric_a": "mexa",
         "metric_b": "nasca", "n": 9, "difference": -0.1, "ci_low": -0.3, "ci_high": 0.05, "p": 0.2},
        {"model": "m2", "pooling": "mean", "benchmark": "b", "correlation": "pearson", "metric_a": "nasca",
         "metric_b": "mexa", "n": 9, "difference": 0.2, "ci_low": 0.1, "ci_high": 0.3, "p": 0.01},
        {"model": "m2", "pooling": "mean", "benchmark": "b", "correlation": "spearman", "metric_a": "nasca",
         "metric_b": "mexa", "n": 9, "difference": 9, "ci_low": 9, "ci_high": 9, "p": 9}])
    paper = pd.DataFrame({"benchmark": "b", "pooling": "mean", "model": "m1", "metric": ["nasca", "mexa"],
                          "pearson_r": [0.9, 0.85]})
    table = nasca_against_mexa(comparisons, paper)
    assert table.loc[("b", "mean", "m1"), ["NASCA − MEXA", "ci_low", "ci_high"]].tolist() == [0.1, -0.05, 0.3]
    assert table.loc[("b", "mean", "m1"), "paper NASCA − MEXA"] == pytest.approx(0.05)
    assert table.loc[("b", "mean", "m2"), "NASCA − MEXA"] == 0.2
