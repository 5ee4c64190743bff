"""A model whose modules need a package that is not installed ends with one line naming it and how to install
it, before any weight loads: Gemma 3n (Gemma3nForConditionalGeneration, the type of google/gemma-3n-E2B/E4B)
builds its vision tower with timm, whose availability check is patched to fail here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import ROOT
from neuronxa.stage_one.models.loading import missing_package

WITHOUT_TIMM = textwrap.dedent("""
    import runpy, sys
    from transformers.utils import import_utils
    import_utils.BACKENDS_MAPPING["timm"] = (lambda: False, import_utils.TIMM_IMPORT_ERROR)
    sys.argv = ["neuronxa.run", *sys.argv[1:]]
    runpy.run_module("neuronxa.run", run_name="__main__")
""")


@pytest.mark.cli
def test_gemma3n_without_timm_is_one_line_naming_the_package(tmp_path):
    folder, corpus = tmp_path / "gemma-3n", tmp_path / "corpus.tsv"   # config.json only: no weights to load
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3n",
                                                    "architectures": ["Gemma3nForConditionalGeneration"]}))
    corpus.write_text("id\teng_Latn\tfra_Latn\nu0\tall human beings\ttous les êtres\nu1\tequal\tégaux\n")
    result = subprocess.run([sys.executable, "-c", WITHOUT_TIMM, "model=hf", f"model.name_or_path={folder}",
                             "dataset=tsv", f"dataset.path={corpus}", "model.device=cpu", "benchmark=none",
                             "tracking.enabled=false", "score.plots=off", f"paths.outputs={tmp_path / 'outputs'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    # on a line of its own, after stage one's progress bar
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors == ["error: model type 'gemma3n' needs the package timm (TimmWrapperModel), which is not "
                      "installed: install it with `pip install timm`"]


def test_another_import_error_is_one_line_too():
    said = str(missing_package("x", ImportError("No module named 'foo'.\nRestart.")))
    assert said == "model type 'x' cannot be built: No module named 'foo'. Restart."
