"""Every embedded experiment config, shrunk (tiny model, 4 units), runs its sweep and prints its table."""

import subprocess
import sys

import pytest

from conftest import ROOT, UDHR

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml") if not p.stem.endswith("_paper"))


@pytest.mark.slow
@pytest.mark.skipif(not UDHR.is_dir(), reason="the udhr package is fetched by `make install`")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_shrunk_and_prints_its_table(experiment, tiny_folder, tmp_path):
    outputs = tmp_path / "outputs"
    overrides = [f"experiment={experiment}", "model=hf", f"model.name_or_path={tiny_folder}", "dataset.max_units=4",
                 "model.device=cpu", "model.dtype=float32",
                 "++benchmark.units=2", f"paths.outputs={outputs}", f"hydra.run.dir={tmp_path / 'run'}",
                 f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    sweep = subprocess.run([sys.executable, "-m", "neuronxa.run", *overrides], cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    table = subprocess.run([sys.executable, "-m", f"experiments.{experiment}", "--experiment", experiment,
                            "--uri", f"sqlite:///{outputs / 'mlflow.db'}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={"NEURONXA_OUTPUTS": str(outputs), "PATH": ""})
    assert table.returncode == 0, table.stderr[-3000:]
    assert "paper" in table.stdout.lower()
