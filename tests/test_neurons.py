"""Language neurons: identification on synthetic probabilities with planted neurons and against a slow loop
reference of the entropy rule; counting, stages, overlap, comparison and deactivation on tiny models."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import SENTENCES, manual_token_states, tiny_model, tiny_tokenizer
from neuronxa.errors import NeuronXAError
from neuronxa.neurons import deactivation, interop, tables
from neuronxa.neurons.identify import identify, probabilities
from neuronxa.stage_one.forward import activation_counts, tokenize
from neuronxa.stage_one.likelihood import perplexity

K, LAYERS, WIDTH = 4, 2, 200
SPECIFIC = {(0, 5): 0, (0, 17): 1, (0, 40): 2, (0, 99): 3, (1, 3): 0, (1, 8): 1, (1, 60): 2, (1, 61): 3,
            (1, 150): 0, (0, 123): 2}
RELATED = {(0, 7): (0, 1), (0, 70): (2, 3), (1, 11): (0, 2), (1, 12): (1, 3), (1, 190): (0, 3), (0, 180): (1, 2)}
AGNOSTIC = [(0, 1), (0, 2), (1, 100), (1, 101)]


def planted(seed=0):
    """Probabilities with known specific, related and agnostic neurons among near-uniform low ones."""
    rng = np.random.default_rng(seed)
    prob = 0.02 + 0.001 * rng.random((LAYERS, WIDTH, K))
    for (layer, neuron), language in SPECIFIC.items():
        prob[layer, neuron] = 0.01
        prob[layer, neuron, language] = 0.9
    for (layer, neuron), languages in RELATED.items():
        prob[layer, neuron] = 0.01
        prob[layer, neuron, list(languages)] = 0.9
    for layer, neuron in AGNOSTIC:
        prob[layer, neuron] = 0.95
    return prob


def as_dict(frame, kind):
    rows = frame[frame.type == kind]
    return {(r.layer, r.neuron): r.languages for r in rows.itertuples()}


def slow_lape(prob, top_rate, filter_rate, bar_rate):
    """LAPE written out with loops over neurons and a sorted list for each percentile."""
    values = sorted(prob.ravel().tolist())
    floor = values[round(len(values) * filter_rate) - 1]
    bar = values[round(len(values) * bar_rate) - 1]
    scored = []
    for layer in range(prob.shape[0]):
        for neuron in range(prob.shape[1]):
            p = prob[layer, neuron].tolist()
            if max(p) <= floor:
                continue
            q = [v / sum(p) for v in p]
            entropy = -sum(v * math.log(v) for v in q if v > 0) / math.log(len(p))
            scored.append((entropy, layer * prob.shape[1] + neuron, layer, neuron))
    kept = sorted(scored)[: round(prob.shape[0] * prob.shape[1] * top_rate)]
    result = {}
    for _, _, layer, neuron in kept:
        languages = tuple(i for i, v in enumerate(prob[layer, neuron]) if v > bar)
        if 0 < len(languages) < prob.shape[2]:
            result[layer, neuron] = ("specific" if len(languages) == 1 else "related", languages)
    for layer in range(prob.shape[0]):
        for neuron in range(prob.shape[1]):
            if all(v > bar for v in prob[layer, neuron]):
                result[layer, neuron] = ("agnostic", tuple(range(prob.shape[2])))
    return result


def test_lape_finds_the_planted_neurons():
    found = identify(planted(), "lape", top_rate=(len(SPECIFIC) + len(RELATED)) / (LAYERS * WIDTH))
    assert as_dict(found, "specific") == {key: (language,) for key, language in SPECIFIC.items()}
    assert as_dict(found, "related") == RELATED
    assert set(as_dict(found, "agnostic")) == set(AGNOSTIC)
    assert list(found.columns) == ["layer", "neuron", "type", "languages", "kept"]


@pytest.mark.parametrize("seed, top_rate", [(1, 0.01), (2, 0.05), (3, 0.2)])
def test_lape_matches_the_slow_reference_on_random_probabilities(seed, top_rate):
    rng = np.random.default_rng(seed)
    prob = rng.beta(0.3, 3, size=(3, 60, 5))
    found = identify(prob, "lape", top_rate=top_rate, filter_rate=0.9, bar_rate=0.93)
    ours = {(r.layer, r.neuron): (r.type, r.languages) for r in found.itertuples()}
    assert ours == slow_lape(prob, top_rate, 0.9, 0.93)
    assert len(ours) > 0


def slow_finegrained_mask(prob, top_rate, lam, bar_rate=0.95):
    """The language-neurons authors' identify step restated with loops: per-neuron entropy of the clamped,
    renormalised shares minus λ · max p / norm_max over ALL neurons (no filter); keep the round(top_rate · L · N)
    lowest (equal scores in (layer, neuron) order); a kept neuron joins every language above the bar (the
    round(numel · bar_rate)-th smallest probability). Returns mask[language][layer] = sorted neurons."""
    n_layers, width, k = prob.shape
    norm_max = sum(1 / j for j in range(1, k + 1)) / k
    scored = []
    for layer in range(n_layers):
        for neuron in range(width):
            vec = [float(v) for v in prob[layer, neuron]]
            total = sum(vec)
            shares = [v / total for v in vec] if total > 0 else [1 / k] * k
            shares = [max(v, 1e-12) for v in shares]
            shares = [v / sum(shares) for v in shares]
            entropy = -sum(v * math.log(v + 1e-30) for v in shares) / math.log(k)
            scored.append((entropy - max(vec) * lam / norm_max, layer * width + neuron))
    kept = sorted(scored)[: round(n_layers * width * top_rate)]
    values = sorted(float(v) for v in prob.ravel())
    bar = values[round(len(values) * bar_rate) - 1]
    mask = [[[] for _ in range(n_layers)] for _ in range(k)]
    for _, flat in kept:
        layer, neuron = divmod(flat, width)
        for language in range(k):
            if prob[layer, neuron, language] > bar:
                mask[language][layer].append(neuron)
    return [[sorted(neurons_) for neurons_ in layers] for layers in mask]


def slow_autosweep(prob, top_rate, bar_rate=0.95):
    """The authors' bisection: both ends, then halve [0, 0.2] to 1e-3; λ is fine when no kept neuron is in
    all K languages' masks; the answer is the last fine λ tried (None if none)."""
    k = prob.shape[-1]

    def fine(lam):
        mask = slow_finegrained_mask(prob, top_rate, lam, bar_rate)
        appear = {}
        for layers in mask:
            for layer, neurons_ in enumerate(layers):
                for neuron in neurons_:
                    appear[layer, neuron] = appear.get((layer, neuron), 0) + 1
        return k not in appear.values()

    lo, hi, best = 0.0, 0.2, None
    if fine(lo):
        best = lo
    if fine(hi):
        best = hi
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if fine(mid):
            best, lo = mid, mid
        else:
            hi = mid
    return best


def coarse(seed, shape=(3, 60, 5)):
    """Probabilities from a handful of values: many exact ties in the ranking and at the bar."""
    rng = np.random.default_rng(seed)
    prob = rng.choice([0.0, 0.05, 0.1, 0.5, 0.9], size=shape, p=[0.3, 0.3, 0.25, 0.1, 0.05])
    prob[0, :6] = prob[0, 6:12]          # whole neurons repeated: equal scores side by side
    return prob


CASES = [("beta", lambda seed: np.random.default_rng(seed).beta(0.3, 3, size=(3, 60, 5))),
         ("planted", lambda seed: planted(seed)), ("ties", coarse)]


@pytest.mark.parametrize("name, make", CASES, ids=[name for name, _ in CASES])
@pytest.mark.parametrize("seed, top_rate", [(1, 0.03), (2, 0.05), (3, 0.1)])
def test_finegrained_defaults_reproduce_the_authors_code(name, make, seed, top_rate):
    prob = make(seed)
    found = identify(prob, top_rate=top_rate)          # the defaults: fine-grained, no filter, λ searched
    expected_lam = slow_autosweep(prob, top_rate)
    assert found.attrs["method"] == "finegrained"
    assert found.attrs["lam"] == (0.0 if expected_lam is None else expected_lam)
    assert found.attrs["lam_found"] == (expected_lam is not None)
    ours = interop.mask_lists(found, prob.shape[-1], prob.shape[0])
    assert ours == slow_finegrained_mask(prob, top_rate, found.attrs["lam"])
    assert sum(map(len, sum(ours, []))) > 0


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.109375, 0.2])
def test_finegrained_with_a_given_lambda_matches_the_loop(lam):
    for prob in (coarse(7), planted(4)):
        found = identify(prob, "finegrained", top_rate=0.05, lam=lam)
        assert interop.mask_lists(found, prob.shape[-1], prob.shape[0]) == slow_finegrained_mask(prob, 0.05, lam)


def test_finegrained_lambda_search_finds_the_planted_neurons_and_no_filter():
    prob = planted()
    top_rate = (len(SPECIFIC) + len(RELATED) + 1) / (LAYERS * WIDTH)   # one place more than the planted ones
    found = identify(prob, top_rate=top_rate)
    assert found.attrs["lam_found"] and found.attrs["lam"] == slow_autosweep(prob, top_rate)
    assert as_dict(found, "related") == RELATED
    assert SPECIFIC.items() <= {key: langs[0] for key, langs in as_dict(found, "specific").items()}.items()
    # asking for LAPE's filter changes the selection: the default has none
    prob = np.random.default_rng(5).beta(0.3, 3, size=(3, 60, 5))
    filtered = interop.mask_lists(identify(prob, top_rate=0.1, lam=0.05, filter_rate=0.95), 5, 3)
    assert interop.mask_lists(identify(prob, top_rate=0.1, lam=0.05, filter_rate=0), 5, 3) == \
        slow_finegrained_mask(prob, 0.1, 0.05) != filtered


def test_no_lambda_found_warns_and_uses_zero():
    prob = np.full((1, 50, 3), 0.01)
    prob[0, :2] = 0.9           # two neurons above the bar in every language, kept first at any λ
    with pytest.warns(UserWarning, match="no λ"):
        found = identify(prob, top_rate=0.1)
    assert found.attrs["lam"] == 0.0 and not found.attrs["lam_found"]
    assert slow_autosweep(prob, 0.1) is None


def test_bad_inputs_are_refused():
    with pytest.raises(NeuronXAError, match="two languages or more"):
        identify(np.zeros((2, 3, 1)))
    with pytest.raises(NeuronXAError, match="unknown method"):
        identify(planted(), "magic")


def test_counts_layers_overlap_and_comparison():
    languages = ["eng", "fra", "deu", "zho"]
    found = identify(planted(), "lape", top_rate=16 / 400)
    counts = tables.counts_by_language(found, languages).set_index("language")
    assert counts.loc["eng"].tolist() == [3, 3, 4]          # specific, related (shared), agnostic
    layers = tables.by_layer(found, LAYERS)
    assert layers.loc[0].tolist() == [5, 3, 2] and layers.loc[1].tolist() == [5, 3, 2]
    shared = tables.overlap(found, languages)
    assert shared.loc["eng", "fra"] == 1 and shared.loc["eng", "eng"] == 6 and (shared == shared.T).all().all()
    base = found[found.type != "related"]
    by_layer_change, per_language = tables.compare(base, found, languages, n_layers=LAYERS,
                                                       aligned_languages=["eng"])
    assert by_layer_change["related"].tolist() == [3, 3] and by_layer_change["specific"].tolist() == [0, 0]
    assert per_language.set_index("language").loc["zho", "related"] == 3
    assert per_language.in_aligned_set.tolist() == [True, False, False, False]


def test_stages_by_the_stated_rule():
    counts = [10, 8, 2, 1, 1, 3, 9, 12, 4]
    layers = pd.DataFrame({"specific": counts, "related": [0] * 9, "agnostic": [0, 5, 9, 9, 9, 6, 2, 1, 3]})
    found = tables.stages(layers)
    assert list(zip(found.first_layer, found.last_layer)) == [(0, 1), (2, 5), (6, 7), (8, 8)]


def test_probabilities_need_tokens():
    assert probabilities([np.array([[2, 4]])], [8]).tolist() == [[[0.25], [0.5]]]
    with pytest.raises(NeuronXAError, match="no counted tokens"):
        probabilities([np.array([[1]])], [0])


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_activation_counts_match_a_manual_count(kind):
    model, tokenizer = tiny_model(kind), tiny_tokenizer(bos=kind != "gpt2")
    active, total, truncated = activation_counts(model, tokenizer, SENTENCES, batch_size=2)
    expected = sum(np.stack([layer.sum(axis=0) for layer in manual_token_states(model, ids)["nas"]])
                   for ids in tokenize(tokenizer, SENTENCES, 512)[0])
    np.testing.assert_array_equal(active, expected.astype(np.int64))
    assert total == sum(len(ids) for ids in tokenize(tokenizer, SENTENCES, 512)[0]) and truncated == 0


def test_activation_counts_after_a_prompt_count_only_the_text():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    prompt = "the right to "
    active, total, _ = activation_counts(model, tokenizer, SENTENCES[:3], prompt=prompt)
    expected, tokens = 0, 0
    skip = len(tokenizer(prompt)["input_ids"])
    for ids in tokenize(tokenizer, [prompt + s for s in SENTENCES[:3]], 512)[0]:
        states = manual_token_states(model, ids)["nas"]
        expected = expected + np.stack([layer[skip:].sum(axis=0) for layer in states])
        tokens += len(ids) - skip
    np.testing.assert_array_equal(active, expected.astype(np.int64))
    assert total == tokens


def test_deactivation_equals_zeroing_the_down_projection_columns():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    chosen = {0: [1, 5], 2: [3]}
    ids = torch.tensor([tokenizer(SENTENCES[0])["input_ids"]])
    edited = zeroed(model, chosen)
    with torch.no_grad():
        with deactivation.deactivated(model, chosen):
            hooked = model(input_ids=ids).logits
        torch.testing.assert_close(hooked, edited(input_ids=ids).logits)
        assert not torch.allclose(model(input_ids=ids).logits, hooked)   # and the hooks are gone afterwards


def zeroed(model, chosen: dict[int, list[int]]):
    """A copy of ``model`` with the chosen neurons' down-projection columns zeroed (deactivation by editing)."""
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for layer, indices in chosen.items():
            edited.model.layers[layer].mlp.down_proj.weight[:, indices] = 0
    return edited


def test_deactivation_matrix_equals_perplexities_of_edited_models():
    """Each cell is the perplexity of the evaluated language under a model whose deactivated neurons are removed
    from its weights, minus the intact perplexity; the control sets are drawn in language order from the seed."""
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    found = pd.DataFrame({"layer": [0, 1, 2, 2], "neuron": [1, 2, 3, 9], "type": ["specific", "specific",
                          "related", "agnostic"], "languages": [(0,), (1,), (0, 1), (0, 1)]})
    texts = {"eng": SENTENCES[:2], "fra": SENTENCES[2:4]}
    own, control, intact = deactivation.deactivation_matrix(model, tokenizer, found, languages=["eng", "fra"],
                                                            texts=texts, seed=4)
    masks = {"eng": {0: [1], 2: [3]}, "fra": {1: [2], 2: [3]}}      # the agnostic neuron is in no mask
    rng = np.random.default_rng(4)
    for language, chosen in masks.items():
        drawn = deactivation.random_like(chosen, model.config.intermediate_size, rng)
        for evaluated, text in texts.items():
            base = perplexity(model, tokenizer, text)
            assert intact[evaluated] == pytest.approx(base, rel=1e-6)
            assert own.loc[language, evaluated] == pytest.approx(perplexity(zeroed(model, chosen), tokenizer, text)
                                                                 - base, rel=1e-4, abs=1e-6)
            assert control.loc[language, evaluated] == pytest.approx(
                perplexity(zeroed(model, drawn), tokenizer, text) - base, rel=1e-4, abs=1e-6)
    assert (own != 0).all().all()


def test_control_sets_match_the_mask_per_layer_and_cover_every_neuron():
    rng = np.random.default_rng(0)
    draws = [deactivation.random_like({0: [1, 2], 3: [5]}, 24, rng) for _ in range(200)]
    assert all({layer: len(indices) for layer, indices in drawn.items()} == {0: 2, 3: 1} for drawn in draws)
    assert all(len(set(drawn[0])) == 2 for drawn in draws)
    assert set().union(*(drawn[0] for drawn in draws)) == set(range(24))



@pytest.mark.parametrize("options, message", [
    ({"top_rate": 0}, r"^top_rate must be a number in \(0, 1\], not 0$"),
    ({"bar_rate": 1.5}, r"^bar_rate must be a number in \(0, 1\], not 1.5$"),
    ({"filter_rate": -0.1}, r"^filter_rate must be a number in \[0, 1\] or null, not -0.1$"),
    ({"lam": -1}, r"^lam must be a number at least 0 or null, not -1$"),
])
def test_identification_options_are_refused_in_the_functions_own_terms(options, message):
    with pytest.raises(NeuronXAError, match=message):
        identify(planted(), **options)
