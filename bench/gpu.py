"""Stage one at the users' scale: a random-weight model of a real 7-8B architecture (no download: a forward
pass costs the same with random weights), measured in one run on the same device, data and batches.

    python -m bench.gpu --shape llama2_7b                 # on a GPU, bfloat16: writes bench/results/gpu.json
    python -m bench.gpu --shape llama2_7b --scale 8       # the same shape scaled down (layers and widths / 8)
    bash bench/gpu_setup.sh --shape llama31_8b            # a bare GPU machine: install from brought wheels, run

Figures: tokens per second of the bare decoder stack and of stage one (probes, pooling, host copy, cache writes),
``extract_over_bare``; the common way (one sentence per call, logits, ``output_hidden_states``, activations
pooled on the host) per token against stage one, ``naive_over_extract``; model FLOP utilisation
(2 × decoder parameters a token runs through × tokens / seconds: for MoE shapes the routed experts' share,
top-k of E, against the measured matrix-multiply rate of the same dtype);
peak device memory; the batch; a warm stage two against stage one plus stage two, ``rerun_over_first``; and the
paper's full sweep projected from the stage-one rate (9 models × 204 languages × 100 sentences × the mean
tokens per sentence measured here). Off a GPU, the figures go to bench/results/cpu_scaled.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from bench.run import MANY, UDHR, bare_forward, naive_extraction, synchronise
from neuronxa.data.udhr import read_udhr
from neuronxa.stage_one import models
from neuronxa.stage_one.cache import extract_corpus
from neuronxa.stage_one.forward import tokenize
from neuronxa.stage_one.models import ModelSpec
from neuronxa.stage_one.options import StageOneOptions
from neuronxa.stage_one.probes import KINDS, kinds_of
from neuronxa.stage_two import scoring

SHAPES = {   # the architectures' own config.json fields (hub configs, read by hand)
    "llama2_7b": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)),
    "llama31_8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                 rope_theta=500000.0)),
    "qwen25_7b": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                num_attention_heads=28, num_key_value_heads=4, vocab_size=152064)),
    "mistral_7b": ("mistral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=32768)),
    # mixture of experts: stage one's cost is the experts' probe (routed pairs only); ratio target <= 1.25
    "mixtral_8x7b": ("mixtral", dict(hidden_size=4096, intermediate_size=14336, num_local_experts=8,
                                     num_experts_per_tok=2, num_hidden_layers=32, num_attention_heads=32,
                                     num_key_value_heads=8, vocab_size=32000)),
    "qwen3_30b_a3b": ("qwen3_moe", dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                                        num_experts=128, num_experts_per_tok=8, num_hidden_layers=48,
                                        num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                                        vocab_size=151936)),
    "tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=1000)),
}
PAPER_SWEEP = {"models": 9, "languages": 204, "sentences": 100}


def scaled_config(shape: str, scale: int):
    """The shape's config, layers and widths divided by ``scale`` (heads kept whole), SDPA attention."""
    from transformers import AutoConfig

    model_type, fields = SHAPES[shape]
    fields = dict(fields)
    if scale > 1:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "moe_intermediate_size", "head_dim"):
            if name in fields:
                fields[name] = max(fields[name] // scale, 1)
    config = AutoConfig.for_model(model_type, **fields, max_position_embeddings=4096)
    config._attn_implementation = "sdpa"
    return config


class WrappedIds:
    """A real multilingual tokenizer (Gemma 3's) whose ids are folded into a smaller vocabulary: realistic
    sentence lengths for a model with random weights."""

    def __init__(self, tokenizer, vocab_size: int) -> None:
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.bos_token_id, self.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id

    def __call__(self, texts, **kwargs):
        encoded = self.tokenizer(texts, **kwargs)
        ids = encoded["input_ids"]
        if isinstance(ids, torch.Tensor):
            encoded["input_ids"] = ids % self.vocab_size
        else:
            encoded["input_ids"] = [[i % self.vocab_size for i in sentence] for sentence in ids]
        return encoded


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square matrix product in ``dtype`` on ``device``."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronise(device)
    repeats = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronise(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def active_parameters(model, config) -> int:
    """Decoder parameters a token runs through: every dense one, and of the routed experts' (3-D ``experts``
    weights) the share top-k of E."""
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    share = config.num_experts_per_tok / experts if experts else 1.0
    total = 0.0
    for name, parameter in model.base_model.named_parameters():
        if parameter is not model.get_input_embeddings().weight:
            total += parameter.numel() * (share if ".experts." in name else 1.0)
    return int(total)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # the process's peak RSS


def measure(args: argparse.Namespace) -> dict:
    """Every figure, in one run on one device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = scaled_config(args.shape, args.scale)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    gemma = models.converted_folder(models.model_spec("gemma3_270m"), args.models_dir)
    tokenizer = WrappedIds(AutoTokenizer.from_pretrained(gemma), config.vocab_size)
    work = Path(tempfile.mkdtemp(prefix="neuronxa-gpu-bench-"))
    config.save_pretrained(work / "model")                      # the cache key reads the config alone
    spec = ModelSpec(f"random-{args.shape}", str(work / "model"))
    corpus = read_udhr(UDHR, MANY[: args.languages]).subset(max_units=args.units)
    texts = [text for language in corpus.languages for text in corpus.texts(language)]
    tokens = sum(len(ids) for ids in tokenize(tokenizer, texts, 512)[0])
    batch = dict(batch_size=args.batch_size, batch_tokens=args.batch_tokens)
    bare_forward(model, tokenizer, texts[:32], max_length=512, **batch)   # warm-up (kernels, allocator)
    bare = min(bare_forward(model, tokenizer, texts, max_length=512, **batch) for _ in range(args.rounds))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stage_one = []
    for attempt in range(args.rounds):
        synchronise(device)
        start = time.perf_counter()
        options = StageOneOptions(dtype=str(dtype).removeprefix("torch."), device=device.type, **batch)
        store, _ = extract_corpus(corpus, spec, work / f"cache{attempt}", options=options, loaded=(model, tokenizer))
        synchronise(device)
        stage_one.append(time.perf_counter() - start)
    peak = peak_memory_gib(device)
    first = min(stage_one)
    naive_texts = texts[: args.naive_units]
    naive_tokens = sum(len(ids) for ids in tokenize(tokenizer, naive_texts, 512)[0])
    moe = kinds_of(model) != KINDS   # the common way's hooks need a dense FFN: not timed for MoE models
    naive = float("nan") if moe else naive_extraction(model, tokenizer, naive_texts, 512)
    start = time.perf_counter()
    scoring.score(store, ["nasca", "navca", "mexa"], "weighted", pivot=corpus.languages[0], progress=False)
    warm = time.perf_counter() - start
    parameters = sum(p.numel() for p in model.base_model.parameters()) - model.get_input_embeddings().weight.numel()
    active = active_parameters(model, config)
    rate = matmul_rate(device, dtype)
    per_sentence = tokens / len(texts)
    sweep_tokens = PAPER_SWEEP["models"] * PAPER_SWEEP["languages"] * PAPER_SWEEP["sentences"] * per_sentence
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "model_shape": args.shape if args.scale == 1 else f"{args.shape} / {args.scale}",
        "dtype": str(dtype).removeprefix("torch."), "decoder_parameters": parameters,
        "active_parameters_per_token": active,
        "sentences": len(texts), "tokens": tokens, "batch_size": args.batch_size, "batch_tokens": args.batch_tokens,
        "tokens_per_second_bare": tokens / bare, "tokens_per_second_stage_one": tokens / first,
        "extract_over_bare": first / bare, "target": "<= 1.25 (MoE)" if moe else "<= 1.10",
        "naive_over_extract": (naive / naive_tokens) / (first / tokens),
        "matmul_flops_per_second": rate,
        "mfu_bare": 2 * active * tokens / bare / rate, "mfu_stage_one": 2 * active * tokens / first / rate,
        "peak_gpu_memory_gib" if device.type == "cuda" else "peak_rss_gib": peak,
        "rerun_over_first": warm / (first + warm),
        "paper_sweep_tokens_assumed": f"9 x 204 x 100 x {per_sentence:.1f} tokens per sentence (UDHR, measured)",
        "paper_sweep_projected_hours": sweep_tokens / (tokens / first) / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama2_7b")
    parser.add_argument("--scale", type=int, default=1, help="divide layers and widths (for a CPU)")
    parser.add_argument("--languages", type=int, default=20)
    parser.add_argument("--units", type=int, default=24, help="UDHR articles per language")
    parser.add_argument("--batch-size", type=int, default=256, help="sentences per batch, at most")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per batch, at most")
    parser.add_argument("--naive-units", type=int, default=64, help="sentences timed the common way")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/gpu.json (cpu_scaled.json)")
    parser.add_argument("--models-dir", type=Path, default=None, help="the converted embedded models (its tokenizer "
                        "is used); default: the configured paths.models")
    args = parser.parse_args()
    args.models_dir = args.models_dir or Path(models.composed().paths.models)
    torch.manual_seed(0)
    figures = measure(args)
    for name, value in figures.items():
        print(f"  {name:<30} {value:.4g}" if isinstance(value, float) else f"  {name:<30} {value}")
    out = args.out or Path("bench/results") / ("gpu.json" if torch.cuda.is_available() else "cpu_scaled.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
