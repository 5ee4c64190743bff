"""The package's shape: the layers import only downward (data < stage one < stage two < neurons, training < tasks
< run), checked by import-linter's contract in pyproject.toml."""

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_the_import_contract_keeps_the_layers_in_order():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout
