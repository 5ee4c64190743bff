"""Interventions on neurons (zero, scale, set, add) against edited weights and hand-written hooks, their clean
removal, generation under them, mean activations, the language identifier, and the steering task end to end."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import composed, corpus_file, tiny_model, tiny_overrides, tiny_tokenizer
from test_run import multirun
from neuronxa import intervene, mean_activations
from neuronxa.errors import NeuronXAError
from neuronxa.neurons import steering
from neuronxa.neurons.deactivation import deactivated
from neuronxa.stage_one.probes import act_modules, decoder_layers
from neuronxa.tasks import steer as steer_task
from neuronxa.tasks.tracking import runs

CHOSEN = [(0, 1), (0, 5), (2, 3), (2, 20)]
IDS = torch.tensor([[1, 5, 9, 14, 3, 22, 7]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def down_edited(model, factor: float):
    """A copy of ``model`` whose down projection's weights for the chosen neurons are multiplied by ``factor``
    (columns of nn.Linear's weight, rows of GPT-2's Conv1D weight)."""
    edited = copy.deepcopy(model)
    for layer, neuron in CHOSEN:
        mlp = decoder_layers(edited)[layer].mlp
        with torch.no_grad():
            if hasattr(mlp, "down_proj"):
                mlp.down_proj.weight[:, neuron] *= factor
            else:
                mlp.c_proj.weight[neuron, :] *= factor
    return edited


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("mode, value, factor", [("zero", None, 0.0), ("scale", 2.5, 2.5), ("scale", -1.0, -1.0)])
def test_zero_and_scale_equal_editing_the_down_projection(kind, mode, value, factor):
    model = tiny_model(kind)
    expected = logits(down_edited(model, factor))
    with intervene(model, CHOSEN, mode, value):
        torch.testing.assert_close(logits(model), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(logits(model), expected)


def hand_hooked(model, edit):
    """Logits with a hand-written hook on every chosen layer's activation module: ``edit(a, layer) -> a``."""
    handles = [act_modules(model)[layer].register_forward_hook(
        lambda module, inputs, output, layer=layer: edit(output.clone(), layer)) for layer in {l for l, _ in CHOSEN}]
    try:
        return logits(model)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_set_and_add_equal_a_hand_written_hook(kind):
    model = tiny_model(kind)
    values = [0.5, -1.0, 2.0, 3.0]

    def assign(a, layer, add):
        for (l, n), v in zip(CHOSEN, values):
            if l == layer:
                a[..., n] = a[..., n] + v if add else v
        return a

    for mode, add in (("set", False), ("add", True)):
        expected = hand_hooked(model, lambda a, layer: assign(a, layer, add))
        with intervene(model, pd.DataFrame(CHOSEN, columns=["layer", "neuron"]), mode, values):
            torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-6)
    with intervene(model, CHOSEN, "set", 0.25):    # one value for every neuron
        torch.testing.assert_close(logits(model), hand_hooked(model, lambda a, layer: _fill(a, layer, 0.25)))


def _fill(a, layer, value):
    for l, n in CHOSEN:
        if l == layer:
            a[..., n] = value
    return a


def test_outputs_are_unchanged_after_the_block_also_when_it_raises():
    model = tiny_model("llama")
    before = logits(model)
    with intervene(model, CHOSEN, "scale", 3.0):
        assert not torch.allclose(logits(model), before)
    torch.testing.assert_close(logits(model), before)
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(model, CHOSEN, "add", 1.0):
            raise RuntimeError("boom")
    torch.testing.assert_close(logits(model), before)
    assert all(not act._forward_hooks for act in act_modules(model))


def test_deactivated_is_the_zero_mode():
    model = tiny_model("llama")
    with intervene(model, CHOSEN, "zero"):
        expected = logits(model)
    with deactivated(model, {0: [1, 5], 2: [3, 20]}):
        torch.testing.assert_close(logits(model), expected)


def test_bad_neurons_or_values_are_refused():
    model = tiny_model("llama")
    with pytest.raises(NeuronXAError, match="mode 'double' is unknown"):
        with intervene(model, CHOSEN, "double", 2):
            pass
    with pytest.raises(NeuronXAError, match="3 values for 4 neurons"):
        with intervene(model, CHOSEN, "set", [1, 2, 3]):
            pass
    with pytest.raises(NeuronXAError, match="needs a value"):
        with intervene(model, CHOSEN, "add"):
            pass
    with pytest.raises(NeuronXAError, match="the model has 3 layers"):
        with intervene(model, [(7, 1)], "zero"):
            pass


def stepwise(model, ids, steps):
    """Greedy decoding by full forward passes, one token at a time (no cache)."""
    for _ in range(steps):
        ids = torch.cat([ids, logits(model, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generation_under_an_intervention_equals_stepwise_forward_passes(kind):
    model = tiny_model(kind, seed=3)
    ids = IDS[:, :4]
    with intervene(model, CHOSEN, "set", 4.0):
        expected = stepwise(model, ids, 6)
        for cache in (True, False):
            with torch.no_grad():
                out = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=cache,
                                     eos_token_id=None, pad_token_id=0)
            assert out.tolist() == expected.tolist()
    assert stepwise(model, ids, 6).tolist() != expected.tolist()    # the intervention changed the continuation


def test_mean_activations_equal_the_mean_over_tokens_by_hand():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    texts = ["all human beings are born free", "la vie", "everyone has the right to life liberty"]
    seen = {layer: [] for layer in range(3)}
    handles = [act.register_forward_hook(lambda m, i, o, layer=layer: seen[layer].append(o[0]))
               for layer, act in enumerate(act_modules(model))]
    with torch.no_grad():
        for text in texts:
            model(input_ids=torch.tensor([tokenizer(text)["input_ids"]]))
    for handle in handles:
        handle.remove()
    # every token but each text's BOS
    expected = np.stack([torch.cat([a[1:] for a in seen[layer]]).mean(0).numpy() for layer in range(3)])
    np.testing.assert_allclose(mean_activations(model, tokenizer, texts, batch_size=2), expected, rtol=1e-5,
                               atol=1e-6)


def test_language_identification_on_known_sentences():
    sentences = {"eng_Latn": "All human beings are born free and equal in dignity and rights.",
                 "fra_Latn": "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
                 "deu_Latn": "Alle Menschen sind frei und gleich an Würde und Rechten geboren.",
                 "rus_Cyrl": "Все люди рождаются свободными и равными в своем достоинстве и правах.",
                 "zho_Hans": "人人生而自由，在尊严和权利上一律平等。"}
    labels = steering.identify_language(list(sentences.values()))
    assert labels == [steering.identifier_label(code) for code in sentences] == ["en", "fr", "de", "ru", "zh"]
    assert steering.identify_language(["", "1234 !!"]) == ["", ""]
    assert steering.identifier_label("yor_Latn") == "yo" and steering.identifier_label("xxx_Latn") is None
    frame = steering.measured([[5, 6, 5, 6, 5, 6]], tiny_tokenizer(), "xxx_Latn")
    assert np.isnan(frame.is_target[0])     # a language the identifier does not know: no share


def test_repeated_ngrams_by_hand():
    assert steering.repeated_ngrams([1, 2, 3, 4, 5]) == 0
    assert steering.repeated_ngrams([1, 2, 3, 1, 2, 3]) == pytest.approx(1 / 4)   # 4 trigrams, (1,2,3) twice
    assert steering.repeated_ngrams([7, 7, 7, 7, 7]) == pytest.approx(2 / 3)
    assert np.isnan(steering.repeated_ngrams([1, 2]))


def test_the_design_holds_every_combination():
    cells = steering.design(["zero", "patch"], ["set"], [1, 2], combine=["zero", "patch"])
    assert cells[0].mode == "none"
    modes = {(c.neurons, c.mode, c.strength) for c in cells[1:] if c.neurons == "random"}
    assert {m for _, m, _ in modes} == {"source_zero", "source_patch", "target_set", "source_zero+target_set",
                                        "source_patch+target_set"}
    assert len(cells) == 1 + 2 * (2 + 2 + 4)


def test_prompts_are_the_opening_words_of_held_out_sentences():
    assert steer_task.prompts_of(["One two three four. Five six. Seven eight nine ten"], 5, 2) == \
        ["One two", "Seven eight"]
    with pytest.raises(NeuronXAError, match="lower task.prompt_words"):
        steer_task.prompts_of(["Too short."], 5, 4)


def test_the_steering_task_end_to_end_on_a_tiny_model(tiny_folder, tmp_path):
    overrides = tiny_overrides(tiny_folder, tmp_path) + [
        f"dataset.path={corpus_file(tmp_path)}", "task=steer", "task.languages=null", "dataset.max_units=2",
        "task.top_rate=0.2", "task.targets=[fra_Latn,deu_Latn]", "task.prompt_words=2", "task.new_tokens=4",
        "task.strengths=[1,3]", "task.target_modes=[set,scale]", "tracking.experiment=steer"]
    steer_task.run(composed(overrides), tmp_path / "run")
    folder = tmp_path / "run"
    table = pd.read_csv(folder / "steering.csv")
    cells = steering.design(["zero", "patch"], ["set", "scale"], [1, 3], combine=["zero"])
    assert len(table) == 2 * len(cells) and set(table.target) == {"fra_Latn", "deu_Latn"}
    assert ((table.low <= table.share) & (table.share <= table.high)).all() and (table.n == 1).all()
    assert table.perplexity.gt(0).all()
    made = pd.read_csv(folder / "continuations.csv")
    assert len(made) == table.n.sum() and set(made.prompt) == {"the right"}
    shares = made.groupby(["target", "neurons", "mode", "strength"], dropna=False).is_target.mean()
    np.testing.assert_allclose(np.sort(shares.to_numpy()), np.sort(table.share.to_numpy()))
    assert (folder / "plots" / "steering.png").is_file()
    assert runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", "steer")["tags.task"].tolist() == ["steer"]


@pytest.mark.integration
def test_a_sweep_over_targets_and_strengths_logs_one_run_each(tiny_folder, tmp_path):
    overrides = tiny_overrides(tiny_folder, tmp_path) + [
        f"dataset.path={corpus_file(tmp_path)}", "task=steer", "task.languages=null", "dataset.max_units=2",
        "task.prompt_words=2", "task.new_tokens=2", "task.source_modes=[zero]", "task.combine=[]",
        "task.targets=[fra_Latn],[deu_Latn]", "task.strengths=[1],[2,4]"]
    stdout, logged = multirun(overrides, tmp_path, "steer_sweep")
    assert len(logged) == 4 and stdout.count("stage one: 4 reused") == 3
    assert set(logged["params.task.targets"]) == {"['fra_Latn']", "['deu_Latn']"}
