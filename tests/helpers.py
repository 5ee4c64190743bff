"""Helpers shared by several test modules: slow loop restatements of the metrics, μ and retrieval of one matrix,
a hand-computed forward pass, small corpora and composed configs. (Fixtures live in conftest.py.)"""

import math

import numpy as np
import torch
from hydra import compose, initialize_config_module

from conftest import FIXTURES
from neuronxa.stage_one.probes import architecture, decoder_layers
from neuronxa.stage_two.metrics import beaten


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
            f"paths.outputs={tmp_path / 'outputs'}", "benchmark=none"]


def composed(overrides: list[str], hydra: bool = False):
    """The config as ``python -m neuronxa.run`` composes it, found as the installed package's configs."""
    with initialize_config_module("neuronxa.conf", version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)
