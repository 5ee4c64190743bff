"""The same pooled states and counts on a GPU as on the CPU (float32), and close in bfloat16.

Skipped where no CUDA device is visible (CI and most machines); run wherever one is.
"""

import numpy as np
import pytest
import torch

from helpers import SENTENCES, tiny_model, tiny_tokenizer
from neuronxa.neurons.deactivation import deactivated
from neuronxa.stage_one.forward import activation_counts, pooled_states
from neuronxa.stage_one.likelihood import perplexity

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_gpu_states_equal_cpu_states(kind):
    model, tokenizer = tiny_model(kind), tiny_tokenizer(bos=kind != "gpt2")
    cpu = pooled_states(model, tokenizer, SENTENCES, batch_size=2)
    gpu = pooled_states(model.to("cuda"), tokenizer, SENTENCES, batch_size=2)
    for state_kind in cpu:
        for pooling in cpu[state_kind]:
            np.testing.assert_allclose(gpu[state_kind][pooling], cpu[state_kind][pooling], rtol=1e-3, atol=1e-4)
    half = pooled_states(model.to(torch.bfloat16), tokenizer, SENTENCES, batch_size=2)
    assert half["nas"]["weighted"].dtype == np.float32
    np.testing.assert_allclose(half["hidden"]["mean"], cpu["hidden"]["mean"], rtol=0.1, atol=0.05)
    agree = np.mean((half["nas"]["last"] == cpu["nas"]["last"]))
    assert agree > 0.95   # bfloat16 flips only activations very close to zero


def test_gpu_counts_and_deactivation():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    cpu_counts = activation_counts(model, tokenizer, SENTENCES)
    gpu_counts = activation_counts(model.to("cuda"), tokenizer, SENTENCES)
    np.testing.assert_array_equal(cpu_counts[0], gpu_counts[0])
    intact = perplexity(model, tokenizer, SENTENCES)
    with deactivated(model, {0: [1, 2, 3], 1: [4]}):
        changed = perplexity(model, tokenizer, SENTENCES)
    assert changed != intact and perplexity(model, tokenizer, SENTENCES) == pytest.approx(intact)


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "gpt_oss"])
def test_gpu_expert_neurons_and_deactivation(model_type):
    """Expert neurons and routing on the GPU (whose experts module may take another kernel path) equal the CPU's;
    deactivating expert neurons there equals zeroing their down-projection slices."""
    from test_moe import SENTENCES as MOE_SENTENCES, chosen_neurons, moe_model, zeroed_copy

    model, tokenizer = moe_model(model_type), tiny_tokenizer()
    cpu = pooled_states(model, tokenizer, MOE_SENTENCES, batch_size=2)
    model.to("cuda")
    gpu = pooled_states(model, tokenizer, MOE_SENTENCES, batch_size=2)
    for kind in ("nas", "nav", "routing"):
        for pooling in cpu[kind]:
            for layer, expected in enumerate(cpu[kind][pooling]):
                np.testing.assert_allclose(gpu[kind][pooling][layer], expected, rtol=1e-3, atol=1e-4)
    chosen = chosen_neurons(model, model_type)
    ids = tokenizer(MOE_SENTENCES, padding=True, return_tensors="pt").to("cuda")
    with torch.no_grad():
        with deactivated(model, chosen):
            edited = model(**ids).logits
        expected = zeroed_copy(model, model_type, chosen)(**ids).logits
    torch.testing.assert_close(edited, expected, atol=1e-3, rtol=1e-3)
