"""Performance figures of stage one and two, measured in one run on the same model, data and threads.

    python -m bench.run            # the embedded model (Gemma 3 270M) on UDHR
    python -m bench.run --quick    # a tiny random Llama on the same text, in seconds

Prints a table and writes outputs/bench/latest.json:
- extract_over_bare: stage one (hooks, pooling, host copy, Zarr write) ÷ a bare forward pass of the decoder
  stack over the same batches (no hooks, no LM head, no storage); probed_over_bare: the same without the
  cache (hooks, pooling and host copy only), to tell the probes' cost from the writes'
  (rounds of bare, probed and stage one are interleaved; each figure is the best of its rounds)
- naive_over_extract: the common way (one sentence per call, full model with logits, output_hidden_states,
  per-token activations copied to the host and pooled there in float32) ÷ stage one, on the same sentences
- rerun_over_first: a sweep over pooling × metric on a warm cache ÷ the same sweep on a cold one
- rss_many_over_few: peak memory of stage one on many languages ÷ on few (separate processes)
- bytes_per_value: cache bytes on disk per stored value (float16 + blosc-lz4 + crc32c)
- stage two for all metrics, split into reading and computing
- warm_job_seconds: the default job (all metrics, intervals) whose states and scores are all cached, until it ends
  (its plots are drawn in the background: warm_job_with_plots_seconds until they are done;
  warm_job_recomputing_seconds: the same job computing its scores again, cache.scores=false); cli_error_seconds: a bad
  option until its one-line error; pairwise_200_seconds: every ordered pair of 200 languages (``bench.pairwise``)
- moe_over_bare, moe_bytes_per_value: the same ratio and storage for a mixture-of-experts model (bench/moe.py)
Each figure with a target is printed with it (``TARGETS``), and the targets once more at the end;
extract_over_bare_worst is the worst round's ratio (the target holds for every round).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.jobs import UDHR, job_figures, memory_figures
from bench.moe import moe_figures
from neuronxa.data.corpus import ParallelCorpus
from neuronxa.data.udhr import read_udhr
from neuronxa.stage_one import models
from neuronxa.stage_one.cache import extract_corpus
from neuronxa.stage_one.forward import length_batches, model_device, padded, pooled_states, tokenize
from neuronxa.stage_one.models import ModelSpec
from neuronxa.stage_one.options import StageOneOptions
from neuronxa.stage_one.pooling import POOLINGS
from neuronxa.stage_one.probes import architecture, on_a, submodule
from neuronxa.stage_one.sites import ffns
from neuronxa.stage_one.store import StateStore
from neuronxa.stage_two import registry, scoring

MANY = ["eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "por_Latn", "ita_Latn", "rus_Cyrl", "pol_Latn", "tur_Latn",
        "zho_Hans", "jpn_Jpan", "kor_Hang", "arb_Arab", "hin_Deva", "vie_Latn", "ind_Latn", "swh_Latn", "yor_Latn",
        "amh_Ethi", "quy_Latn", "nld_Latn", "swe_Latn", "dan_Latn", "fin_Latn", "hun_Latn", "ces_Latn", "ron_Latn",
        "bul_Cyrl", "ukr_Cyrl", "ell_Grek", "heb_Hebr", "tha_Thai", "ben_Beng", "tam_Taml", "urd_Arab", "kat_Geor",
        "hye_Armn", "zul_Latn", "hau_Latn", "cat_Latn"]


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU's kernels run asynchronously); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(model, tokenizer, texts: list[str], batch_size: int, max_length: int,
                 batch_tokens: int | None = None) -> float:
    """Seconds for the decoder stack alone over the same length-sorted, right-padded batches as stage one
    (one group of languages: all their units sorted together); no hooks, no LM head, nothing kept."""
    token_ids, _ = tokenize(tokenizer, texts, max_length)
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    synchronise(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in length_batches([len(ids) for ids in token_ids], batch_size, batch_tokens):
            ids, attention = padded([token_ids[i] for i in batch], pad, device)
            model.base_model(input_ids=ids, attention_mask=attention, use_cache=False)
    synchronise(device)
    return time.perf_counter() - start


def naive_extraction(model, tokenizer, texts: list[str], max_length: int) -> float:
    """Seconds for the common way: a sentence per call, logits, hidden states and activations on the host."""
    captured = {}
    hooks = []
    arch = architecture(model)
    for index, ffn in enumerate(ffns(model)):
        hooks += on_a(ffn, arch, lambda a, index=index: captured.__setitem__(("a", index), a.float().cpu().numpy()))
        hooks.append(submodule(ffn, arch.down).register_forward_pre_hook(
            lambda m, i, index=index: captured.__setitem__(("z", index), i[0].float().cpu().numpy())))
    start = time.perf_counter()
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            output = model(**{k: v.to(model_device(model)) for k, v in ids.items()}, output_hidden_states=True)
            hidden = [h[0].float().cpu().numpy() for h in output.hidden_states[1:]]
            n = hidden[0].shape[0]
            weights = np.arange(1, n + 1) / (n * (n + 1) / 2)
            for layer in range(len(hidden)):
                a, z = captured["a", layer][0], captured["z", layer][0]
                for states in ((a > 0).astype(np.float32), np.abs(z), hidden[layer]):
                    (weights @ states, states.mean(axis=0), states[-1])
    for hook in hooks:
        hook.remove()
    return time.perf_counter() - start


def stage_one_only(spec: ModelSpec, loaded: tuple, corpus: ParallelCorpus, *, folder: Path, batch_size: int,
                   group_units: int = 256, models_dir: Path) -> tuple[float, StateStore]:
    """Seconds of stage one with the model in memory (extraction and cache writes), and the store it wrote."""
    start = time.perf_counter()
    options = StageOneOptions(max_length=512, dtype="float32", batch_size=batch_size, group_units=group_units,
                              device="cpu")
    store, _ = extract_corpus(corpus, spec, folder, options=options, models_dir=models_dir, loaded=loaded)
    return time.perf_counter() - start, store


def pairwise_seconds(languages: int) -> float:
    """Seconds of every ordered pair of ``languages`` languages of the embedded model's shape (``bench.pairwise``)."""
    from bench.pairwise import measured

    return measured(languages)


TARGETS = {"extract_over_bare": ("<=", 1.10), "extract_over_bare_worst": ("<=", 1.10),
           "naive_over_extract": (">=", 4), "rerun_over_first": ("<=", 0.10), "rss_many_over_few": ("<=", 1.2),
           "stage_two_seconds": ("<=", 2), "cli_error_seconds": ("<=", 2), "warm_job_seconds": ("<=", 5),
           "pairwise_200_seconds": ("<=", 180), "moe_over_bare": ("<=", 1.25)}


def parsed_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny random Llama instead of Gemma 3 270M")
    parser.add_argument("--units", type=int, default=24, help="UDHR articles per language")
    parser.add_argument("--languages", type=int, default=8, help="languages timed for the ratios")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of bare vs ours (best of each)")
    parser.add_argument("--outputs", type=Path, help="outputs folder (default: the configuration's paths.outputs)")
    parser.add_argument("--pairwise-languages", type=int, default=200, help="languages of the every-pivot timing "
                        "(0: skip it; it takes minutes)")
    return parser.parse_args()


def bench_model(quick: bool, work: Path, models_dir: Path) -> tuple[ModelSpec, list[str]]:
    """The model measured and its command-line options: Gemma 3 270M, or with ``quick`` a tiny random Llama
    (saved under ``work``) with Gemma's multilingual tokenizer."""
    if not quick:
        return models.model_spec("gemma3_270m"), ["model=gemma3_270m"]
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = work / "tiny-llama"
    config = LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=262144)
    LlamaForCausalLM(config).save_pretrained(folder)
    gemma = models.converted_folder(models.model_spec("gemma3_270m"), models_dir)
    AutoTokenizer.from_pretrained(gemma).save_pretrained(folder)  # a real multilingual tokenizer
    return ModelSpec("bench-tiny-llama", str(folder)), ["model=hf", f"model.name_or_path={folder}"]


def stage_one_figures(spec: ModelSpec, loaded: tuple, corpus: ParallelCorpus, *, args: argparse.Namespace,
                      work: Path, models_dir: Path) -> tuple[dict, StateStore]:
    """Stage one against the bare forward pass (interleaved rounds, best of each) and the common way."""
    model, tokenizer = loaded
    texts = [text for language in corpus.languages for text in corpus.texts(language)]
    bare_forward(model, tokenizer, texts[:16], args.batch_size, 512)  # warm-up
    bares, probed, ours = [], [], []
    for attempt in range(args.rounds):  # interleaved, so that drifting machine load hits all alike
        bares.append(bare_forward(model, tokenizer, texts, args.batch_size, 512))
        probed.append(timed(pooled_states, model, tokenizer, texts, batch_size=args.batch_size, max_length=512)[0])
        seconds, store = stage_one_only(spec, loaded, corpus, folder=work / f"cache{attempt}",
                                        batch_size=args.batch_size, models_dir=models_dir)
        ours.append(seconds)
    bare, best = min(bares), min(ours)
    one_by_one, _ = stage_one_only(spec, loaded, corpus, folder=work / "cache-per-language",
                                   batch_size=args.batch_size, group_units=1, models_dir=models_dir)
    tokens = sum(len(ids) for ids in tokenize(tokenizer, texts, 512)[0])
    naive = naive_extraction(model, tokenizer, texts, 512)  # the same sentences as stage one above
    rounds = [o / b for o, b in zip(ours, bares)]
    return {"bare_seconds": bare, "probed_seconds": min(probed), "probed_over_bare": min(probed) / bare,
            "stage_one_seconds": best, "extract_over_bare": best / bare, "extract_over_bare_worst": max(rounds),
            "extract_over_bare_rounds": " ".join(f"{ratio:.3f}" for ratio in rounds),
            "stage_one_per_language_seconds": one_by_one, "tokens_per_second_stage_one": tokens / best,
            "tokens_per_second_bare": tokens / bare, "naive_seconds": naive,
            "naive_over_extract": naive / best}, store


def stage_two_figures(store: StateStore, corpus: ParallelCorpus) -> dict:
    """Bytes per cached value, and stage two (all dense metrics, intervals) split into reading and computing."""
    values = sum(np.prod(store.shape(lang, k, p)) for lang in corpus.languages
                 for k in ("nas", "nav", "hidden") for p in POOLINGS)
    read, _ = timed(lambda: [store.read(lang, k, "weighted") for lang in corpus.languages
                             for k in ("nas", "nav", "hidden")])
    dense_metrics = [name for name in registry.METRICS if name != "routing"]   # routing: MoE models only
    total, _ = timed(scoring.score, store, dense_metrics, "weighted", pivot=corpus.languages[0],
                     progress=False, resamples=200)
    return {"bytes_per_value": store.fs.du(store.path) / values,
            "compressor": "float16 + blosc lz4-5 bitshuffle + crc32c", "stage_two_seconds": total,
            "stage_two_read_seconds": read, "stage_two_compute_seconds": total - read}


def verdict(name: str, value) -> str:
    """``target <= 1.1: met`` for a figure with a target, else nothing."""
    if name not in TARGETS:
        return ""
    sign, bound = TARGETS[name]
    met = value <= bound if sign == "<=" else value >= bound
    return f"target {sign} {bound}: {'met' if met else 'NOT met'}"


def report(figures: dict, out: Path) -> None:
    """Print every figure (those with a target, with it, once more at the end) and write them to ``out``."""
    print(f"\n{figures['model']}: {figures['units']} units, {figures['tokens']} tokens, {figures['threads']} threads")
    for name, value in figures.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"  {name:<34} {shown:<12} {verdict(name, value)}")
    print("\ntargets:")
    for name in TARGETS:
        shown = f"{figures[name]:.3f}" if name in figures else "not measured"
        print(f"  {name:<34} {shown:<12} {verdict(name, figures[name]) if name in figures else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1))
    print(f"written: {out}")


def main() -> None:
    args = parsed_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="neuronxa-bench-"))
    models_dir = Path(models.composed().paths.models)
    spec, spec_cfg = bench_model(args.quick, work, models_dir)
    model, tokenizer = models.load(spec, dtype="float32", device="cpu", models_dir=models_dir)
    corpus = read_udhr(UDHR, MANY[: args.languages]).subset(max_units=args.units)
    texts = [text for language in corpus.languages for text in corpus.texts(language)]
    figures: dict[str, float | str] = {"model": spec.name, "threads": torch.get_num_threads(),
                                       "languages": len(corpus.languages), "units": len(texts),
                                       "tokens": sum(len(ids) for ids in tokenize(tokenizer, texts, 512)[0])}
    stage_one, store = stage_one_figures(spec, (model, tokenizer), corpus, args=args, work=work,
                                         models_dir=models_dir)
    figures.update(stage_one)
    figures.update(stage_two_figures(store, corpus))
    figures.update(moe_figures(tokenizer, texts, quick=args.quick, batch_size=args.batch_size, rounds=args.rounds,
                               bare_forward=bare_forward))
    figures.update(job_figures(spec_cfg, corpus, args.units, work))
    figures.update(memory_figures(spec, MANY, work=work, models_dir=models_dir))
    if args.pairwise_languages:
        figures[f"pairwise_{args.pairwise_languages}_seconds"] = pairwise_seconds(args.pairwise_languages)
    outputs = args.outputs or Path(models.composed().paths.outputs)
    report(figures, outputs / "bench" / ("quick.json" if args.quick else "latest.json"))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
