"""Every causal-LM architecture of the installed transformers, as a tiny random model (2 layers, hidden 32, vocab
100, seeded, float32, CPU): its pooled states against a recomputation of a and z from each layer's FFN input and
weights, written here; mixture-of-experts layers against the recomputation of tests/helpers.py; models without an
FFN and experts that cannot be read refused with one line; the rest skipped with the reason. The list of supported architectures in docs/architectures.md is checked against those that pass.

The recomputation runs each sentence alone (no padding), captures the FFN's input x with a hook, computes
a = act(gate x) and z = a * up x (a = z = act(up x) when not gated) from the weights, checks that z is what the
down projection really receives, and pools with explicit weights; ``pooled_states`` runs the sentences in one
padded batch.
"""

from __future__ import annotations

import copy
import functools
import re
import statistics
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import (
    FIXTURES,
    ROOT,
    assert_refused_before_weights_load,
    composed,
    moe_blocks,
    recomputed_experts,
    tiny_overrides,
    tiny_tokenizer,
)
from byte_patches import recomputed_patches
from recurrence import recomputed_runs
from neuronxa.data.readers import read_tsv
from neuronxa.errors import NeuronXAError
from neuronxa.neurons.deactivation import deactivated
from neuronxa.stage_one import models
from neuronxa.stage_one.cache import extract_corpus
from neuronxa.stage_one.forward import pooled_states
from neuronxa.stage_one.models import spec_from_config
from neuronxa.stage_one.options import StageOneOptions
from neuronxa.stage_one.probes import KINDS
from neuronxa.stage_one.sites import Sites, find_sites, layer_list, name_sites
from neuronxa.tasks.common import stage_one_options

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
            vocab_size=100, head_dim=8, n_embd=32, n_layer=2, n_head=4, n_inner=48, d_model=32, ffn_dim=48,
            max_position_embeddings=128, n_positions=128, num_layers=2, num_heads=4, rotary_dim=8,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, num_experts=4, num_local_experts=4, n_routed_experts=4,
            num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=24)
# per type, what the generic config does not fit (a value None leaves the config's own default: Falcon computes its
# head_dim). Multi-head latent attention (DeepSeek-V2/V3 and their kin): small latent ranks and head sizes, one key
# head per query head, layer 0 dense and layer 1 a mixture of experts where the model mixes them.
MLA = dict(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4,
           v_head_dim=8, head_dim=4, n_group=2, topk_group=1, first_k_dense_replace=1,
           mlp_layer_types=["dense", "sparse"])
# Falcon-H1's, Nemotron-H's (and the Mamba-2 hybrids') default time_step_limit (0, inf) does not survive save_pretrained's JSON
MAMBA2 = dict(mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=16, time_step_limit=(0.0, 1e9))
ENCODER_DECODER = dict(encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                       encoder_ffn_dim=48, decoder_ffn_dim=48)
# a multimodal model's text model from TINY beside a one-layer vision tower of width 16 on 28-pixel images of
# four patches, so that the test's parameter cap holds and the decoder layers are the longest list
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
              patch_size=14)
TOWER = dict(text_config=TINY, vision_config=VISION)
# Gemma 4's text model: small per-layer inputs, a sliding layer then a full one with a small global head
GEMMA4 = dict(TINY, vocab_size_per_layer_input=100, hidden_size_per_layer_input=8, sliding_window=4,
              layer_types=["sliding_attention", "full_attention"], global_head_dim=8)
# dots.llm3's text model (indexed and sliding MLA layers)
DOTS3 = dict(MLA, index_head_dim=8, index_n_heads=2, index_topk=4, sliding_window=4,
             layer_types=["indexed_attention", "sliding_attention"],
             shared_experts_intermediate_size=24, swa_num_attention_heads=4,
             swa_num_key_value_heads=4, swa_q_lora_rank=16, swa_kv_lora_rank=16, swa_head_dim=8,
             swa_qk_nope_head_dim=4, swa_v_head_dim=8)
EXTRA = {"falcon_h1": dict(time_step_limit=(0.0, 1e9)),
         "nemotron_h": dict(time_step_limit=(0.0, 1e9), moe_shared_expert_intermediate_size=24),
         "granitemoeshared": dict(shared_intermediate_size=20),   # its shared_mlp, beside the MoE block
         "minimax_m3_vl_text": dict(shared_intermediate_size=20),
         "falcon": dict(head_dim=None, ffn_hidden_size=48),
         "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
         "dbrx": dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=128,
                      attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                      ffn_config=dict(ffn_hidden_size=24, moe_num_experts=4, moe_top_k=2)),
         "dots1": dict(n_shared_experts=1, first_k_dense_replace=1),
         "dots3_note_text": DOTS3,
         # its causal LM is its text model's; its towers' adapters must write the text model's width
         "dots3_note": dict(text_config=dict(TINY, **DOTS3), vision_config=dict(
             VISION, mlp_layer_types=["dense"], adapter_in_dim=16, adapter_out_dim=32), audio_config=dict(
             VISION, downsample_hidden_size=16, adapter_input_size=16, adapter_out_dim=32, feature_size=8)),
         "lfm2_moe": dict(layer_types=["conv", "full_attention"], num_dense_layers=1),
         "bamba": dict(MAMBA2, attn_layer_indices=[1]),
         "granitemoehybrid": dict(MAMBA2, layer_types=["linear_attention", "full_attention"]),
         "zamba": dict(num_hidden_layers=3, layers_block_type=["hybrid", "linear_attention", "hybrid"],
                       attention_hidden_size=64, attention_head_dim=16, mamba_dt_rank=8, n_mamba_heads=2,
                       mamba_d_state=8),
         # two hybrid layers run the one shared block (tied weights), each with its own LoRA adapter
         "zamba2": dict(num_hidden_layers=3, layers_block_type=["hybrid", "linear_attention", "hybrid"],
                        n_mamba_heads=4, mamba_d_state=8, chunk_size=16, adapter_rank=4, attention_head_dim=8),
         "zaya": dict(num_experts_per_tok=1, router_hidden_size=16, layer_types=["hybrid", "hybrid"]),
         # an LSH layer (deterministic: hash_seed and num_buckets set) then a local one; chunks of 4 and 8 tokens
         "reformer": dict(attn_layers=["lsh", "local"], axial_pos_shape=[8, 16], axial_pos_embds_dim=[8, 24],
                          attention_head_size=8, feed_forward_size=48, is_decoder=True, local_attn_chunk_length=8,
                          lsh_attn_chunk_length=4, hash_seed=0, num_buckets=4),
         "xlnet": dict(max_position_embeddings=None, d_head=8, d_inner=48),   # no position limit; its own names
         "qwen4_exp": dict(text_config=TINY),   # its causal LM is the text model's, built from the text config
         "gemma3": TOWER,
         # Llama 4's and Qwen 3.5's causal LMs are their text models (Llama4ForCausalLM, ...), without the tower
         **dict.fromkeys(["llama4", "qwen3_5", "qwen3_5_moe"], dict(text_config=TINY)),
         "gemma4_text": GEMMA4,
         # a low swiglu_limit, so that its experts' clamps bite; an indexer top-k over every key of the sentences
         "hy_v4": dict(MLA, index_head_dim=8, index_n_heads=2, index_topk=64, swiglu_limit=0.5),
         # a patcher, a local encoder and decoder of one layer around a global transformer of two, wider (48, FFN
         # 64); a patching threshold inside the tiny patcher's entropies (about 3.9 to 4.4), so that patches hold
         # one to several tokens
         "blt": dict(encoder_hash_byte_group_vocab=100, patching_threshold=4.1,
                     patcher_config=dict(TINY, num_hidden_layers=1),
                     global_config=dict(TINY, hidden_size=48, intermediate_size=64, head_dim=None),
                     **{f"{part}_config": dict(TINY, num_hidden_layers=1, hidden_size_global=48)
                        for part in ("encoder", "decoder")}),
         "emu3": dict(text_config=TINY), "gemma4_unified": dict(text_config=GEMMA4),
         "got_ocr2": dict(text_config=TINY, vision_config=dict(VISION, output_channels=16, image_size=32,
                                                                patch_size=16, window_size=2, global_attn_indexes=[0],
                                                                mlp_dim=32)),
         "moss_transcribe_diarize": dict(text_config=TINY, audio_config=dict(VISION, num_mel_bins=8,
                                                                              max_source_positions=16)),
         "phi4_multimodal": dict(vision_config=dict(VISION, crop_size=28), audio_config=dict(
             hidden_size=16, intermediate_size=32, num_blocks=1, num_attention_heads=2, ext_pw_out_channel=16,
             depthwise_separable_out_channel=16, nemo_conv_channels=16, input_size=8)),
         "roc_bert": dict(is_decoder=True, pronunciation_embed_dim=8, pronunciation_vocab_size=10, shape_embed_dim=8,
                          shape_vocab_size=10),
         "git": dict(is_decoder=True, vision_config=VISION),
         # a cross-attention layer (skipped on text alone) between two self-attention layers
         "mllama": dict(text_config=dict(TINY, num_hidden_layers=3, cross_attention_layers=[1]), vision_config=VISION),
         "gemma4": dict(text_config=GEMMA4, vision_config=dict(VISION, head_dim=8, num_key_value_heads=2,
                                                                position_embedding_size=16)),
         "mamba2": dict(head_dim=16, n_groups=1, state_size=8, chunk_size=16, time_step_rank=4),
         "kimi_linear": dict(MLA, layer_types=["linear_attention", "full_attention"], linear_head_dim=8,
                             linear_num_heads=4, num_experts_per_token=2, num_expert_group=1),
         "cohere_compass_text": dict(layer_types=["full_attention", "sliding_attention"], sliding_window=4,
                                     rope_parameters={"full_attention": None, "sliding_attention": dict(
                                         rope_type="default", rope_theta=10000.0)}),
         "gemma3n_text": dict(intermediate_size=[48, 48], layer_types=["sliding_attention", "full_attention"],
                              num_kv_shared_layers=0, activation_sparsity_pattern=[0.95, 0.0], laurel_rank=4,
                              hidden_size_per_layer_input=8, vocab_size_per_layer_input=100, sliding_window=4,
                              altup_num_inputs=2),
         # encoders run as decoders, their FFN split over two modules (intermediate and output; CPM-Ant's w_in
         # and w_out, whose width is its dim_ff)
         **dict.fromkeys(["bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie",
                          "megatron-bert", "rembert", "roberta", "roberta-prelayernorm", "roformer", "xlm-roberta",
                          "xlm-roberta-xl"], dict(is_decoder=True)),
         "xmod": dict(is_decoder=True, default_language="en_XX"),   # no lang_ids given: this language's adapter
         "cpmant": dict(dim_ff=48),   # its FFN is split too (w_in, w_out)
         # the decoders of encoder-decoder models (BART and its kin) as causal LMs: their sizes have other names
         **dict.fromkeys(["bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart", "mvp",
                          "pegasus", "plbart", "trocr", "whisper"], ENCODER_DECODER),
         "prophetnet": dict(num_hidden_layers=None, num_encoder_layers=2, num_decoder_layers=2,
                            num_encoder_attention_heads=4, num_decoder_attention_heads=4, encoder_ffn_dim=48,
                            decoder_ffn_dim=48),
         **dict.fromkeys(["axk1", "axk2", "deepseek_v2", "deepseek_v3", "deepseek_v32", "glm4_moe_lite",
                          "glm_moe_dsa", "minicpm3", "youtu"], MLA),
         # 4 experts and 2 zero experts (default 256); 2 layers: its num_hidden_layers is twice its num_layers
         "longcat_flash": dict(MLA, zero_expert_num=2, num_hidden_layers=4),
         # a SwiGLU limit the tiny model's gates and ups reach (default 10), so that the experts' clamps are checked
         "deepseek_v4": dict(swiglu_limit=0.02),
         # two high cycles of two low cycles, two layers per stack: 12 runs of its 4 layers
         "hrm_text": dict(H_cycles=2, L_cycles=2)}
MAX_PARAMETERS = 3_000_000   # beyond this the tiny config did not shrink the model (a vision or audio tower)

SENTENCES = ["all human beings are born free and equal in dignity and rights", "tous", "la vie et droits",
             "alle menschen sind frei und gleich an würde und rechten geboren jeder hat das recht auf leben"]

# mixture-of-experts: expert neurons (experts.py), checked against the recomputation of tests/helpers.py
MOE = {"afmoe", "aria_text", "axk1", "axk2", "cohere2_moe", "dbrx", "deepseek_v2", "deepseek_v3", "deepseek_v32",
       "deepseek_v4", "dots1", "dots3_note", "dots3_note_text", "ernie4_5_moe", "exaone_moe", "flex_olmo", "glm4_moe",
       "glm4_moe_lite", "glm_moe_dsa", "gpt_oss", "granitemoe", "granitemoe_swa", "granitemoehybrid",
       "granitemoeshared", "hunyuan_v1_moe", "hy_v3", "inkling2_text", "inkling_text", "jamba", "jetmoe",
       "kimi_linear", "kolibri1", "laguna", "lfm2_moe", "hy_v4", "llama4", "llama4_text", "longcat_flash", "mellum",
       "mimo_v2_flash", "minimax", "minimax_m2", "minimax_m3_vl_text", "mixtral", "nemotron_h", "olmoe", "phimoe",
       "qwen2_moe", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_moe", "qwen3_next", "qwen4_exp", "qwen4_exp_text",
       "solar_open", "zaya"}
# refused: no feed-forward network (state-space and recurrent layers only)
NO_FFN = {"mamba", "mamba2", "falcon_mamba"}
# several residual streams per token: the axis that holds them in a decoder layer's output (the hidden state is
# all of them side by side, stream by stream)
STREAMS = {"gemma3n_text": 0, "deepseek_v4": 2, "hy_v4": 2}
# refused in one line by model type, before the model is built: text-to-music decoders over audio codebooks and
# Gemma 4's draft models for speculative decoding (they read their backbone's key and value states); musicgen's
# causal LM cannot be built from its own config: its decoder's (musicgen_decoder) is tested
UNSUPPORTED = {"gemma4_assistant", "gemma4_unified_assistant", "musicgen", "musicgen_melody"}
# Gemma 4's draft models cannot be built from a config here: each layer reads the backbone's key and value states
# (num_kv_shared_layers = num_hidden_layers), which Gemma 4's kv_sharing_modes refuses; refused from config.json
DRAFTS = {"gemma4_assistant", "gemma4_unified_assistant"}
SKIPPED = {
    "gemma3n": "its causal LM (Gemma3nForConditionalGeneration) builds a vision tower from timm (MobileNet-V5), "
               "which is no dependency of this tool; its text model is tested as gemma3n_text",
}


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def supported() -> list[str]:
    others = {*MOE, *NO_FFN, *UNSUPPORTED, *SKIPPED}
    return [kind for kind in causal_lm_types() if kind not in others]


@functools.cache
def tiny(kind: str, **extra):
    """A tiny random model of ``kind`` in eval mode, built once per test session."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {**TINY, **EXTRA.get(kind, {}), **extra}
    config = AutoConfig.for_model(kind, **{name: value for name, value in fields.items() if value is not None})
    with torch.device("meta"):
        assert sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters()) < MAX_PARAMETERS
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


FFN_NAMES = ("mlp", "feed_forward", "ffn", "mlp_block", "mixer", "ff")
GATED = (("gate_proj", "up_proj"), ("w1", "w3"), ("proj_up_gate", "proj_up"))   # (gate, up) pairs
FUSED = ("gate_up_proj", "Wi", "fc1")                                          # gate then up, in one projection
UP = ("up_proj", "c_fc", "fc1", "fc_in", "dense_h_to_4h", "key", "0", "layer_1", "lin1")
DOWN = ("down_proj", "c_proj", "fc2", "fc_out", "dense_4h_to_h", "w2", "proj_down", "Wo", "value", "2", "layer_2",
        "lin2")
ACTS = ("act_fn", "act", "activation_fn", "gelu_impl", "1", "activation_function")


def split_halves(layer) -> SimpleNamespace | None:
    """The FFN of a layer that splits it over two modules, under the names ``recompute`` reads: BERT's (and its
    kin's) intermediate (dense, activation) and output (dense); CPM-Ant's ffn.ffn.w_in (gate w_0, up w_1,
    activation) and w_out; ProphetNet's feed_forward (intermediate, activation_fn, output); Reformer's
    feed_forward (its norm, then dense: dense and act_fn, output: dense). None for other layers."""
    if hasattr(getattr(layer, "intermediate", None), "intermediate_act_fn") and hasattr(layer, "output"):
        return SimpleNamespace(up_proj=layer.intermediate.dense, act_fn=layer.intermediate.intermediate_act_fn,
                               down_proj=layer.output.dense)
    ffn = getattr(getattr(layer, "ffn", None), "ffn", None)
    if hasattr(ffn, "w_in"):
        return SimpleNamespace(gate_proj=ffn.w_in.w_0, up_proj=ffn.w_in.w_1, act_fn=ffn.w_in.act, down_proj=ffn.w_out)
    ffn = getattr(layer, "feed_forward", None)
    if isinstance(getattr(ffn, "intermediate", None), torch.nn.Linear) and hasattr(ffn, "activation_fn"):
        return SimpleNamespace(up_proj=ffn.intermediate, act_fn=ffn.activation_fn, down_proj=ffn.output)
    if hasattr(getattr(ffn, "dense", None), "act_fn") and hasattr(ffn, "output"):   # Reformer's, after its norm
        return SimpleNamespace(up_proj=ffn.dense.dense, act_fn=ffn.dense.act_fn, down_proj=ffn.output.dense)
    return None


def ffn_of(layer):
    """The layer's FFN module: its two halves where split (``split_halves``), else a child so named, else one
    deeper (Zamba's, in its layer's shared transformer block), else the layer itself (its FFN projections sit on
    it, as OPT's do)."""
    found = split_halves(layer) or next((getattr(layer, name) for name in FFN_NAMES if hasattr(layer, name)), None)
    if found is None:
        found = next((module for path, module in layer.named_modules() if path.rsplit(".", 1)[-1] in FFN_NAMES),
                     None)
    return layer if found is None else found


def first(module, names):
    return next(getattr(module, name) for name in names if hasattr(module, name))


def recompute(kind: str, ffn, x: torch.Tensor, config, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """a and z of one FFN (of decoder layer ``layer``) from its input x and its weights."""
    from transformers.activations import ACT2FN

    act = next((getattr(ffn, name) for name in ACTS if hasattr(ffn, name)), None)
    act = act or ACT2FN[getattr(config, "hidden_act", "silu")]
    if kind == "rwkv":       # a = relu(key x)², no activation module
        a = torch.relu(ffn.key(x)) ** 2
        return a, a
    pair = next(((g, u) for g, u in GATED if hasattr(ffn, g) and hasattr(ffn, u)), None)
    down_width = first(ffn, DOWN).weight.shape[1 if isinstance(first(ffn, DOWN), torch.nn.Linear) else 0]
    if pair:
        gate = getattr(ffn, pair[0])(x) * getattr(ffn, "gate_multiplier", 1.0)   # falcon_h1 scales the gate
        if getattr(ffn, "activation_sparsity", 0.0) > 0:   # gemma3n: the gate above mean + std·Φ⁻¹(sparsity)
            gate = torch.relu(gate - gate.mean(-1, keepdim=True) - gate.std(-1, keepdim=True, unbiased=False)
                              * statistics.NormalDist().inv_cdf(ffn.activation_sparsity))
        a = act(gate)
        z = a * getattr(ffn, pair[1])(x)
        return a, ffn.ffn_sub_norm(z) if hasattr(ffn, "ffn_sub_norm") else z   # bitnet normalises z
    fused = next((getattr(ffn, name) for name in FUSED if hasattr(ffn, name)), None)
    if fused is not None and fused(x).shape[-1] == 2 * down_width:
        gate_up = fused(x)
        if kind == "zamba2":   # the shared MLP's LoRA adapter of this layer (its n-th hybrid layer): x Aᵀ Bᵀ
            down_rank, up_rank = ffn.gate_up_proj_adapter_list[config.hybrid_layer_ids.index(layer)]
            gate_up = gate_up + x @ down_rank.weight.T @ up_rank.weight.T
        gate, up = gate_up.chunk(2, dim=-1)
        a = act(gate)
        return a, a * up
    a = act(first(ffn, UP)(x))
    return a, a


def pooled_by_hand(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """weighted (t / Σk), mean and last of (tokens, width)."""
    n = len(tokens)
    weighted = np.arange(1, n + 1) / (n * (n + 1) / 2)
    return {"weighted": weighted @ tokens, "mean": tokens.mean(axis=0), "last": tokens[-1]}


# where a layer runs on more positions than the input's T tokens, the input's among them: ProphetNet's decoder
# concatenates its main stream (the input) and its n-gram streams; CPM-Ant prepends its prompt tokens
INPUT_ROWS = {"prophetnet": lambda config, tokens: slice(0, tokens),
              "reformer": lambda config, tokens: slice(0, tokens),   # padded to a multiple of its chunk length
              "cpmant": lambda config, tokens: slice(config.prompt_length, config.prompt_length + tokens)}


def recomputed_states(kind: str, model, tokenizer, sentences=SENTENCES) -> dict[str, dict[str, np.ndarray]]:
    """Per kind and pooling, per layer (sentences, width), from sentences run one at a time; the dense layers'
    NAS and NAV only (None for a mixture-of-experts layer, which recomputed_experts serves); per run of a layer
    where layers run several times (HRM-Text: tests/recurrence.py)."""
    if kind == "hrm_text":
        return recomputed_runs(model, tokenizer, sentences)
    if kind == "blt":   # its global transformer runs on patches of bytes (tests/byte_patches.py)
        return recomputed_patches(model, tokenizer, sentences)
    layers, moe = find_layers(model), moe_blocks(model) if kind in MOE else {}
    holders = getattr(model.base_model, "ffns", layers)   # XLM: layer i's FFN is ffns[i], beside its layers
    ffns = {index: ffn_of(holder) for index, holder in enumerate(holders)   # a hybrid's other mixers have no FFN
            if index not in moe and any(hasattr(ffn_of(holder), name) for name in DOWN)}
    states = {kind_: {p: [] for p in ("weighted", "mean", "last")} for kind_ in ("nas", "nav", "hidden")}
    for sentence in sentences:
        ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
        seen = {}
        hooks = [first(ffn, (*(g for g, _ in GATED), *FUSED, *UP)).register_forward_pre_hook(
                     lambda m, i, index=index: seen.setdefault(("x", index), i[0])) for index, ffn in ffns.items()]
        hooks += [first(ffn, DOWN).register_forward_pre_hook(
                      lambda m, i, index=index: seen.__setitem__(("z", index), i[0])) for index, ffn in ffns.items()]
        hooks += [layer.register_forward_hook(lambda m, i, o, index=index: seen.__setitem__(
                      ("hidden", index), o[0] if isinstance(o, (tuple, list)) else o)) for index, layer in enumerate(layers)]
        with torch.no_grad():
            model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            for hook in hooks:
                hook.remove()
            keep = INPUT_ROWS[kind](model.config, ids.shape[1]) if kind in INPUT_ROWS else slice(None)
            ran = {index for index in range(len(layers)) if ("hidden", index) in seen}
            per_layer = [{"hidden": side_by_side(kind, seen["hidden", index][:, keep] if index in ran
                                                 else skipped_hidden(model, ids, ran, index), ids.shape[1])}
                         for index in range(len(layers))]
            for index, ffn in ffns.items():
                if index not in ran:   # a layer the forward pass skips (Mllama's cross-attention layers on text)
                    continue
                a, z = recompute(kind, ffn, seen["x", index], model.config, index)
                torch.testing.assert_close(z, seen["z", index], atol=1e-5, rtol=1e-4)   # z is what down receives
                a, z, width = a[:, keep], z[:, keep], z.shape[-1]
                per_layer[index].update(nas=(a > 0).float().reshape(-1, width), nav=z.abs().reshape(-1, width))
        for index, found in enumerate(per_layer):
            for kind_, tokens in found.items():
                for pooling, value in pooled_by_hand(tokens.numpy().astype(np.float64)).items():
                    states[kind_][pooling].append((index, value))
    return {k: {p: [np.stack(found) if (found := [v for i, v in rows if i == layer]) else None   # per layer
                    for layer in range(len(layers))] for p, rows in by.items()} for k, by in states.items()}


def side_by_side(kind: str, output: torch.Tensor, tokens: int) -> torch.Tensor:
    """A decoder layer's output for one sentence as (tokens, width), its residual streams (if several) side by
    side, stream by stream."""
    if kind in STREAMS:
        output = output.movedim(STREAMS[kind], -2)   # (1, tokens, streams, width)
    return output.reshape(tokens, -1)


def skipped_hidden(model, ids: torch.Tensor, ran: set[int], layer: int) -> torch.Tensor:
    """The residual stream that a layer the forward pass skipped passes on: the model's own hidden states
    (output_hidden_states: the embeddings, then one per layer that ran) after the layers that ran before it."""
    hidden = model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                              output_hidden_states=True).hidden_states
    return hidden[sum(index < layer for index in ran)]


def find_layers(model):
    """The decoder layers: the longest ModuleList of the model; XLM's, whose outputs are the hidden states, its
    last list of norms (layer_norm2), beside its lists of attentions, first norms and FFNs."""
    if hasattr(model.base_model, "ffns"):
        return model.base_model.layer_norm2
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len)


@pytest.mark.parametrize("kind", supported())
def test_states_match_a_recomputation_from_the_layers_weights(kind):
    states = pooled_states(tiny(kind), tiny_tokenizer(), SENTENCES, batch_size=3)    # padded batches
    for kind_, by in expected_states(kind).items():
        for pooling, value in by.items():
            for layer, (got, want) in enumerate(zip(states[kind_][pooling], value, strict=True)):
                want = np.zeros((len(SENTENCES), 0)) if want is None else want   # a layer without an FFN: none
                np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=f"{kind} {kind_} {pooling} {layer}")


@pytest.mark.parametrize("kind, variant", [("falcon", dict(new_decoder_architecture=True, num_kv_heads=2)),  # 40B, 180B
                                           ("falcon", dict(parallel_attn=False, multi_query=False, alibi=True)),  # RW
                                           ("zamba2", dict(num_mem_blocks=2))])   # one shared block per hybrid layer
def test_variants_of_an_architecture_match_the_recomputation(kind, variant):
    model = tiny(kind, **variant)
    states = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=3)
    assert_layers_close(lambda kind_, pooling, layer: states[kind_][pooling][layer],   # layers with an FFN
                        recomputed_states(kind, model, tiny_tokenizer()), KINDS, f"{kind} {variant}", atol=1e-4,
                        rtol=1e-4)


@functools.cache
def moe_tiny(kind: str):
    """The tiny model of a mixture-of-experts ``kind`` with random routers and biases (not the initialiser's
    zeros), built once per test session."""
    model = copy.deepcopy(tiny(kind))
    torch.manual_seed(0)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.5)
    return model


def model_of(kind: str):
    return moe_tiny(kind) if kind in MOE else tiny(kind)


@functools.cache
def expected_states(kind: str, tokenizer=None) -> dict:
    """kind -> pooling -> per layer (SENTENCES, width): the dense layers' recomputation (and every layer's hidden
    states), and for a mixture-of-experts model its MoE layers' (NAS, NAV and routing), once per session (with
    the tiny tokenizer unless another is given)."""
    model, tokenizer = model_of(kind), tokenizer or tiny_tokenizer()
    expected = recomputed_states(kind, model, tokenizer)
    if kind in MOE:
        experts = recomputed_experts(model, tokenizer, SENTENCES)
        assert experts, "no MoE layer"
        expected["routing"] = {pooling: [None] * len(layers) for pooling, layers in expected["nas"].items()}
        for layer, by_kind in experts.items():
            for kind_, by in by_kind.items():
                for pooling, value in by.items():
                    expected[kind_][pooling][layer] = value
    return expected


def assert_layers_close(states, expected: dict, kinds: tuple[str, ...], label: str, **tolerance) -> None:
    """Each layer's states of ``kinds`` (layer -> (sentences, width)) against the expected ones, where there are."""
    for kind_ in kinds:
        for pooling, layers in expected[kind_].items():
            for layer, value in enumerate(layers):
                if value is not None:
                    np.testing.assert_allclose(states(kind_, pooling, layer), value, **tolerance,
                                               err_msg=f"{label} {kind_} {pooling} layer {layer}")


@pytest.mark.parametrize("kind", sorted(MOE))
def test_expert_states_match_a_recomputation_from_the_experts_weights(kind):
    """MoE layers against the experts' recomputation; the dense layers of mixed models (Jamba) against the dense
    one."""
    states = pooled_states(moe_tiny(kind), tiny_tokenizer(), SENTENCES, batch_size=len(SENTENCES),
                           kinds=("nas", "nav", "routing"))
    assert_layers_close(lambda kind_, pooling, layer: states[kind_][pooling][layer], expected_states(kind),
                        ("nas", "nav", "routing"), kind, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("implementation", ["eager", "batched_mm"])
def test_clamped_experts_recomputed_for_their_pairs_clamp_as_the_model(implementation):
    """DeepSeek-V4's experts clamp gate and up before their activation module (its tiny limit is reached):
    recomputed for the routed pairs (eager) or read in ``_apply_gate`` (batched_mm), as the model computes them."""
    model = copy.deepcopy(moe_tiny("deepseek_v4"))
    model.set_experts_implementation(implementation)
    states = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=len(SENTENCES), kinds=("nas", "nav"))
    assert_layers_close(lambda kind_, pooling, layer: states[kind_][pooling][layer], expected_states("deepseek_v4"),
                        ("nas", "nav"), "deepseek_v4", atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", sorted(NO_FFN))
def test_no_ffn_is_refused_in_one_line(kind):
    with pytest.raises(NeuronXAError, match=rf"^model type '{kind}' has no feed-forward layers: .*model.sites$"):
        find_sites(tiny(kind))


def test_ffns_of_different_widths_give_each_layer_its_width():
    from transformers.models.llama.modeling_llama import LlamaMLP

    model, wider = copy.deepcopy(tiny("llama")), copy.deepcopy(tiny("llama").config)
    wider.intermediate_size = 64
    torch.manual_seed(1)
    model.model.layers[1].mlp = LlamaMLP(wider)
    states = pooled_states(model, tiny_tokenizer(), SENTENCES, batch_size=3)
    expected = recomputed_states("llama", model, tiny_tokenizer())
    assert [layer.shape[1] for layer in states["nas"]["mean"]] == [48, 64]
    for kind_ in ("nas", "nav"):
        for pooling, value in expected[kind_].items():
            for layer in range(2):
                np.testing.assert_allclose(states[kind_][pooling][layer], value[layer], atol=1e-4, rtol=1e-4)


def test_the_sites_are_searched_once_per_model(monkeypatch):
    """Probes, interventions and the width lookups ask for the sites many times: the module tree is walked once."""
    from neuronxa.stage_one import sites

    model, searched, search = copy.deepcopy(tiny("qwen2_moe")), [], sites._search
    monkeypatch.setattr(sites, "_search", lambda found: searched.append(found) or search(found))
    pooled_states(model, tiny_tokenizer(), SENTENCES[:2], kinds=("nas", "routing"))
    with deactivated(model, {0: [1, 100]}):
        model(input_ids=tiny_tokenizer()(SENTENCES[0], return_tensors="pt")["input_ids"])
    assert searched == [model]


@pytest.mark.parametrize("kind", sorted(UNSUPPORTED))
def test_models_the_probes_cannot_represent_are_refused_in_one_line_before_they_are_built(kind, tmp_path):
    """By model type, from config.json alone (a folder holding nothing else), and on the model itself, whether
    its sites are searched or named."""
    import transformers

    said = (rf"^model type '{kind}\w*' is not supported: "
            "(a text-to-music model|its LSH attention|a byte latent|a draft model)")
    (tmp_path / "config.json").write_text(f'{{"model_type": "{kind}"}}')
    with pytest.raises(NeuronXAError, match=said):
        models.meta_model(models.model_spec(str(tmp_path)))
    if kind in DRAFTS:
        return
    name = kind.title().replace("_", "")   # Musicgen, MusicgenMelody: their decoder alone
    model = tiny(kind) if not kind.startswith("musicgen") else getattr(transformers, f"{name}ForCausalLM")(getattr(
        transformers, f"{name}DecoderConfig")(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, ffn_dim=48, num_codebooks=2))
    with pytest.raises(NeuronXAError, match=said):
        find_sites(model)
    with pytest.raises(NeuronXAError, match=said):
        name_sites(model, Sites("layers", "mlp", "act_fn", "down_proj", False))


def test_every_architecture_is_tested_or_skipped_with_a_reason():
    listed = [*MOE, *NO_FFN, *UNSUPPORTED, *SKIPPED]
    assert len(listed) == len(set(listed)) and set(listed) <= set(causal_lm_types())


def test_the_docs_list_exactly_the_architectures_that_pass():
    readme = (ROOT / "docs" / "architectures.md").read_text()
    for name, passing in (("architectures", supported()), ("moe", sorted(MOE))):
        listed = re.search(rf"<!-- {name} -->\n(.*?)\n<!-- /{name} -->", readme, re.S).group(1)
        assert " ".join(listed.split()).split(", ") == passing


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_the_hidden_state_of_several_residual_streams_is_all_of_them_side_by_side(kind):
    """Layer 0's hidden state, mean-pooled, in padded batches: each stream of transformers' output_hidden_states
    (the layer's output, whichever axis holds the streams) mean-pooled alone, then concatenated."""
    model, tokenizer = model_of(kind), tiny_tokenizer()
    states = pooled_states(model, tokenizer, SENTENCES, batch_size=3, kinds=("hidden",))
    for row, sentence in enumerate(SENTENCES):
        with torch.no_grad():
            output = model.base_model(**tokenizer(sentence, return_tensors="pt"), output_hidden_states=True,
                                      use_cache=False).hidden_states[1]
        first = STREAMS[kind] == 0   # (streams, 1, tokens, width), else (1, tokens, streams, width)
        streams = output.squeeze(1 if first else 0).unbind(0 if first else 1)
        expected = torch.cat([stream.mean(0) for stream in streams])
        np.testing.assert_allclose(states["hidden"]["mean"][0][row], expected.numpy(), atol=1e-4, rtol=1e-4)


def test_named_sites_serve_an_ffn_split_over_two_modules():
    model, tokenizer = tiny("bert"), tiny_tokenizer()
    layers = model.base_model.encoder.layer
    name_sites(model, Sites(layers="encoder.layer", ffn="", act="intermediate.intermediate_act_fn",
                            down="output.dense", gated=False))
    try:
        states = pooled_states(model, tokenizer, SENTENCES[:2], batch_size=2)
    finally:
        name_sites(model, None)
    for index, sentence in enumerate(SENTENCES[:2]):
        ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
        seen = []
        hooks = [layer.intermediate.dense.register_forward_pre_hook(lambda m, i: seen.append(i[0][0]))
                 for layer in layers]
        with torch.no_grad():
            model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids))
            for hook in hooks:
                hook.remove()
            for layer, x in enumerate(seen):
                a = layers[layer].intermediate.intermediate_act_fn(layers[layer].intermediate.dense(x))
                expected = pooled_by_hand(a.abs().numpy().astype(np.float64))["weighted"]
                np.testing.assert_allclose(states["nav"]["weighted"][layer, index], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("field, sites, said", [
    ("down", Sites("layers", "mlp", "act_fn", "nope", True), "model.sites.down: the model has no module layers.0.mlp.nope"),
    ("layers", Sites("norm", "mlp", "act_fn", "down_proj", True), "model.sites.layers: norm is a"),
    ("gate", Sites("layers", "mlp", None, "down_proj", True), "sites: a gated FFN without an act module needs gate"),
])
def test_named_sites_are_checked_in_one_line(field, sites, said):
    with pytest.raises(NeuronXAError, match=f"^{re.escape(said)}"):
        name_sites(tiny("llama"), sites)


@pytest.mark.parametrize("kind", ["llama", "lfm2", "opt", "rwkv", "gpt2"])
def test_deactivating_neurons_equals_zeroing_their_down_projection_inputs(kind):
    """Where a is an activation module's output (llama, opt, gpt2), a function's (lfm2) or the down projection's
    input (rwkv): a_j = 0 removes neuron j's column of the down projection."""
    model, chosen = tiny(kind), [1, 3]
    ids = tiny_tokenizer()(SENTENCES[0], return_tensors="pt")["input_ids"]
    edited = copy.deepcopy(model)
    down = first(ffn_of(find_layers(edited)[1]), DOWN)
    with torch.no_grad(), deactivated(model, {1: chosen}):
        got = model(input_ids=ids).logits
        if isinstance(down, torch.nn.Linear):
            down.weight[:, chosen] = 0
        else:                                   # GPT-2's Conv1D stores (in, out)
            down.weight[chosen, :] = 0
        expected = edited(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, model(input_ids=ids).logits.detach())


LLAMA_SITES = "model.sites={layers: layers, ffn: mlp, act: act_fn, down: down_proj, gated: true}"


def test_sites_named_in_the_config_key_the_cache_and_give_the_found_states(tiny_folder, tmp_path):
    cfg = composed(tiny_overrides(tiny_folder, tmp_path) + [LLAMA_SITES])
    options = stage_one_options(cfg, cfg.model)
    assert options.sites == Sites("layers", "mlp", "act_fn", "down_proj", True)
    assert options.cache_key({"model": "m"}, "toy")["model_sites"]["down"] == "down_proj"
    assert "model_sites" not in StageOneOptions().cache_key({"model": "m"}, "toy")
    corpus, spec = read_tsv(FIXTURES / "toy.tsv"), spec_from_config(cfg.model)
    named, _ = extract_corpus(corpus, spec, tmp_path / "cache", options=options)
    found, _ = extract_corpus(corpus, spec, tmp_path / "cache", options=StageOneOptions(dtype="float32"))
    assert named.path != found.path
    np.testing.assert_allclose(named.read("fra_Latn", "nav", "mean"), found.read("fra_Latn", "nav", "mean"))


@pytest.mark.parametrize("sites, said", [
    ("model.sites={layers: layers, ffn: mlp, act: act_fn, down: w2, gated: true}", "model.sites.down: the model has"),
    ("model.sites={layers: layers, down: down_proj}", "model.sites: expected a mapping with layers"),
])
def test_bad_named_sites_fail_in_one_line_before_weights_load(tiny_folder, tmp_path, monkeypatch, sites, said):
    assert_refused_before_weights_load(tiny_folder, tmp_path, monkeypatch, sites, said)


def save_tiny(kind: str, folder):
    tiny(kind).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.cli
def test_the_command_line_runs_architectures_found_by_structure(tmp_path):
    """OPT (flattened tokens), GPT-NeoX (refused by the old table) and LFM2 (a computed by a function)."""
    folders = [save_tiny(kind, tmp_path / kind) for kind in ("opt", "gpt_neox", "lfm2")]
    overrides = tiny_overrides(folders[0], tmp_path)
    overrides[1] = f"model.name_or_path={','.join(map(str, folders))}"
    result = subprocess.run([sys.executable, "-m", "neuronxa.run", "-m", *overrides, "metric=nasca",
                             "score.plots=off", "tracking.enabled=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("stage one: 2 written") == 3



CLI_LANGUAGES = {"eng_Latn": [0, 2], "deu_Latn": [3, 1]}   # language -> its units' rows in SENTENCES


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """kind -> a folder holding the tiny model of ``kind`` that the API tests use, and its tokenizer, saved once
    per session."""
    folders = {}

    def save(kind: str):
        if kind not in folders:
            folders[kind] = tmp_path_factory.mktemp(kind)
            model_of(kind).save_pretrained(folders[kind])
            tiny_tokenizer().save_pretrained(folders[kind])
        return folders[kind]

    return save


def cli_stage_one(folder, tmp_path):
    """The store of the states the command line caches for a tiny TSV corpus: the job's config composed and
    checked as ``python -m neuronxa.run`` does, its task run, then stage one asked again (every language reused)."""
    from neuronxa.config.jobs import check_command_line
    from neuronxa.run import task_function
    from neuronxa.tasks.common import load_corpus, stage_one

    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("id\t" + "\t".join(CLI_LANGUAGES) + "\n" + "".join(
        f"u{i}\t" + "\t".join(SENTENCES[rows[i]] for rows in CLI_LANGUAGES.values()) + "\n" for i in range(2)))
    overrides = ["model=hf", f"model.name_or_path={folder}", "dataset=tsv", f"dataset.path={corpus}",
                 "model.device=cpu", "model.dtype=float32", f"paths.outputs={tmp_path / 'outputs'}",
                 "benchmark=none", "metric=nasca", "pooling=mean", "score.plots=off", "tracking.enabled=false"]
    check_command_line(overrides)
    cfg = composed(overrides)
    task_function(cfg.task.name)(cfg, tmp_path / "run")
    return stage_one(cfg, cfg.model, load_corpus(cfg.dataset, None)[0])


@pytest.mark.cli
@pytest.mark.slow
@pytest.mark.parametrize("kind", supported() + sorted(MOE))
def test_the_command_line_caches_the_recomputed_states(kind, saved, tmp_path):
    """Every passing architecture through the command line's code path: its cached states (float16) against the
    same recomputation as the API tests."""
    from transformers import AutoTokenizer

    store = cli_stage_one(saved(kind), tmp_path)
    kinds = ("nas", "nav", "hidden", "routing") if kind in MOE else KINDS
    loaded = AutoTokenizer.from_pretrained(saved(kind))   # for some types (Qwen2) transformers picks its own class
    same = all(loaded(s)["input_ids"] == tiny_tokenizer()(s)["input_ids"] for s in SENTENCES)
    recomputed = expected_states(kind) if same else expected_states(kind, loaded)
    for language, rows in CLI_LANGUAGES.items():
        assert store.ids(language) == ["u0", "u1"]
        expected = {kind_: {pooling: [None if layer is None else layer[rows] for layer in layers]
                            for pooling, layers in by.items()} for kind_, by in recomputed.items()}
        assert_layers_close(lambda kind_, pooling, layer: store.read(language, kind_, pooling, layer), expected,
                            kinds, f"{kind} {language}", rtol=2 ** -9, atol=1e-3)


def test_a_vision_tower_longer_than_the_language_model_is_not_taken_for_its_layers():
    """Gemma 3's tower of three layers beside a language model of two: the decoder layers are the list as long
    as the text config's num_hidden_layers (the released models' towers are shorter, 27 layers beside 34)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gemma3", text_config=TINY, vision_config=dict(VISION, num_hidden_layers=3))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert layer_list(model) == "language_model.layers"
