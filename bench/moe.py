"""The mixture-of-experts figure of the bench: stage one's probes (expert neurons pooled from what each experts
module receives, routing weights) ÷ a bare forward pass, on a small random Qwen3-MoE-like model, and the cache's
bytes per stored value for its E·I-wide layers.

    moe_over_bare: pooled_states ÷ bare forward over the same batches (best of interleaved rounds; target ≤ 1.25);
        moe_over_bare_rounds: each round's ratio
    moe_bytes_per_value: cache bytes on disk per stored value of the MoE model's entries
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neuronxa.stage_one.forward import pooled_states
from neuronxa.stage_one.store import StateStore


def moe_config(quick: bool, vocab_size: int):
    """A Qwen3-MoE-like config: many small experts, top 2 (larger and deeper without ``quick``)."""
    from transformers import Qwen3MoeConfig

    hidden, layers, experts = (256, 4, 8) if quick else (512, 6, 16)
    return Qwen3MoeConfig(hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=hidden,
                          num_experts=experts, num_experts_per_tok=2, num_hidden_layers=layers, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=hidden // 4, vocab_size=vocab_size)


def moe_figures(tokenizer, texts: list[str], *, quick: bool, batch_size: int, rounds: int,
                bare_forward) -> dict[str, float]:
    """``moe_over_bare`` and ``moe_bytes_per_value`` on a random MoE model (``bare_forward`` as bench.run's)."""
    from transformers import Qwen3MoeForCausalLM

    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(moe_config(quick, len(tokenizer))).eval()
    bare_forward(model, tokenizer, texts[:16], batch_size, 512)   # warm-up
    bares, probed = [], []
    for _ in range(rounds):
        bares.append(bare_forward(model, tokenizer, texts, batch_size, 512))
        start = time.perf_counter()
        states = pooled_states(model, tokenizer, texts, batch_size=batch_size, max_length=512)
        probed.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory(prefix="neuronxa-bench-moe-") as folder:
        store = StateStore(Path(folder), {"model": "bench-moe", "corpus": "bench"})
        store.write("all", {kind: dict(by) for kind, by in states.items()}, [str(i) for i in range(len(texts))],
                    "bench", n_tokens=states.n_tokens, n_truncated=0)
        values = sum(sum(np.size(layer) for layer in array) for by in states.values() for array in by.values())
        size = store.fs.du(store.path)
    return {"moe_model": f"qwen3_moe {model.config.num_experts}x{model.config.moe_intermediate_size}",
            "moe_bare_seconds": min(bares), "moe_probed_seconds": min(probed),
            "moe_over_bare": min(probed) / min(bares),
            "moe_over_bare_rounds": " ".join(f"{p / b:.3f}" for p, b in zip(probed, bares)),
            "moe_bytes_per_value": size / values}
