"""The package's shape: the layers import only downward (data < stage one < stage two < neurons, training < tasks
< run), checked by import-linter's contract in pyproject.toml."""

import logging.config

from importlinter.cli import lint_imports

from conftest import ROOT


def test_the_import_contract_keeps_the_layers_in_order(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(logging.config, "dictConfig", lambda config: None)   # it would disable neuronxa's loggers
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, capsys.readouterr().out
    assert "1 kept, 0 broken" in capsys.readouterr().out
