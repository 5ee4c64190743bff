"""The schema of every config group: a dataclass per group (or per option where options differ), registered in
Hydra's ConfigStore under ``<group>/schema`` (or ``<group>/<option>_schema``), which each YAML file names in its
defaults list. Every option's type and default live here; a wrong type or an unknown key fails at composition."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class PathsConfig:
    outputs: str = "outputs"
    data: str = "data"
    models: str = "${paths.outputs}/models"


@dataclass
class GGUFConfig:
    package: str = MISSING
    file: Optional[str] = None


@dataclass
class ModelConfig:
    name: str = MISSING
    name_or_path: str = MISSING
    revision: Optional[str] = None
    gguf: Optional[GGUFConfig] = None
    dtype: str = "auto"
    device: str = "auto"
    device_map: Any = None           # "auto" or a mapping of module names to devices
    offload_folder: Optional[str] = None
    # FFN probe sites of an exotic model, module paths {layers, ffn, act, down, gated[, gate, up, activation, ffn_list]}
    # (stage_one.sites.Sites; a mapping checked when stage one starts); None: found from the model's structure
    sites: Any = None


@dataclass
class DatasetConfig:
    name: str = MISSING
    path: Optional[str] = MISSING
    languages: Optional[List[str]] = None
    max_units: Optional[int] = None


@dataclass
class UdhrConfig(DatasetConfig):
    unit: str = "article"


@dataclass
class FloresConfig(DatasetConfig):
    split: str = "devtest"


@dataclass
class PoolingConfig:
    name: str = MISSING
    skip_bos: bool = False


@dataclass
class MetricConfig:
    name: str = MISSING
    names: List[str] = MISSING


@dataclass
class BenchmarkConfig:
    source: str = MISSING


@dataclass
class StandinConfig(BenchmarkConfig):
    units: Optional[int] = None


@dataclass
class ResultsConfig(BenchmarkConfig):
    path: Any = MISSING              # a file or folder, or a list of them (lm_eval)
    model_aliases: List[str] = field(default_factory=list)


@dataclass
class LmEvalConfig(ResultsConfig):
    metric_key: str = "acc,none"


@dataclass
class TaskConfig:
    name: str = MISSING


@dataclass
class IdentifyConfig(TaskConfig):
    """The options of identifying language neurons, shared by the tasks that do."""

    languages: Optional[List[str]] = None
    prompt: Optional[str] = None
    method: str = "finegrained"
    top_rate: float = 0.01
    filter_rate: Optional[float] = None
    bar_rate: float = 0.95
    lam: Optional[float] = None


@dataclass
class NeuronsTaskConfig(IdentifyConfig):
    counts: Optional[List[str]] = None
    prefix_counts: Optional[List[str]] = None
    mask: Optional[str] = None
    deactivate: bool = True
    eval_units: int = 4
    seed: int = 0
    compare_model: Optional[str] = None
    aligned_languages: Optional[List[str]] = None


@dataclass
class SteerTaskConfig(IdentifyConfig):
    source: str = "eng_Latn"
    targets: List[str] = field(default_factory=lambda: ["fra_Latn", "rus_Cyrl", "zho_Hans"])
    prompts: int = 8
    prompt_words: int = 8
    new_tokens: int = 16
    source_modes: List[str] = field(default_factory=lambda: ["zero", "patch"])
    target_modes: List[str] = field(default_factory=lambda: ["set"])
    strengths: List[float] = field(default_factory=lambda: [1.0, 4.0])
    combine: List[str] = field(default_factory=lambda: ["zero"])
    mean_units: int = 4
    eval_units: int = 1
    seed: int = 0


@dataclass
class TrainingTaskConfig(TaskConfig):
    trained: List[str] = MISSING
    untrained: List[str] = field(default_factory=list)
    unit: str = "paragraph"
    train_articles: List[int] = MISSING
    eval_articles: List[int] = MISSING
    every: int = 15
    max_length: int = 256
    lora: Dict[str, Any] = field(default_factory=dict)       # peft.LoraConfig's own fields
    trainer: Dict[str, Any] = field(default_factory=dict)    # transformers.TrainingArguments' own fields
    metrics: List[str] = MISSING
    translate_units: int = 8
    translate_languages: Optional[List[str]] = None
    max_new_tokens: int = 64
    comet_checkpoint: Optional[str] = None
    merged_dir: str = MISSING
    seed: int = 0


@dataclass
class ExtractConfig:
    batch_size: int = 16
    batch_tokens: Optional[int] = None
    max_length: int = 512
    group_units: int = 256
    layers: Optional[int] = None


@dataclass
class ScoreConfig:
    pivot: str = "eng_Latn"
    languages: Optional[List[str]] = None
    layer_pool: str = "mean"
    tsne_language: Optional[str] = None
    tsne_layer: Optional[int] = None
    level: float = 0.95
    resamples: int = 200
    bootstrap: int = 2000
    permutations: int = 9999
    seed: int = 0
    plots: str = "background"


@dataclass
class CacheConfig:
    dir: str = "${paths.outputs}/cache"
    scores: bool = True


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///${paths.outputs}/mlflow.db"
    artifacts: str = "${paths.outputs}/mlartifacts"
    experiment: str = "neuronxa"


@dataclass
class Config:
    """The top level: the groups (typed by their own schemas) and the options of every run."""
    paths: Any = MISSING
    task: Any = MISSING
    model: Any = MISSING
    dataset: Any = MISSING
    pooling: Any = MISSING
    metric: Any = MISSING
    benchmark: Any = MISSING
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    debug: bool = False


SCHEMAS = {
    "paths/schema": PathsConfig, "model/schema": ModelConfig, "dataset/schema": DatasetConfig,
    "dataset/udhr_schema": UdhrConfig, "dataset/flores_schema": FloresConfig, "pooling/schema": PoolingConfig,
    "metric/schema": MetricConfig, "benchmark/schema": BenchmarkConfig, "benchmark/standin_schema": StandinConfig,
    "benchmark/results_schema": ResultsConfig, "benchmark/lm_eval_schema": LmEvalConfig,
    "task/schema": TaskConfig, "task/neurons_schema": NeuronsTaskConfig,
    "task/training_schema": TrainingTaskConfig, "task/steer_schema": SteerTaskConfig,
}


def register() -> None:
    """Put every schema in Hydra's ConfigStore (the top level as ``schema``), where the YAML files find them."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for entry, node in SCHEMAS.items():
        group, name = entry.split("/")
        store.store(group=group, name=name, node=node)


# What the command line runs for each task.name: "module:function", imported only when chosen.
TASKS = {"align": "neuronxa.tasks.align:run", "neurons": "neuronxa.tasks.neurons:run",
         "training": "neuronxa.tasks.training:run", "pairwise": "neuronxa.tasks.pairwise:run",
         "steer": "neuronxa.tasks.steer:run"}
# The names the library accepts (neuronxa.stage_one.pooling, neuronxa.stage_two.scoring, neuronxa.neurons.identify),
# restated here so that the options are checked without importing torch; a test keeps them equal.
POOLINGS = ("weighted", "mean", "last")
METRICS = ("nasca", "navca", "mexa", "cka", "svcca", "anc", "retrieval", "routing")
ALIGNMENT_METRICS = ("nasca", "navca", "mexa")
METHODS = ("finegrained", "lape")
