"""Decoder layers that run several times in one forward pass (HRM-Text): each run is one probed layer, numbered as
the model numbers its cache slots, for the probes, deactivation and the neurons task alike; a layer that runs
twice in a model without a schedule is refused in one line. The tiny HRM-Text (two high cycles of two low cycles,
two layers per stack: 12 runs) is test_architectures.py's, recomputed run by run in tests/recurrence.py."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import composed, tiny_tokenizer
from recurrence import recomputed_runs, slot_hooks
from test_architectures import SENTENCES, expected_states, tiny
from neuronxa.errors import NeuronXAError
from neuronxa.neurons.deactivation import deactivated
from neuronxa.neurons.intervention import intervene
from neuronxa.stage_one import runs
from neuronxa.stage_one.forward import activation_counts, pooled_states
from neuronxa.stage_one.probes import KINDS, act_modules, architecture, decoder_layers, layer_ffn, layer_widths

# (H_cycles, L_cycles, layers per stack): the test model's, one L run per cycle, and one H cycle of three L runs
CYCLES = [(2, 2, 2), (3, 1, 2), (1, 3, 1)]


def hrm(h_cycles: int = 2, l_cycles: int = 2, per_stack: int = 2):
    return tiny("hrm_text", H_cycles=h_cycles, L_cycles=l_cycles, num_hidden_layers=per_stack)


@pytest.mark.parametrize("cycles", CYCLES)
def test_each_run_is_the_probed_layer_of_the_models_own_cache_slot(cycles):
    """The k-th call of a layer module is the probed layer that the model numbers it (cycle_offset + its index in
    its stack), in the order of the runs; as the model's formula (h·(L_cycles + 1) + l)·n + layer says."""
    model, (h_cycles, l_cycles, per_stack) = hrm(*cycles), cycles
    calls = []
    hooks = slot_hooks(model, lambda layer, slot: calls.append((layer, slot)))
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 5, 6]]), use_cache=False)
    for hook in hooks:
        hook.remove()
    assert [slot for _, slot in calls] == list(range(model.config.num_hidden_layers))
    probed = runs.probed_layers(model, decoder_layers(model))
    assert len(probed) == len(calls) and all(probed[slot] is layer for layer, slot in calls)
    for layer, run in runs.layer_runs(model, decoder_layers(model)):
        assert run.slots == tuple(slot for called, slot in calls if called is layer)
    for layer, slot in calls:   # the public way to a run's FFN: that of the layer module called on that run
        assert layer_ffn(model.base_model, architecture(model), slot) is layer.mlp
    schedule = runs.schedule(model)
    for h in range(h_cycles):
        for l in range(l_cycles + 1):
            for layer in range(per_stack):
                stack = "H_module.layers" if l == l_cycles else "L_module.layers"
                assert schedule[(h * (l_cycles + 1) + l) * per_stack + layer] == (stack, layer)


@pytest.mark.parametrize("cycles", CYCLES[1:])
def test_other_cycle_counts_match_the_recomputation_run_by_run(cycles):
    model = hrm(*cycles)
    states = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=3)   # padded batches
    expected = recomputed_runs(model, tiny_tokenizer(), SENTENCES)
    assert layer_widths(model) == [48] * model.config.num_hidden_layers
    for kind in KINDS:
        for pooling, slots in expected[kind].items():
            assert len(states[kind][pooling]) == len(slots) == model.config.num_hidden_layers
            for slot, want in enumerate(slots):
                np.testing.assert_allclose(states[kind][pooling][slot], want, atol=1e-4, rtol=1e-4,
                                           err_msg=f"{cycles} {kind} {pooling} {slot}")


def test_probing_the_first_runs_stops_the_forward_pass_after_them():
    states = pooled_states(hrm(), tiny_tokenizer(), SENTENCES, batch_size=3, layers=5)
    for kind in KINDS:
        for pooling, slots in expected_states("hrm_text")[kind].items():
            assert states[kind][pooling].shape[0] == 5
            np.testing.assert_allclose(states[kind][pooling], np.stack(slots[:5]), atol=1e-4, rtol=1e-4)


def logits_zeroing(model, ids, chosen: dict[int, list[int]]) -> torch.Tensor:
    """The logits with the chosen down projection inputs zeroed on the runs (slots) they belong to only, by hooks
    that read the model's own slot of each call."""
    current = []
    hooks = slot_hooks(model, lambda layer, slot: current.__setitem__(slice(None), [slot]))

    def zero(module, inputs):
        columns = chosen.get(current[0], [])
        return (inputs[0].index_fill(-1, torch.tensor(columns, dtype=torch.long), 0),) if columns else None

    hooks += [layer.mlp.down_proj.register_forward_pre_hook(zero) for layer in decoder_layers(model)]
    hooks += [layer.mlp.down_proj.register_forward_pre_hook(zero) for layer in model.model.H_module.layers]
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits
    finally:
        for hook in hooks:
            hook.remove()


def test_deactivating_a_runs_neurons_zeroes_its_down_projection_inputs_on_that_run_only():
    """Slot 5 (the H stack's second layer, first high cycle) and slot 6 (the L stack's first layer, second high
    cycle): not the same module's other runs; the counts restart with each forward pass. Weights drawn wider than
    the initialiser's, so that a few neurons move the logits."""
    model, chosen = copy.deepcopy(hrm()), {5: [1, 3], 6: [2]}
    torch.manual_seed(0)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.3)
    ids = tiny_tokenizer()(SENTENCES[0], return_tensors="pt")["input_ids"]
    expected = logits_zeroing(model, ids, chosen)
    # the same neurons on every run of the two modules: slots 5 and 11 (H layer 1), 0, 2, 6 and 8 (L layer 0)
    every_run = logits_zeroing(model, ids, {5: [1, 3], 11: [1, 3], 0: [2], 2: [2], 6: [2], 8: [2]})
    with torch.no_grad(), deactivated(model, chosen):
        got = [model(input_ids=ids, use_cache=False).logits for _ in range(2)]
    for logits in got:
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(expected, every_run, atol=1e-4)
    assert not torch.allclose(expected, model(input_ids=ids, use_cache=False).logits.detach(), atol=1e-4)


def test_the_neurons_task_counts_each_run_as_a_layer():
    """Activation counts per run (the neurons task's input): Σ over sentences of NAS mean × tokens; neurons beyond
    the last run are refused."""
    counts, tokens, _ = activation_counts(hrm(), tiny_tokenizer(), SENTENCES, batch_size=3)
    lengths = np.array([len(tiny_tokenizer()(s)["input_ids"]) for s in SENTENCES])
    expected = np.stack([lengths @ slot for slot in expected_states("hrm_text")["nas"]["mean"]])
    assert counts.shape == (12, 48) and tokens == lengths.sum()
    np.testing.assert_allclose(counts, expected, atol=1e-3)
    with pytest.raises(NeuronXAError, match=r"^neurons in layer 12, but the model has 12 layers$"):
        with intervene(hrm(), [(12, 0)], "zero"):
            pass


def test_a_layer_that_runs_more_often_than_its_schedule_says_is_refused_in_one_line(monkeypatch):
    full = runs.SCHEDULES["hrm_text"]
    monkeypatch.setitem(runs.SCHEDULES, "hrm_text", lambda config: full(config)[:6])   # one high cycle of two
    with pytest.raises(NeuronXAError, match=r"^a decoder layer ran more than the 2 times its model type's schedule "
                                            r"gives it \(probed layers 0, 2\) in one forward pass: .*not defined$"):
        pooled_states(hrm(), tiny_tokenizer(), SENTENCES[:1])


def test_expert_neurons_of_a_layer_that_runs_several_times_are_refused_in_one_line(monkeypatch):
    """No installed type schedules a mixture-of-experts layer: were one to, its runs' experts could not be edited
    apart, so deactivating them is refused before any hook is attached."""
    model = tiny("qwen2_moe")
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    before = hooks()
    monkeypatch.setitem(runs.SCHEDULES, "qwen2_moe", lambda config: (("layers", 0), ("layers", 1), ("layers", 0)))
    with pytest.raises(NeuronXAError, match=r"^expert neurons of a layer that runs several times in one forward "
                                            r"pass cannot be edited run by run: not supported$"):
        with deactivated(model, {0: [0]}):
            pass
    assert hooks() == before   # none attached


def test_a_layer_that_runs_twice_without_a_schedule_is_refused_in_one_line():
    """A toy Llama that runs its first layer again after its second (one module at two places in its list)."""
    model = copy.deepcopy(tiny("llama"))
    model.model.layers.append(model.model.layers[0])
    model.config.num_hidden_layers = 3
    with pytest.raises(NeuronXAError, match=r"^decoder layer 0 ran twice in one forward pass \(a recurrent model\?\)"):
        pooled_states(model, tiny_tokenizer(), SENTENCES[:1])


@pytest.mark.cli
def test_the_neurons_task_finds_and_switches_off_neurons_of_each_run(tmp_path):
    """The language-neurons task end to end on the saved tiny HRM-Text: its layers are the 12 runs, and each
    language's neurons are switched off run by run."""
    from neuronxa.tasks import neurons as neurons_task

    folder = tmp_path / "hrm"
    hrm().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("id\teng_Latn\tdeu_Latn\n" + "".join(
        f"u{i}\t{SENTENCES[i]}\t{SENTENCES[(i + 1) % len(SENTENCES)]}\n" for i in range(len(SENTENCES))))
    cfg = composed(["model=hf", f"model.name_or_path={folder}", "dataset=tsv", f"dataset.path={corpus}",
                    "model.device=cpu", "model.dtype=float32", f"paths.outputs={tmp_path / 'outputs'}",
                    "benchmark=none", "tracking.enabled=false", "score.plots=off", "task=neurons",
                    "task.languages=null", "dataset.max_units=2", "task.top_rate=0.1"])
    neurons_task.run(cfg, tmp_path / "neurons")
    found = pd.read_csv(tmp_path / "neurons" / "neurons.csv")
    assert len(found) and found.layer.between(0, 11).all() and found.neuron.between(0, 47).all()
    assert len(pd.read_csv(tmp_path / "neurons" / "by_layer.csv", index_col=0)) == 12
    assert pd.read_csv(tmp_path / "neurons" / "deactivation.csv", index_col=0).shape == (2, 2)


def test_the_cache_metadata_names_the_lists_whose_layers_run():
    from neuronxa.stage_one.sites import module_paths

    assert module_paths(hrm()) == {"nas": "(L_module.layers|H_module.layers).{the layer of run {layer}}.mlp.act_fn "
                                          "(output)",
                                   "nav": "(L_module.layers|H_module.layers).{the layer of run {layer}}.mlp.down_proj "
                                          "(input)",
                                   "hidden": "(L_module.layers|H_module.layers).{the layer of run {layer}} (output)"}


def test_act_modules_is_empty_where_one_activation_module_serves_several_runs():
    assert runs.repeats(hrm()) and act_modules(hrm()) == []
