"""README.md and docs/*.md stay true: every command line composes, every option they name exists in the composed
config (a group's choice is a file in conf/GROUP/), every `make` target, `python -m` module and repository path
they name exists, every relative link points at a file, and every name their Python examples import exists."""

import ast
import functools
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig

import neuronxa.conf
from helpers import ROOT, composed

CONF = Path(neuronxa.conf.__file__).parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
KEY = re.compile(r"[a-z_][a-z0-9_]*(?:[./][a-z0-9_]+)*")
OVERRIDE = re.compile(rf"({KEY.pattern})=(.*)")
COMMAND = re.compile(r"^\s*(?:python -m neuronxa\.run|neuronxa)(?=\s|$)(.*)")
PLACEHOLDER = re.compile(r"\[[a-z ]+\]")
REPOSITORY_PATH = re.compile(r"(?:neuronxa|tests|scripts|bench|experiments|conf|docs)/[\w./-]*")
PARSER = OverridesParser.create()


def fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block."""
    return FENCE.findall(text)


def spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks, and every line of the shell and plain fenced blocks."""
    lines = [line for language, body in fenced(text) if language in ("", "bash") for line in body.splitlines()]
    return re.findall(r"`([^`\n]+)`", FENCE.sub("", text)) + lines


def values(override) -> list[str]:
    """The value of a parsed override, or each value of a sweep."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


@functools.lru_cache(maxsize=None)
def keys(overrides: tuple[str, ...] = (), hydra: bool = False) -> frozenset[str]:
    """Every dotted key of the config composed with ``overrides`` (values left unresolved; ``???`` counts)."""
    found = set()

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            found.add(prefix + str(key))
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                walk(child, f"{prefix}{key}.")

    walk(composed(list(overrides), hydra=hydra), "")
    return frozenset(found)


def group_choices(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def option_problem(key: str, value: str) -> str | None:
    """Why ``key=value`` names no option (None when it does): a group's choice must be a file of that group; any
    other key must exist in the config composed with the defaults or with one choice of the group it starts with."""
    if (CONF / key).is_dir() and "." not in key:
        override = PARSER.parse_override(f"{key}={value}")
        missing = [choice for choice in values(override) if choice and not (CONF / key / f"{choice}.yaml").is_file()]
        return f"no conf/{key}/{missing[0]}.yaml" if missing else None
    head = key.split(".")[0]
    if head == "hydra":
        candidates = [((f"hydra/launcher={choice}",), True) for choice in group_choices("hydra/launcher")]
    else:
        candidates = [((f"{head}={choice}",), False) for choice in group_choices(head)] if (CONF / head).is_dir() else []
    for overrides, hydra in [((), head == "hydra"), *candidates]:
        if key in keys(overrides, hydra):
            return None
    return f"no option {key} in the composed config"


def command_problem(arguments: str) -> str | None:
    """Why a ``python -m neuronxa.run`` command line names an option that does not exist or would not compose
    (None when it is right); each value of a sweep composes with the other options' first values."""
    tokens = [token for token in shlex.split(arguments) if token not in ("-m", "--multirun")]
    if all(PLACEHOLDER.fullmatch(token) for token in tokens):
        return None
    parsed = []
    for token in tokens:
        if not OVERRIDE.fullmatch(token):
            return f"{token!r} is not an option"
        parsed.append(PARSER.parse_override(token))
    firsts = [f"{override.key_or_group}={values(override)[0]}" for override in parsed]
    points = [[*firsts[:i], f"{override.key_or_group}={value}", *firsts[i + 1:]]
              for i, override in enumerate(parsed) for value in values(override)[1:]]
    for overrides in [firsts, *points]:
        try:
            composed(overrides, hydra=any(override.startswith("hydra") for override in overrides))
        except HydraException as error:
            return str(error).splitlines()[0]
    return None


def problems_of(text: str) -> list[str]:
    """What in a page's command lines and option names does not exist."""
    problems = []
    for span in spans(text):
        command = COMMAND.search(span)
        if command:
            problem = command_problem(command.group(1))
            problems += [f"{span}: {problem}"] if problem else []
            continue
        tokens = [token for token in span.split() if token != "-m"]
        if tokens and all(OVERRIDE.fullmatch(token) for token in tokens):
            for token in tokens:
                key, value = OVERRIDE.fullmatch(token).groups()
                problem = option_problem(key, value)
                problems += [f"{token}: {problem}"] if problem else []
    return problems


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    reproducible = re.search(r"REPRODUCIBLE := \$\(addprefix reproduce-,([^)]*)\)", makefile)
    return targets | {f"reproduce-{name}" for name in reproducible.group(1).split()}


def module_exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file() or \
        importlib.util.find_spec(module) is not None


def makefile_commands() -> list[str]:
    """The Makefile's recipe lines that run a module, with its make variables filled in (each reproducible
    table or figure, in both profiles)."""
    makefile = (ROOT / "Makefile").read_text().replace("$(ARGS)", "")
    names = sorted(target.removeprefix("reproduce-") for target in make_targets() if target.startswith("reproduce-"))
    lines = ["python" + line.strip().removeprefix("$(PY)") for line in makefile.splitlines() if line.startswith("\t$(PY) -m ")]
    return [line.replace("$*$(EXPERIMENT_SUFFIX)", name + suffix).replace("$*", name)
            for line in lines for name, suffix in ([(n, s) for n in names for s in ("", "_paper")] if "$*" in line
                                                   else [("", "")])]


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_every_command_and_option_named_exists(page):
    assert problems_of(page.read_text()) == []


@pytest.mark.parametrize("wrong", [
    "`extract.batchsize=4`", "`score.pivto=eng_Latn`", "`model=gpt5`", "`task.lora.rnk=4`", "`hydra.launcher.queue=x`",
    "```bash\npython -m neuronxa.run -m pooling=mean,median\n```", "```bash\nneuronxa metrics=nasca\n```",
    "`python -m neuronxa.run model=hf dataset.pth=x`", "`neuronxa model=llama2 run`",
])
def test_the_check_rejects_a_made_up_option_or_choice(wrong):
    assert problems_of(wrong)


def test_the_check_accepts_real_options():
    assert problems_of("`extract.batch_size=4` `task.lora.r=4` `hydra/launcher=slurm` `model.revision=` "
                       "`hydra.launcher.partition=gpu` `benchmark.metric_key=acc`") == []


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_every_make_target_module_and_path_named_exists(page):
    text, targets = page.read_text(), make_targets()
    named = spans(text)
    assert [m for span in named for m in re.findall(r"\bmake ([a-z][\w-]*)", span) if m not in targets] == []
    assert [m for span in named for m in re.findall(r"python -m ([\w.]+)", span) if not module_exists(m)] == []
    paths = [span for span in named if REPOSITORY_PATH.fullmatch(span)]
    assert [path for path in paths if not (ROOT / path).exists()] == []


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_every_relative_link_points_at_a_file(page):
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:|#", link)]
    assert [link for link in local if not (page.parent / link).exists()] == []


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_every_name_a_python_example_imports_exists(page):
    missing = []
    for language, body in fenced(page.read_text()):
        if language != "python":
            continue
        for node in ast.walk(ast.parse(body)):
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "neuronxa":
                module = importlib.import_module(node.module)
                missing += [f"{node.module}.{alias.name}" for alias in node.names if not hasattr(module, alias.name)]
    assert missing == []


def test_the_makefile_runs_modules_and_options_that_exist():
    commands = makefile_commands()
    assert [c for c in commands if not module_exists(c.split()[2])] == []
    runs = [c.removeprefix("python -m neuronxa.run") for c in commands if c.startswith("python -m neuronxa.run")]
    assert [f"{run}: {command_problem(run)}" for run in set(runs) if command_problem(run)] == []


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024
