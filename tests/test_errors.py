"""Mistakes a user makes get one line naming the culprit before any model loads, Ctrl-C leaves a resumable
cache and says so, and the MLflow run records how the job ended."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import pytest

from helpers import ROOT, composed, corpus_file, tiny_overrides
from neuronxa.data.benchmarks import read_csv, read_lm_eval
from neuronxa.data.readers import read_flores, read_jsonl, read_tsv
from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import models
from neuronxa.tasks import align as align_task
from neuronxa.tasks.tracking import EXPERIMENT_KIND, MODEL_DEVELOPMENT, check_reachable

BOM = "\ufeff"


def test_a_byte_order_mark_is_not_text(tmp_path):
    (tmp_path / "bom.tsv").write_text(BOM + "id\teng_Latn\tfra_Latn\na\tHi there.\tSalut.\nb\tYes.\tOui.\n")
    corpus = read_tsv(tmp_path / "bom.tsv")
    assert corpus.ids("eng_Latn") == ["a", "b"] and corpus.texts("eng_Latn")[0] == "Hi there."
    rows = [{"id": "a", "eng_Latn": "Hi.", "fra_Latn": "Salut."}, {"id": "b", "eng_Latn": "Yes.", "fra_Latn": "Oui."}]
    (tmp_path / "bom.jsonl").write_text(BOM + "".join(json.dumps(row) + "\n" for row in rows))
    assert read_jsonl(tmp_path / "bom.jsonl").texts("eng_Latn") == ["Hi.", "Yes."]
    (tmp_path / "flores" / "devtest").mkdir(parents=True)
    for code in ("eng_Latn", "fra_Latn"):
        (tmp_path / "flores" / "devtest" / f"{code}.devtest").write_text(BOM + "First.\nSecond.\n")
    assert read_flores(tmp_path / "flores").texts("fra_Latn")[0] == "First."
    (tmp_path / "bench.csv").write_text(BOM + "model,benchmark,language,value\nm,xnli,fr,0.5\n")
    assert read_csv(tmp_path / "bench.csv").language.tolist() == ["fra_Latn"]


def test_a_corpus_of_the_pivot_alone_is_refused(tmp_path):
    (tmp_path / "one.tsv").write_text("id\teng_Latn\na\tHi.\nb\tYes.\n")
    with pytest.raises(NeuronXAError, match="only the pivot language eng_Latn"):
        read_tsv(tmp_path / "one.tsv").validate("eng_Latn")


def test_tracking_stores_that_cannot_work_are_refused(tmp_path):
    (tmp_path / "garbage.db").write_text("not a database")
    with pytest.raises(NeuronXAError, match="is not an SQLite database"):
        check_reachable(f"sqlite:///{tmp_path / 'garbage.db'}")
    (tmp_path / "file").write_text("")
    with pytest.raises(NeuronXAError, match="is a file"):
        check_reachable(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
    check_reachable(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")    # a store to be created is fine


def test_lm_eval_files_without_a_language_task_are_refused(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"results": {"hellaswag": {"acc,none": 0.5}}}))
    with pytest.raises(NeuronXAError, match="no per-language task"):
        read_lm_eval([tmp_path / "results.json"])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(NeuronXAError, match="expected a JSON object"):
        read_lm_eval([tmp_path / "list.json"])


@pytest.mark.parametrize("override, message", [   # what the config step cannot know: tests/test_config_errors.py
    ("extract.layers=999", "between 1 and the model's 3 layers"),
    ("score.languages=[deu_Latn]", "score.languages: language 'deu_Latn' is not in corpus"),
])
def test_bad_options_fail_before_any_model_loads_even_on_a_warm_cache(tiny_folder, tmp_path, monkeypatch, override,
                                                                      message):
    base = tiny_overrides(tiny_folder, tmp_path) + ["metric=nasca", "tracking.enabled=false", "score.plots=off"]
    align_task.run(composed(base), tmp_path / "warm")                 # the cache is warm now
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(NeuronXAError, match=message):
        align_task.run(composed(base + [override]), tmp_path / "run")


def test_the_mlflow_run_spans_the_job_and_records_how_it_ended(tiny_folder, tmp_path):
    base = tiny_overrides(tiny_folder, tmp_path) + ["metric=nasca", "score.plots=off"]
    cfg = composed(base)
    align_task.run(cfg, tmp_path / "ok")
    bench = tmp_path / "bench.csv"
    bench.write_text("model,benchmark,language,value\nsomeone-else,xnli,fr,0.5\n")
    with pytest.raises(NeuronXAError, match="no benchmark results for model"):
        align_task.run(composed(base[:-2] + ["metric=nasca", "score.plots=off", "benchmark=csv",
                                             f"benchmark.path={bench}"]), tmp_path / "failed")
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment.tags[EXPERIMENT_KIND] == MODEL_DEVELOPMENT         # the UI opens on runs
    finished, failed = sorted(client.search_runs([experiment.experiment_id]), key=lambda run: run.info.start_time)
    assert finished.info.status == "FINISHED" and "error" not in finished.data.tags
    assert finished.info.end_time > finished.info.start_time and "nasca.fra_Latn" in finished.data.metrics
    assert failed.info.status == "FAILED" and failed.data.tags["error"].startswith("no benchmark results for model")


INTERRUPTIBLE = textwrap.dedent("""
    import runpy, signal, sys, time
    from neuronxa.stage_one import forward
    signal.signal(signal.SIGINT, signal.default_int_handler)   # as a terminal's: a background job inherits SIG_IGN
    real = forward.pooled_tensors
    def paced(*args, **kwargs):
        time.sleep(1.5)
        return real(*args, **kwargs)
    forward.pooled_tensors = paced
    sys.argv = ["neuronxa.run", *sys.argv[1:]]
    runpy.run_module("neuronxa.run", run_name="__main__")
""")


@pytest.mark.slow
def test_ctrl_c_during_stage_one_says_what_is_cached_and_the_rerun_resumes(tiny_folder, tmp_path):
    tsv, cache = corpus_file(tmp_path), tmp_path / "cache"
    overrides = ["model=hf", f"model.name_or_path={tiny_folder}", "dataset=tsv", f"dataset.path={tsv}",
                 "model.device=cpu", "model.dtype=float32",
                 f"cache.dir={cache}", "extract.group_units=3", "benchmark=none", "tracking.enabled=false",
                 f"hydra.run.dir={tmp_path / 'run'}", "metric=nasca", "score.plots=off"]
    process = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE, *overrides], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(not p.parts[-3].startswith(".") for p in cache.glob("*/eng_Latn/zarr.json")):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    said = [line for line in stderr.splitlines() if line.startswith("interrupted: ")]
    assert "Traceback" not in stderr and len(said) == 1
    assert "languages cached in" in said[0] and said[0].endswith("to resume")
    rerun = subprocess.run([sys.executable, "-m", "neuronxa.run", *overrides], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "reused" in rerun.stdout and "written" in rerun.stdout
