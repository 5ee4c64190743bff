"""The malformed-corpora script: every case ends with a clean, one-line error through the command line."""

import runpy
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_every_malformed_case_gets_a_clean_error(tmp_path):
    cases = runpy.run_path(str(ROOT / "scripts" / "malformed_corpora.py"))["build"](tmp_path / "counted")
    result = subprocess.run([sys.executable, "scripts/malformed_corpora.py", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert f"{len(cases)} cases, 0 without a clean error" in result.stdout
    assert "Did you mean fra_Latn?" in result.stdout
