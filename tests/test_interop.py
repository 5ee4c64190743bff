"""The anchors' artifacts: activation-count files (LAPE, NJUNLP with prefix files) and masks, in and out."""

import numpy as np
import pandas as pd
import pytest
import torch

from neuronxa.errors import NeuronXAError
from neuronxa.neurons import interop
from neuronxa.neurons.identify import identify, probabilities


def save_counts(path, over_zero, tokens, key):
    """One language's counts as the anchors save them: torch.save of a dict with a LongTensor."""
    torch.save({key: tokens, "over_zero": torch.tensor(over_zero, dtype=torch.long)}, path)
    return path


def test_lape_counts_read_back_as_layers_neurons_languages(tmp_path):
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 50, size=(3, 8)) for _ in range(2)]
    files = [save_counts(tmp_path / f"activation.{code}.train.llama", counts, 60 + i, "n")
             for i, (code, counts) in enumerate(zip(["en", "zh"], raw))]
    read = interop.read_counts(files)
    assert read.counts.shape == (3, 8, 2) and read.counts.dtype == np.int64
    np.testing.assert_array_equal(read.counts[..., 1], raw[1])
    assert read.tokens == [60, 61] and read.formats == ["lape", "lape"]
    prob = probabilities([read.counts[..., k] for k in range(2)], read.tokens)
    # LAPE divides LongTensors: float32, exactly as torch does
    expected = torch.stack([torch.tensor(c) for c in raw], dim=-1) / torch.tensor([60, 61])
    np.testing.assert_array_equal(prob, expected.numpy())


def test_njunlp_counts_subtract_the_prefix_clamped_at_zero(tmp_path):
    full = np.array([[5, 0, 7], [3, 3, 3]])
    prefix = np.array([[2, 1, 7], [0, 4, 1]])
    files = [save_counts(tmp_path / "activation.de.Mistral.pt", full, 30, "total_tokens")]
    prefixes = [save_counts(tmp_path / "prefix.activation.de.Mistral.pt", prefix, 12, "total_tokens")]
    read = interop.read_counts(files, prefixes)
    assert read.counts[..., 0].tolist() == [[3, 0, 0], [3, 0, 2]] and read.tokens == [18]
    assert read.formats == ["njunlp-prefix"]
    same = save_counts(tmp_path / "prefix.same.pt", full, 30, "total_tokens")   # no answer tokens: divide by 1
    assert interop.read_counts(files, [same]).tokens == [1]
    # NJUNLP's probability: float32 division by max(token difference, 1)
    prob = probabilities([read.counts[..., 0]], read.tokens)
    np.testing.assert_array_equal(prob[..., 0], (torch.tensor(read.counts[..., 0]).float() / 18.0).numpy())


def test_bad_count_files_get_one_line(tmp_path):
    good = save_counts(tmp_path / "a.pt", np.ones((2, 3)), 5, "n")
    other = save_counts(tmp_path / "b.pt", np.ones((2, 4)), 5, "n")
    torch.save({"tokens": 3}, tmp_path / "c.pt")
    (tmp_path / "d.pt").write_text("not a tensor file")
    for files, message in (([good, other], "all languages must come from one model"),
                           ([tmp_path / "c.pt"], "expected a dict with 'over_zero'"),
                           ([tmp_path / "d.pt"], "not a torch.save file"),
                           ([tmp_path / "missing.pt"], "no such file"), ([], "no activation-count files")):
        with pytest.raises(NeuronXAError, match=message):
            interop.read_counts(files)
    with pytest.raises(NeuronXAError, match="one prefix per file"):
        interop.read_counts([good], [good, good])


def test_a_written_mask_loads_as_the_anchors_structure_and_reads_back(tmp_path):
    prob = np.random.default_rng(3).beta(0.3, 3, size=(4, 50, 3))
    found = identify(prob, top_rate=0.1)
    path = interop.write_mask(found, tmp_path / "mask.Mistral", n_languages=3, n_layers=4)
    mask = torch.load(path, weights_only=True)
    assert isinstance(mask, list) and len(mask) == 3 and all(len(layers) == 4 for layers in mask)
    assert all(t.dtype == torch.long and t.tolist() == sorted(t.tolist()) for layers in mask for t in layers)
    kept = found[found.kept]
    for row in kept.itertuples():
        for language in range(3):
            assert (row.neuron in mask[language][row.layer].tolist()) == (language in row.languages)
    assert sum(t.numel() for layers in mask for t in layers) == sum(len(langs) for langs in kept.languages)
    back = interop.read_mask(path)
    pd.testing.assert_frame_equal(back, kept.reset_index(drop=True), check_dtype=False)
    assert interop.mask_lists(back, 3, 4) == [[t.tolist() for t in layers] for layers in mask]


def test_a_mask_in_the_anchors_format_reads_with_types(tmp_path):
    mask = [[torch.tensor([1, 4]), torch.tensor([], dtype=torch.long)],
            [torch.tensor([4]), torch.tensor([0])],
            [torch.tensor([4]), torch.tensor([], dtype=torch.long)]]
    torch.save(mask, tmp_path / "mask")
    frame = interop.read_mask(tmp_path / "mask")
    assert frame[["layer", "neuron", "type"]].values.tolist() == [[0, 1, "specific"], [0, 4, "agnostic"],
                                                                  [1, 0, "specific"]]
    assert frame.languages.tolist() == [(0,), (0, 1, 2), (1,)]
    assert frame.attrs == {"n_languages": 3, "n_layers": 2}
    torch.save({"not": "a mask"}, tmp_path / "bad")
    with pytest.raises(NeuronXAError, match="expected a mask"):
        interop.read_mask(tmp_path / "bad")
