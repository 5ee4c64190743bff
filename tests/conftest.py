"""Shared fixtures: tiny random-weight models (Llama, Gemma 3, GPT-2 shapes) with a tiny word-level tokenizer.

They test the wiring (hooks, pooling, padding, cache), never the science.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import HIDDEN, NEURONS, UNITS, synthetic, tiny_model, tiny_tokenizer
from neuronxa.stage_one.store import StateStore


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
