"""Every mistake in the options ends in one line ``<option>=<value>: <what is wrong>; <what to do>`` from the
config step (composition, validation, the world), before any model loads; through the command line it is one
``error:`` line on stderr with exit code 2, no traceback, and nothing heavy imported."""

import subprocess
import sys
import textwrap

import pytest

from helpers import FIXTURES, ROOT
from neuronxa.config.jobs import check_command_line
from neuronxa.config.rules import ConfigError


def refused(overrides: list[str]) -> str:
    """The one line the config step refuses ``overrides`` with."""
    with pytest.raises(ConfigError) as caught:
        check_command_line(overrides)
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.fixture
def base(tmp_path):
    """A run that needs nothing outside the repository: the toy corpus, a hub id, no tracking, outputs in tmp."""
    return ["dataset=tsv", f"dataset.path={FIXTURES / 'toy.tsv'}", "model=hf", "model.name_or_path=org/model",
            "benchmark=none", "tracking.enabled=false", f"paths.outputs={tmp_path / 'outputs'}"]


def test_a_run_with_good_options_passes_and_hydra_is_told_its_mode_instead_of_composing_it_again(base,
                                                                                                  monkeypatch):
    from hydra._internal.hydra import Hydra
    from hydra.plugins.sweeper import Sweeper
    from hydra.types import RunMode

    from neuronxa.config.jobs import Checked, known_mode

    assert check_command_line(base) == Checked(None)   # the command line's -m decides
    assert check_command_line([*base, "experiment=table3"]) == Checked(RunMode.MULTIRUN)
    assert check_command_line(["--help"]) is None
    original, validate = Hydra.get_mode, Sweeper.validate_batch_is_legal
    with known_mode(Checked(RunMode.MULTIRUN)):
        monkeypatch.setattr(Hydra, "compose_config", lambda *a, **k: pytest.fail("composed again"))
        assert Hydra.get_mode(None, "config", base) == RunMode.MULTIRUN
        basic, other = type("BasicSweeper", (), {})(), type("OtherSweeper", (), {"hydra_context": None})()
        assert Sweeper.validate_batch_is_legal(basic, [["pooling=median"]]) is None   # the check composed each job
        with pytest.raises(AttributeError):   # another sweeper's jobs are composed by Hydra as before
            Sweeper.validate_batch_is_legal(other, [["pooling=median"]])
    assert (Hydra.get_mode, Sweeper.validate_batch_is_legal) == (original, validate)
    with known_mode(None):
        assert (Hydra.get_mode, Sweeper.validate_batch_is_legal) == (original, validate)


@pytest.mark.parametrize("overrides, line", [
    (["pooling=median"], "pooling=median: no such pooling config; choose one of last, mean, weighted"),
    (["model=llama9"], "model=llama9: no such model config; choose one of gemma3_270m, glm4, hf, llama2, llama3, "
                       "llama31, llama32, mistral03, olmo2, qwen25, qwen25_14b, smollm2_135m"),
    (["extract.foo=1"], "extract.foo=1: no such option; see the options with --cfg job"),
    (["+extract.foo=1"], "extract.foo=1: no such option; see the options with --cfg job"),
    (["foo=bar"], "foo=bar: no such option; see the options with --cfg job"),
    (["dataset.unit=paragraph", "dataset=tsv"], "dataset.unit=paragraph: no such option; see the options with "
                                                "--cfg job"),
    (["extract.batch_size=abc"], "extract.batch_size=abc: wrong type (Value 'abc' of type 'str' could not be "
                                 "converted to Integer); give a whole number"),
    (["score.level=high"], "score.level=high: wrong type (Value 'high' of type 'str' could not be converted to "
                           "Float); give a number"),
    (["score.plots=maybe"], "score.plots=maybe: not a known value; choose inline or background or off"),
    (["dataset.languages=eng_Latn"], "dataset.languages=eng_Latn: wrong type (Invalid value assigned: str is not a "
                                     "ListConfig, list or tuple.); give a list such as [a,b]"),
    (["extract.batch_size=null"], "extract.batch_size=null: wrong type (field 'extract.batch_size' is not "
                                  "Optional); give a value (this option cannot be null)"),
    (["model=hf"], "model.name_or_path=???: a value is required; give model.name_or_path=ORG/NAME (a hub id) or a "
                   "model folder"),
    (["dataset=tsv"], "dataset.path=???: a value is required; give dataset.path=/path/to/corpus"),
    (["score.pivot=[eng"], "score.pivot=[eng: cannot be read (no viable alternative at input '[eng'); write "
                           "key=value, key=[a,b] or key=a,b with -m"),
    (["extract.batch_size=1,0"], "extract.batch_size=1,0: several values in one run; add -m to sweep them, or "
                                 "write [a,b] for a list"),
    (["cache.dir=${nowhere}"], "cache.dir=...: cannot be resolved (Interpolation key 'nowhere' not found); fix the "
                               "interpolation or give a plain value"),
])
def test_composition_mistakes_get_one_line(overrides, line):
    assert refused(overrides) == line


@pytest.mark.parametrize("overrides, line", [
    (["-m", "extract.batch_size=1,0"], "extract.batch_size=0: below 1; give a whole number of at least 1"),
    (["-m", "pooling=weighted,median"], "pooling=median: no such pooling config; choose one of last, mean, weighted"),
    (["experiment=table3", "score.level=2"], "score.level=2.0: out of range; give a number in (0, 1)"),
    (["experiment=table3", "pooling=mean,median"], "pooling=median: no such pooling config; choose one of last, "
                                                   "mean, weighted"),
])
def test_every_job_of_a_sweep_is_checked_before_the_first_runs(overrides, line):
    assert refused(overrides) == line


RULES = [
    ("dataset.max_units=0", "dataset.max_units=0: below 2; give a whole number of at least 2 (or null: every unit; "
                            "alignment compares units with each other)"),
    ("dataset.max_units=-3", "dataset.max_units=-3: below 2"),
    ("dataset.languages=[]", "dataset.languages=[]: empty; give languages such as [eng_Latn,fra_Latn]"),
    ("dataset.path=", "dataset.path=: empty; give the corpus's file or folder"),
    ("model.name_or_path=", "model.name_or_path=: empty; give a hub id such as ORG/NAME or a model folder"),
    ("model.dtype=float8", "model.dtype=float8: not a known value; choose auto or float32 or float16 or bfloat16"),
    ("model.device=gpu", "model.device=gpu: not a known device; choose auto, cpu, cuda, cuda:N or mps"),
    ("pooling.name=median", "pooling.name=median: not a known value; choose weighted or mean or last"),
    ("metric.names=[nascar]", "metric.names=[nascar]: unknown: nascar; choose from nasca, navca, mexa, cka, svcca, "
                              "anc, retrieval"),
    ("metric.names=[]", "metric.names=[]: empty; choose from"),
    ("benchmark.source=mmlu", "benchmark.source=mmlu: not a known value; choose none or standin or csv or lm_eval"),
    ("extract.batch_size=0", "extract.batch_size=0: below 1; give a whole number of at least 1"),
    ("extract.batch_tokens=0", "extract.batch_tokens=0: below 1"),
    ("extract.max_length=1", "extract.max_length=1: below 2"),
    ("extract.group_units=0", "extract.group_units=0: below 1"),
    ("extract.layers=0", "extract.layers=0: below 1"),
    ("score.pivot=all", "score.pivot=all: every ordered pair is its own task now; use task=pairwise"),
    ("score.pivot=", "score.pivot=: empty; give a language code such as eng_Latn"),
    ("score.languages=[]", "score.languages=[]: empty"),
    ("score.layer_pool=median", "score.layer_pool=median: not a known value; choose mean or max"),
    ("score.tsne_layer=-1", "score.tsne_layer=-1: below 0"),
    ("score.level=0", "score.level=0.0: out of range; give a number in (0, 1)"),
    ("score.level=1", "score.level=1.0: out of range; give a number in (0, 1)"),
    ("score.resamples=-1", "score.resamples=-1: below 0"),
    ("score.bootstrap=-1", "score.bootstrap=-1: below 0"),
    ("score.permutations=0", "score.permutations=0: below 1"),
    ("score.seed=-1", "score.seed=-1: below 0"),
    ("cache.dir=", "cache.dir=: empty; give a folder (or an fsspec URL) for the cached states"),
    ("tracking.uri=", "tracking.uri=: empty"),
    ("tracking.artifacts=", "tracking.artifacts=: empty"),
    ("tracking.experiment=", "tracking.experiment=: empty; give an experiment name"),
    ("paths.outputs=", "paths.outputs=: empty"),
    ("task.name=magic", "task.name=magic: not a known value; choose align or neurons or training or pairwise"),
]


@pytest.mark.parametrize("override, line", RULES, ids=[override for override, _ in RULES])
def test_each_rule_refuses_its_bad_value(base, override, line):
    assert refused([*base, override]).startswith(line)


def test_the_group_specific_rules(base):
    assert refused(["dataset=udhr", "dataset.unit=sentence"]).startswith(
        "dataset.unit=sentence: not a known value; choose article or paragraph")
    assert refused(["dataset=flores", "dataset.path=x", "dataset.split=test"]).startswith(
        "dataset.split=test: not a known value; choose dev or devtest")
    assert refused([*base, "benchmark=standin", "benchmark.units=0"]).startswith("benchmark.units=0: below 1")
    assert refused([*base, "benchmark=csv", "benchmark.path=null"]).startswith("benchmark.path=null: not given")
    assert refused(["dataset=flores"]).startswith("dataset.path=null: not given")


NEURON_RULES = [
    ("task.method=magic", "task.method=magic: not a known value; choose finegrained or lape"),
    ("task.top_rate=2", "task.top_rate=2.0: out of range; give a number in (0, 1]"),
    ("task.top_rate=0", "task.top_rate=0.0: out of range"),
    ("task.bar_rate=1.5", "task.bar_rate=1.5: out of range; give a number in (0, 1]"),
    ("task.filter_rate=-0.1", "task.filter_rate=-0.1: out of range; give a number in [0, 1] (or null: the method's"),
    ("task.lam=-1", "task.lam=-1.0: out of range; give a number in [0, inf) (or null: searched)"),
    ("task.eval_units=0", "task.eval_units=0: below 1"),
    ("task.seed=-1", "task.seed=-1: below 0"),
    ("task.languages=[]", "task.languages=[]: empty"),
    ("task.prefix_counts=[a.pt]", "task.prefix_counts=[a.pt]: 1 files for 0 counts files; give one prefix file"),
]


@pytest.mark.parametrize("override, line", NEURON_RULES, ids=[override for override, _ in NEURON_RULES])
def test_each_language_neurons_rule_refuses_its_bad_value(base, override, line):
    assert refused([*base, "task=neurons", override]).startswith(line)


STEER_RULES = [
    ("task.prompts=0", "task.prompts=0: below 1"),
    ("task.prompt_words=0", "task.prompt_words=0: below 1"),
    ("task.new_tokens=0", "task.new_tokens=0: below 1"),
    ("task.mean_units=0", "task.mean_units=0: below 1"),
    ("task.source_modes=[mute]", "task.source_modes=[mute]: unknown: mute; choose from zero, patch"),
    ("task.target_modes=[]", "task.target_modes=[]: empty; choose from set, scale"),
    ("task.combine=[set]", "task.combine=[set]: unknown: set; choose from zero, patch"),
    ("task.strengths=[1,0]", "task.strengths=[1.0,0.0]: give a non-empty list of numbers above 0"),
    ("task.strengths=[]", "task.strengths=[]: give a non-empty list of numbers above 0"),
    ("task.source=", "task.source=: empty; give the prompts' language"),
    ("task.targets=[]", "task.targets=[]: empty; give target languages"),
    ("task.targets=[xxx_Latn]", "task.targets=[xxx_Latn]: xxx_Latn not among the languages the neurons are"),
    ("task.source=xxx_Latn", "task.source=xxx_Latn: xxx_Latn not among the languages the neurons are identified"),
    ("task.targets=[eng_Latn]", "task.targets=[eng_Latn]: holds the source eng_Latn; steer to other languages"),
    ("task.top_rate=0", "task.top_rate=0.0: out of range"),
    ("task.method=magic", "task.method=magic: not a known value; choose finegrained or lape"),
]


@pytest.mark.parametrize("override, line", STEER_RULES, ids=[override for override, _ in STEER_RULES])
def test_each_steering_rule_refuses_its_bad_value(base, override, line):
    assert refused([*base, "task=steer", "task.languages=[eng_Latn,fra_Latn]", "task.targets=[fra_Latn]",
                    override]).startswith(line)


def test_compare_model_needs_the_models_own_counts(base, tmp_path):
    (tmp_path / "c.pt").write_bytes(b"")
    assert refused([*base, "task=neurons", f"task.counts=[{tmp_path / 'c.pt'}]", "task.compare_model=org/other"]) \
        .startswith("task.compare_model=org/other: needs the model's own counts")


TRAINING_RULES = [
    ("task.every=0", "task.every=0: below 1"),
    ("task.max_length=1", "task.max_length=1: below 2"),
    ("task.translate_units=0", "task.translate_units=0: below 1"),
    ("task.max_new_tokens=0", "task.max_new_tokens=0: below 1"),
    ("task.unit=sentence", "task.unit=sentence: not a known value; choose article or paragraph"),
    ("task.metrics=[bleu]", "task.metrics=[bleu]: unknown: bleu"),
    ("task.train_articles=[0,25]", "task.train_articles=[0,25]: must come before task.eval_articles [21,30]"),
    ("task.eval_articles=[21,31]", "task.train_articles=[0,20]: must come before task.eval_articles [21,31]"),
    ("task.train_articles=[3]", "task.train_articles=[3]: not a range; give [first,last]"),
    ("task.trained=[]", "task.trained=[]: needs at least one language"),
    ("task.trained=[spa_Latn]", "task.trained=[spa_Latn]: needs at least one language, none of them in "
                                "task.untrained (both: spa_Latn)"),
    ("task.lora.r=0", "task.lora.r=0: below 1"),
    ("+task.lora.rank=8", "task.lora.rank=8: not a field of peft.LoraConfig; use its own names (r, lora_alpha"),
    ("task.lora.lora_dropout=abc", "task.lora.lora_dropout=abc: wrong type; give a number (as LoraConfig takes it)"),
    ("task.trainer.max_steps=1.5", "task.trainer.max_steps=1.5: wrong type; give a whole number"),
    ("+task.trainer.bf16=yes", "task.trainer.bf16=yes: wrong type; give true or false"),
    ("task.trainer.max_steps=0", "task.trainer.max_steps=0: below 1"),
    ("task.trainer.per_device_train_batch_size=0", "task.trainer.per_device_train_batch_size=0: below 1"),
    ("task.metrics=[nascar]", "task.metrics=[nascar]: unknown: nascar; choose from nasca"),
    ("+task.trainer.steps=10", "task.trainer.steps=10: not a field of transformers.TrainingArguments"),
    ("dataset=tsv", "dataset=tsv: task=training trains on UDHR paragraphs; use dataset=udhr"),
]


@pytest.mark.parametrize("override, line", TRAINING_RULES, ids=[override for override, _ in TRAINING_RULES])
def test_each_training_rule_refuses_its_bad_value(tmp_path, override, line):
    overrides = ["task=training", "tracking.enabled=false", f"paths.outputs={tmp_path}"]
    extra = [f"dataset.path={FIXTURES / 'toy.tsv'}"] if override == "dataset=tsv" else []
    assert refused([*overrides, override, *extra]).startswith(line)


def test_missing_and_wrong_kinds_of_files_are_refused(base, tmp_path):
    (tmp_path / "a_file").write_text("")
    nowhere, folder, file = tmp_path / "nowhere.tsv", tmp_path, tmp_path / "a_file"
    assert refused([*base, f"dataset.path={nowhere}"]) == f"dataset.path={nowhere}: no such file; give an " \
                                                          "existing file"
    assert refused([*base, f"dataset.path={folder}"]) == f"dataset.path={folder}: is a folder; give a file"
    assert refused([*base, "dataset=flores", f"dataset.path={file}"]) == f"dataset.path={file}: is a file; give " \
                                                                         "a folder"
    assert refused([*base, "benchmark=csv", f"benchmark.path={nowhere}"]).startswith(f"benchmark.path={nowhere}: "
                                                                                     "no such file")
    assert refused([*base, "task=neurons", f"task.counts=[{nowhere}]"]).startswith(f"task.counts={nowhere}: no "
                                                                                   "such file")
    assert refused([*base, "task=neurons", f"task.mask={folder}"]).startswith(f"task.mask={folder}: is a folder")


def test_a_model_folder_must_hold_a_model(base, tmp_path):
    assert refused([*base, f"model.name_or_path={tmp_path / 'none'}"]) == \
        f"model.name_or_path={tmp_path / 'none'}: no such folder; give an existing folder"
    assert refused([*base, f"model.name_or_path={tmp_path}"]).startswith(
        f"model.name_or_path={tmp_path}: holds neither config.json nor adapter_config.json")


def test_a_device_that_is_not_there_is_refused(base):
    assert refused([*base, "model.device=cuda:99"]).startswith("model.device=cuda:99: ")


def test_an_option_the_packaged_model_ignores_is_refused(base):
    without_model = [override for override in base if not override.startswith("model")]
    assert refused([*without_model, "model.revision=abc"]).startswith(
        "model.revision=abc: ignored by model=gemma3_270m, whose weights come from the package")
    assert refused([*without_model, "model.revision="]).startswith("model.revision=: ignored by model=gemma3_270m")


def test_a_cache_or_store_that_cannot_be_used_is_refused(base, tmp_path):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "garbage.db").write_text("not a database")
    assert refused([*base, f"cache.dir={tmp_path / 'a_file' / 'cache'}"]).startswith(
        f"cache.dir={tmp_path / 'a_file' / 'cache'}: ") and "is a file" in refused(
        [*base, f"cache.dir={tmp_path / 'a_file' / 'cache'}"])
    uri = f"sqlite:///{tmp_path / 'garbage.db'}"
    assert refused([*base, "tracking.enabled=true", f"tracking.uri={uri}"]).startswith(
        f"tracking.uri={uri}: tracking store {tmp_path / 'garbage.db'} is not an SQLite database")


HEAVY = ("torch", "transformers", "peft", "mlflow", "matplotlib", "sklearn", "pandas")
WATCHED = textwrap.dedent(f"""
    import atexit, runpy, sys
    atexit.register(lambda: print("heavy:", *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr))
    sys.argv = ["neuronxa.run", *sys.argv[1:]]
    runpy.run_module("neuronxa.run", run_name="__main__")
""")


@pytest.mark.cli
@pytest.mark.parametrize("overrides, line", [
    (["pooling=median"], "error: pooling=median: no such pooling config; choose one of last, mean, weighted"),
    (["model=hf"], "error: model.name_or_path=???: a value is required"),
    (["cache.dir="], "error: cache.dir=: empty"),
    (["-m", "extract.batch_size=4,0"], "error: extract.batch_size=0: below 1"),
    (["tracking.enabled=false", "model.revision="], "error: model.revision=: ignored by model=gemma3_270m"),
])
def test_the_command_line_says_one_line_exits_2_and_loads_nothing(tmp_path, overrides, line):
    result = subprocess.run([sys.executable, "-c", WATCHED, *overrides, f"paths.outputs={tmp_path}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    errors = [said for said in result.stderr.splitlines() if said.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(line) and "Traceback" not in result.stderr
    assert "heavy:" in result.stderr and result.stderr.split("heavy:")[1].split() == []


@pytest.mark.cli
def test_hydras_own_flags_still_work(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "neuronxa.run", "--cfg", "job", "model=hf"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "name_or_path: ???" in shown.stdout
    helped = subprocess.run([sys.executable, "-m", "neuronxa.run", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and "== Config ==" in helped.stdout
