"""What a run leaves behind: the console's lines in the run folder's run.log, plots whose titles fit, and the
corpus it measured as the dataset of its MLflow run."""

import json
import re
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from helpers import ROOT, composed, tiny_overrides
from neuronxa.data.corpus import ParallelCorpus
from neuronxa.tasks import neurons as neurons_task
from neuronxa.tasks import plots
from neuronxa.tasks.tracking import corpus_digest, runs

TIMESTAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] ")


def dataset_inputs(uri: str, experiment: str) -> list:
    """The dataset inputs of the experiment's only run."""
    (run_id,) = runs(uri, experiment).run_id
    return mlflow.tracking.MlflowClient(uri).get_run(run_id).inputs.dataset_inputs


@pytest.mark.cli
def test_the_console_shows_plain_lines_and_run_log_holds_them_with_the_corpus_as_the_runs_dataset(tiny_folder,
                                                                                                    tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "neuronxa.run", *tiny_overrides(tiny_folder, tmp_path),
                             "metric=nasca", "score.plots=off", f"hydra.run.dir={run}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = result.stdout.splitlines()
    assert re.fullmatch(r"language\s+source\s+units\s+tokens\s+truncated\s+status\s+seconds", shown[0])
    assert any(line.startswith("stage one: 2 written; truncated units: 0") for line in shown)
    assert f"run folder: {run}" in shown and shown[-1].startswith("MLflow run ")   # to the end of the run
    assert not any(TIMESTAMP.match(line) for line in shown)
    logged = (run / "run.log").read_text().splitlines()
    assert sum(bool(TIMESTAMP.match(line)) for line in logged) >= 3     # a time on each record's first line
    assert [TIMESTAMP.sub("", line) for line in logged] == shown
    (dataset,) = dataset_inputs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", "neuronxa")
    assert dataset.dataset.name == "toy" and len(dataset.dataset.digest) == 16
    columns = json.loads(dataset.dataset.schema)["mlflow_colspec"]
    assert [column["name"] for column in columns] == ["eng_Latn", "fra_Latn"]
    assert {tag.key: tag.value for tag in dataset.tags} == {"mlflow.data.context": "evaluation"}


def test_the_neurons_task_logs_its_corpus_as_the_runs_dataset(tiny_folder, tmp_path):
    overrides = tiny_overrides(tiny_folder, tmp_path) + ["task=neurons", "task.languages=null", "dataset.max_units=2",
                                                         "task.top_rate=0.1", "task.deactivate=false",
                                                         "tracking.experiment=neurons"]
    neurons_task.run(composed(overrides), tmp_path / "run")
    (dataset,) = dataset_inputs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", "neurons")
    assert dataset.dataset.name == "toy" and json.loads(dataset.dataset.profile) == {"languages": 2, "units": 4}


def test_the_corpus_digest_follows_its_texts_and_ids_only():
    corpus = ParallelCorpus("toy", {"eng_Latn": {"s1": "a cat", "s2": "rain"}, "fra_Latn": {"s1": "un chat"}})
    same = ParallelCorpus("other name", {"eng_Latn": {"s1": "a cat", "s2": "rain"}, "fra_Latn": {"s1": "un chat"}})
    edited = ParallelCorpus("toy", {"eng_Latn": {"s1": "a cat", "s2": "rain!"}, "fra_Latn": {"s1": "un chat"}})
    renumbered = ParallelCorpus("toy", {"eng_Latn": {"s1": "a cat", "s3": "rain"}, "fra_Latn": {"s1": "un chat"}})
    assert corpus_digest(corpus) == corpus_digest(same)
    assert len({corpus_digest(corpus), corpus_digest(edited), corpus_digest(renumbered)}) == 3


def test_long_titles_are_broken_into_lines_that_fit_the_figure(tmp_path):
    """The forest plot's axes sit right of long labels: a title centred on them ran past the figure's edge."""
    correlations = pd.DataFrame({"metric": ["retrieval.hidden.target_to_pivot", "nasca"], "benchmark": "standin:x",
                                 "pearson_r": [0.5, 0.7], "pearson_ci_low": [0.2, 0.4], "pearson_ci_high": [0.8, 0.9]})
    title = "correlation with downstream results, meta-llama/Llama-3.1-8B-Instruct"
    fig = plots._figure(7, 2.2)
    ax = fig.subplots()
    ax.set_yticks([0, 1], [f"{m} · standin:x" for m in correlations.metric])
    ax.set_title(title)
    fig.tight_layout()
    assert plots.fit_titles(fig)
    fig.tight_layout()
    box = ax.title.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and "\n" in ax.title.get_text()
    assert ax.title.get_text().replace("\n", " ") == title
    path = plots.correlation_intervals(correlations, tmp_path / "forest.png", title)
    assert path.stat().st_size > 1000


PLOT_WITHOUT_PYPLOT = """
import sys
import numpy as np, pandas as pd
from pathlib import Path
from neuronxa.tasks import plots
assert "matplotlib" not in sys.modules, "matplotlib imported with the module"
scores = pd.DataFrame({"language": np.repeat(["fra_Latn", "deu_Latn"], 3), "layer": [0, 1, 2] * 2,
                       "metric": "nasca", "value": np.linspace(0, 1, 6)})
plots.layer_curves(scores, "nasca", Path(sys.argv[1]) / "curves.png", title="nasca · tiny")
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
"""


@pytest.mark.cli
def test_plots_are_figures_without_pyplot_and_matplotlib_loads_only_to_plot(tmp_path):
    result = subprocess.run([sys.executable, "-c", PLOT_WITHOUT_PYPLOT, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "curves.png").stat().st_size > 1000
