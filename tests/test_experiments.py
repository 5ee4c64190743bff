"""Every embedded experiment config, shrunk (tiny model, 4 units), runs its sweep and prints its table."""

import subprocess
import sys

import pytest

from helpers import ROOT, UDHR

EXPERIMENTS = sorted(p.stem for p in (ROOT / "neuronxa" / "conf" / "experiment").glob("*.yaml")
                     if (ROOT / "experiments" / f"{p.stem}.py").is_file())
SHRUNK = {"fig3": ["task.trainer.max_steps=2", "task.every=1", "task.translate_units=2", "task.max_new_tokens=3",
                   "task.untrained=[spa_Latn]"]}


@pytest.mark.slow
@pytest.mark.skipif(not UDHR.is_dir(), reason="the udhr package is fetched by `make install`")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_shrunk_and_prints_its_table(experiment, tiny_folder, tmp_path):
    outputs = tmp_path / "outputs"
    overrides = [f"experiment={experiment}", "model=hf", f"model.name_or_path={tiny_folder}", "dataset.max_units=4",
                 "model.device=cpu", "model.dtype=float32",
                 "++benchmark.units=2", f"paths.outputs={outputs}", f"hydra.run.dir={tmp_path / 'run'}",
                 f"hydra.sweep.dir={tmp_path / 'multirun'}", *SHRUNK.get(experiment, [])]
    sweep = subprocess.run([sys.executable, "-m", "neuronxa.run", *overrides], cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    table = subprocess.run([sys.executable, "-m", f"experiments.{experiment}", "--experiment", experiment,
                            "--uri", f"sqlite:///{outputs / 'mlflow.db'}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={"NEURONXA_OUTPUTS": str(outputs), "PATH": ""})
    assert table.returncode == 0, table.stderr[-3000:]
    assert "paper" in table.stdout.lower()
    if experiment in ("table3", "table4"):
        assert "Williams" in table.stdout   # the NASCA-vs-MEXA comparison beside the paper's difference


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
