"""The whole job through Hydra: composed configs, one-line errors, sweeps that never repeat a forward pass,
and the MLflow experiment they fill."""

import logging
import random
import subprocess
import sys

import fsspec
import mlflow
import numpy as np
import pandas as pd
import pytest

from helpers import ROOT, composed, tiny_overrides
from neuronxa.errors import NeuronXAError
from neuronxa.neurons import interop
from neuronxa.run import TASKS
from neuronxa.stage_one import models
from neuronxa.tasks import align as align_task
from neuronxa.tasks import common as pipeline
from neuronxa.tasks import neurons as neurons_task
from neuronxa.tasks import pairwise as pairwise_task
from neuronxa.tasks.tracking import runs


def multirun(overrides, tmp_path, experiment):
    """A sweep through the command line; returns its stdout and the runs it logged to ``experiment``."""
    result = subprocess.run([sys.executable, "-m", "neuronxa.run", "-m", *overrides, f"tracking.experiment={experiment}",
                             f"hydra.sweep.dir={tmp_path / 'multirun'}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", experiment)



def test_every_metric_and_output_on_a_tiny_model(tiny_folder, tmp_path):
    cfg = composed(tiny_overrides(tiny_folder, tmp_path) + ["metric=all", "extract.batch_size=2"])
    align_task.run(cfg, tmp_path / "run")
    scores = pd.read_csv(tmp_path / "run" / "scores.csv")
    assert list(scores.columns) == ["model", "dataset", "pooling", "metric", "pivot", "language", "layer", "value", "n"]
    assert set(scores.metric) >= {"nasca", "navca", "mexa", "cka", "svcca", "anc", "retrieval.nas.bidirectional",
                                  "retrieval.hidden.pivot_to_target"}
    assert set(scores.layer) == {0, 1, 2} and set(scores.language) == {"fra_Latn"}
    summary = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert {"score", "best_layer", "n", "chance_p"} <= set(summary.columns)
    assert (tmp_path / "run" / "plots" / "nasca_by_layer.png").stat().st_size > 1000
    logged = runs(cfg.tracking.uri, "neuronxa")
    assert logged["tags.model"].tolist() == [str(tiny_folder)]
    history = mlflow.tracking.MlflowClient(cfg.tracking.uri).get_metric_history(
        logged.run_id[0], "nasca.fra_Latn.by_layer")
    assert sorted(m.step for m in history) == [0, 1, 2]


def test_standin_correlation_path_runs_offline(tiny_folder, tmp_path):
    overrides = tiny_overrides(tiny_folder, tmp_path)[:-1] + ["benchmark=standin", "dataset.max_units=2",
                                                              "metric=nasca", "tracking.enabled=false",
                                                              "score.plots=off"]
    cfg = composed(overrides)
    align_task.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "plots").exists()
    correlations = pd.read_csv(tmp_path / "run" / "correlations.csv")
    assert correlations.benchmark.tolist() == ["standin:neg_bits_per_byte"]
    assert "needs 3" in correlations.note[0]   # one target language: no correlation, and it says so


def test_a_device_map_from_the_command_line_reaches_transformers_as_a_dict(tiny_folder, tmp_path):
    cfg = composed(tiny_overrides(tiny_folder, tmp_path) + ["model.device_map={model.layers.0: cpu}"])
    device_map = pipeline.plain(cfg.model.device_map)
    assert device_map == {"model.layers.0": "cpu"} and type(device_map) is dict
    assert pipeline.plain(composed(tiny_overrides(tiny_folder, tmp_path)).model.device_map) is None


def test_a_cache_at_an_fsspec_url_serves_stage_one_and_the_standin(tiny_folder, tmp_path, monkeypatch):
    fs = fsspec.filesystem("memory")
    cache = f"memory://neuronxa-run-{tmp_path.name}"
    overrides = tiny_overrides(tiny_folder, tmp_path)[:-1] + [
        "benchmark=standin", "dataset.max_units=2", "metric=nasca", "tracking.enabled=false", f"cache.dir={cache}"]
    align_task.run(composed(overrides), tmp_path / "first")
    assert len(fs.glob(f"{cache}/standin/*.csv")) == 1 and len(fs.glob(f"{cache}/*/fra_Latn/zarr.json")) == 1
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("the model was loaded on a warm cache"))
    align_task.run(composed(overrides), tmp_path / "second")
    for name in ("scores.csv", "benchmarks.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "first" / name), pd.read_csv(tmp_path / "second" / name))
    fs.rm(cache.removeprefix("memory://"), recursive=True)


@pytest.mark.integration
def test_sweep_runs_each_forward_pass_once_and_fills_one_experiment(tiny_folder, tmp_path):
    overrides = tiny_overrides(tiny_folder, tmp_path) + ["metric=nasca,mexa", "pooling=weighted,mean"]
    stdout, logged = multirun(overrides, tmp_path, "sweep")
    assert stdout.count("stage one: 2 written") == 1
    assert stdout.count("stage one: 2 reused") == 3
    assert len(logged) == 4
    assert set(zip(logged["params.pooling.name"], logged["params.metric.name"])) == {
        ("weighted", "nasca"), ("weighted", "mexa"), ("mean", "nasca"), ("mean", "mexa")}


def test_neurons_task_end_to_end_on_a_tiny_model(tiny_folder, tmp_path):
    overrides = tiny_overrides(tiny_folder, tmp_path) + [
        "task=neurons", "task.languages=null", "dataset.max_units=2", "task.top_rate=0.1",
        f"task.compare_model={tiny_folder}", "task.aligned_languages=[eng_Latn]", "tracking.experiment=neurons"]
    neurons_task.run(composed(overrides), tmp_path / "run")
    folder = tmp_path / "run"
    found = pd.read_csv(folder / "neurons.csv")
    assert set(found.type) <= {"specific", "related", "agnostic"} and len(found) > 0
    assert interop.read_mask(folder / "mask.pt")[["layer", "neuron"]].values.tolist() == \
        found[found.kept][["layer", "neuron"]].values.tolist()
    assert set(pd.read_csv(folder / "by_layer.csv").layer) == {0, 1, 2}
    assert len(pd.read_csv(folder / "stages.csv")) == 4
    compared = pd.read_csv(folder / "compare_by_language.csv")
    assert (compared[["specific", "related", "agnostic"]] == 0).all().all()   # the same model: nothing changed
    assert compared.in_aligned_set.tolist() == [True, False]
    matrix = pd.read_csv(folder / "deactivation.csv", index_col=0)
    assert matrix.shape == (2, 2) and list(matrix.index) == ["eng_Latn", "fra_Latn"]
    assert (folder / "plots" / "deactivation.png").is_file()
    compared = pd.read_csv(folder / "compared_deactivation.csv", index_col=0)   # the compared model's own matrix
    assert compared.shape == (2, 2)
    np.testing.assert_allclose(compared.to_numpy(), matrix.to_numpy())        # the same model: the same matrix
    logged = runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", "neurons")
    assert logged["tags.task"].tolist() == ["neurons"]


def test_neurons_from_published_counts_without_a_model_then_its_mask_deactivates(tiny_folder, tmp_path, monkeypatch):
    import torch

    rng = torch.Generator().manual_seed(0)
    files = []
    for code in ("eng_Latn", "fra_Latn"):   # LAPE's format: {'n': tokens, 'over_zero': LongTensor[layers, neurons]}
        files.append(tmp_path / f"activation.{code}.train.tiny")
        torch.save({"n": 40, "over_zero": torch.randint(0, 40, (3, 24), generator=rng)}, files[-1])
    base = tiny_overrides(tiny_folder, tmp_path) + ["task=neurons", "task.languages=[eng_Latn,fra_Latn]",
                                                    "dataset.max_units=2", "task.top_rate=0.1"]
    monkeypatch.setattr(neurons_task, "stage_one_counts", lambda *a, **k: pytest.fail("stage one ran"))
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("a model loaded"))
    neurons_task.run(composed(base + [f"task.counts=[{files[0]},{files[1]}]", "task.deactivate=false"]),
                     tmp_path / "counts")
    mask = torch.load(tmp_path / "counts" / "mask.pt", weights_only=True)
    assert len(mask) == 2 and len(mask[0]) == 3
    found = pd.read_csv(tmp_path / "counts" / "neurons.csv")
    assert sum(t.numel() for layers in mask for t in layers) == found[found.kept].languages.str.split().str.len().sum()
    monkeypatch.undo()
    neurons_task.run(composed(base + [f"task.mask={tmp_path / 'counts' / 'mask.pt'}"]), tmp_path / "mask")
    assert pd.read_csv(tmp_path / "mask" / "deactivation.csv", index_col=0).shape == (2, 2)
    torch.save([[torch.tensor([30])] * 3] * 2, tmp_path / "wide.pt")     # neuron 30 of a 24-neuron model
    with pytest.raises(NeuronXAError, match="model has 3 layers × 24 neurons"):
        neurons_task.run(composed(base + [f"task.mask={tmp_path / 'wide.pt'}"]), tmp_path / "wide")
    with pytest.raises(NeuronXAError, match="task.languages names 1"):
        neurons_task.run(composed(base + [f"task.mask={tmp_path / 'wide.pt'}", "task.languages=[eng_Latn]"]),
                         tmp_path / "names")


def test_unreachable_tracking_server_fails_before_stage_one(tiny_folder, tmp_path, monkeypatch):
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]          # closed once the block ends: nothing listens there
    cfg = composed(tiny_overrides(tiny_folder, tmp_path) + [f"tracking.uri=http://127.0.0.1:{port}"])
    monkeypatch.setattr(align_task, "stage_one", lambda *a, **k: pytest.fail("stage one started"))
    with pytest.raises(NeuronXAError, match=f"MLflow server http://127.0.0.1:{port} is unreachable"):
        align_task.run(cfg, tmp_path / "run")


def test_truncated_units_are_counted_in_the_output(tiny_folder, tmp_path, caplog):
    cfg = composed(tiny_overrides(tiny_folder, tmp_path) + ["extract.max_length=3", "metric=nasca",
                                                            "tracking.enabled=false"])
    caplog.set_level(logging.INFO, logger="neuronxa")
    align_task.run(cfg, tmp_path / "run")
    assert "truncated units: 6 (max_length 3)" in caplog.text


def test_a_bad_benchmark_file_fails_before_stage_one(tiny_folder, tmp_path, monkeypatch):
    bad = tmp_path / "bench.csv"
    bad.write_text("model,benchmark,language,value\nx,xnli,fr,high\n")
    cfg = composed(tiny_overrides(tiny_folder, tmp_path)[:-1] + ["benchmark=csv", f"benchmark.path={bad}"])
    monkeypatch.setattr(align_task, "stage_one", lambda *a, **k: pytest.fail("stage one started"))
    with pytest.raises(NeuronXAError, match="row 2: value 'high' is not a number"):
        align_task.run(cfg, tmp_path / "run")


def test_csv_benchmarks_correlate_for_the_runs_model(tiny_folder, tmp_path):
    results = tmp_path / "bench.csv"
    results.write_text("model,benchmark,language,value\n"
                       f"{tiny_folder},xnli,fr,0.5\n{tiny_folder},xnli,en,0.9\nother,xnli,fr,0.1\n")
    cfg = composed(tiny_overrides(tiny_folder, tmp_path)[:-1] + ["benchmark=csv", f"benchmark.path={results}",
                                                                 "metric=nasca", "tracking.enabled=false"])
    align_task.run(cfg, tmp_path / "run")
    row = pd.read_csv(tmp_path / "run" / "correlations.csv").iloc[0]
    assert row.benchmark == "xnli" and row.n == 1 and "needs 3" in row.note


@pytest.mark.slow
def test_sweep_through_the_submitit_launcher(tiny_folder, tmp_path):
    overrides = tiny_overrides(tiny_folder, tmp_path) + ["hydra/launcher=local", "metric=nasca,mexa"]
    _, logged = multirun(overrides, tmp_path, "submitit")
    assert len(logged) == 2
    logs = "".join(p.read_text() for p in (tmp_path / "multirun" / ".submitit").rglob("*_log.out"))
    assert logs.count("stage one: 2 written") + logs.count("stage one: 2 reused") == 2


def six_language_corpus(tmp_path):
    """A TSV corpus of six languages and six units (scrambled word orders), and made-up results for five."""
    words = "all human beings are born free and equal in dignity rights everyone has the right to life".split()
    rng = random.Random(0)
    languages = ["eng_Latn", "fra_Latn", "deu_Latn", "ita_Latn", "spa_Latn", "por_Latn"]
    rows = ["id\t" + "\t".join(languages)]
    for unit in range(6):
        base = rng.sample(words, 6)
        rows.append(f"u{unit}\t" + "\t".join(" ".join(rng.sample(base, 6) if i else base)
                                           for i in range(len(languages))))
    corpus = tmp_path / "six.tsv"
    corpus.write_text("\n".join(rows) + "\n")
    results = tmp_path / "results.csv"
    results.write_text("model,benchmark,language,value\n" + "".join(
        f"MODEL,xnli,{language},{0.1 * i}\n" for i, language in enumerate(languages[1:], 1)))
    return corpus, results


def test_intervals_differences_and_comparisons_in_a_run(tiny_folder, tmp_path, caplog):
    corpus, results = six_language_corpus(tmp_path)
    results.write_text(results.read_text().replace("MODEL", str(tiny_folder)))
    cfg = composed(tiny_overrides(tiny_folder, tmp_path)[:-1] + [
        f"dataset.path={corpus}", "benchmark=csv", f"benchmark.path={results}", "metric=alignment",
        "score.resamples=50", "score.bootstrap=200", "score.permutations=200"])
    caplog.set_level(logging.INFO, logger="neuronxa")
    align_task.run(cfg, tmp_path / "run")
    summary = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert (summary.ci_low <= summary.score + 1e-12).all() and (summary.score <= summary.ci_high + 1e-12).all()
    differences = pd.read_csv(tmp_path / "run" / "differences.csv")
    assert {(a, b) for a, b in zip(differences.metric_a, differences.metric_b)} == {
        ("nasca", "navca"), ("nasca", "mexa"), ("navca", "mexa")}
    correlations = pd.read_csv(tmp_path / "run" / "correlations.csv")
    assert correlations.pearson_permutation_p.between(0, 1).all() and correlations.n.eq(5).all()
    comparisons = pd.read_csv(tmp_path / "run" / "comparisons.csv")
    assert list(comparisons.columns[2:]) == ["benchmark", "correlation", "metric_a", "metric_b", "n", "r_a", "r_b",
                                             "difference", "ci_low", "ci_high", "p"]
    assert len(comparisons) == 3 * 2
    assert (tmp_path / "run" / "plots" / "alignment_intervals.png").stat().st_size > 1000
    assert "Williams" in caplog.text
    logged = runs(cfg.tracking.uri, "neuronxa")
    assert "metrics.nasca.fra_Latn.ci_low" in logged.columns and "metrics.pearson.nasca.xnli.ci_high" in logged.columns


def test_every_language_as_pivot(tiny_folder, tmp_path, monkeypatch):
    corpus, _ = six_language_corpus(tmp_path)
    cfg = composed(tiny_overrides(tiny_folder, tmp_path) + [f"dataset.path={corpus}", "task=pairwise",
                                                            "metric=all", "score.resamples=20"])
    assert "pairwise" in TASKS                                  # the command line's task=pairwise
    pairwise_task.run(cfg, tmp_path / "run")
    pairs = pd.read_csv(tmp_path / "run" / "pairwise.csv")
    assert set(pairs.metric) == {"nasca", "navca", "mexa"} and len(pairs) == 3 * 6 * 5
    assert list(pairs.columns[3:]) == ["metric", "pivot", "target", "value", "ci_low", "ci_high", "n"]
    assert (tmp_path / "run" / "plots" / "nasca_pairwise.png").stat().st_size > 1000
    with monkeypatch.context() as patch, pytest.raises(NeuronXAError,
                                                       match="pairwise scoring computes the alignment scores nasca"):
        patch.setattr(pairwise_task, "stage_one", lambda *a, **k: pytest.fail("stage one started"))
        pairwise_task.run(composed(tiny_overrides(tiny_folder, tmp_path) + [
            f"dataset.path={corpus}", "task=pairwise", "metric=cka"]), tmp_path / "bad")
    one = composed(tiny_overrides(tiny_folder, tmp_path) + [f"dataset.path={corpus}", "score.pivot=deu_Latn",
                                                            "metric=nasca", "score.resamples=20"])
    align_task.run(one, tmp_path / "one")
    summary = pd.read_csv(tmp_path / "one" / "summary.csv").set_index("language")
    mine = pairs[(pairs["pivot"] == "deu_Latn") & (pairs.metric == "nasca")].set_index("target")
    assert np.allclose(mine.value[summary.index], summary.score)


WATCHED_JOB = """
import atexit, runpy, sys
atexit.register(lambda: print("imported:", *[m for m in ("torch", "transformers", "peft", "mlflow", "matplotlib")
                                             if m in sys.modules], file=sys.stderr))
sys.argv = ["neuronxa.run", *sys.argv[1:]]
runpy.run_module("neuronxa.run", run_name="__main__")
"""


@pytest.mark.cli
def test_a_job_whose_states_are_all_cached_imports_neither_torch_nor_transformers_nor_mlflow_nor_matplotlib(
        tiny_folder, tmp_path):
    overrides = tiny_overrides(tiny_folder, tmp_path) + ["tracking.enabled=false", "score.plots=off"]
    said = []
    for attempt, plots in (("cold", "off"), ("warm", "background")):   # background: drawn by another process
        result = subprocess.run([sys.executable, "-c", WATCHED_JOB, *overrides, f"score.plots={plots}",
                                 f"hydra.run.dir={tmp_path / attempt}"], cwd=ROOT, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        said.append(result.stderr.split("imported:")[1].split())
    assert "transformers" in said[0]
    assert not {"torch", "transformers", "peft", "mlflow", "matplotlib"} & set(said[1])
