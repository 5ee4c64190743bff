"""The package's shape: the layers import only downward (data < stage one < stage two < neurons, training < tasks
< config < run), checked by import-linter's contract in pyproject.toml; small modules and functions; the public API
at the top level, imported lazily."""

import ast
import logging.config
import subprocess
import sys

import pytest
from importlinter.cli import lint_imports

from helpers import ROOT


def test_the_import_contract_keeps_the_layers_in_order(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(logging.config, "dictConfig", lambda config: None)   # it would disable neuronxa's loggers
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, capsys.readouterr().out
    assert "1 kept, 0 broken" in capsys.readouterr().out


def _functions(tree: ast.AST):
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _positional(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    names = [arg.arg for arg in (*function.args.posonlyargs, *function.args.args)]
    return len([name for name in names if name not in ("self", "cls")])


def _sizes() -> tuple[list[str], list[str], list[str]]:
    """Modules over 300 lines, functions over 40 lines, functions with more than 6 positional parameters."""
    long_modules, long_functions, wide_functions = [], [], []
    for path in sorted((ROOT / "neuronxa").rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(ROOT).as_posix()
        if len(source.splitlines()) > 300:
            long_modules.append(name)
        for function in _functions(ast.parse(source)):
            where = f"{name}:{function.lineno} {function.name}"
            if function.end_lineno - function.lineno + 1 > 40:
                long_functions.append(where)
            if _positional(function) > 6:
                wide_functions.append(where)
    return long_modules, long_functions, wide_functions


def test_modules_and_functions_stay_small():
    long_modules, long_functions, wide_functions = _sizes()
    assert not long_modules, f"modules over 300 lines: {long_modules}"
    assert not long_functions, f"functions over 40 lines: {long_functions}"
    assert not wide_functions, f"functions with more than 6 positional parameters: {wide_functions}"


def test_the_public_api_is_the_package_top_level():
    import neuronxa
    from neuronxa.neurons.identify import identify
    from neuronxa.stage_two.live import score_model

    assert neuronxa.identify is identify and neuronxa.score_model is score_model
    for name in neuronxa.__all__:
        assert getattr(neuronxa, name).__name__ == name, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        neuronxa.nothing


def test_importing_the_package_loads_no_model_library():
    code = "import sys, neuronxa; print(sorted({'torch', 'transformers', 'mlflow'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
