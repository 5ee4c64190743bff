"""MLflow logging of a run: the flattened config as params, the corpus as its dataset, scores as metrics (per layer
as steps), tables and plots as artifacts. The default store is a local SQLite file under ``outputs/``: nothing to
start. ``mlflow`` is imported only here and only when a run is logged (it takes seconds to import).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from filelock import FileLock

from neuronxa.data.corpus import ParallelCorpus
from neuronxa.errors import NeuronXAError, check_creatable

EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


@dataclass
class Logged:
    """What a job hands to its MLflow run: tags, single values, (name, value, step) series, files, the corpora
    it read by what it did with them (``evaluation``, ``training``), and what to start once the run is recorded
    and ended (``then``, called with the run's id; None when tracking is off)."""
    tags: dict[str, str]
    values: dict[str, float] = field(default_factory=dict)
    series: list[tuple[str, float, int]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list, kw_only=True)
    corpora: dict[str, ParallelCorpus] = field(default_factory=dict, kw_only=True)
    then: Callable[[str | None], None] | None = field(default=None, kw_only=True)


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists become their string."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]
    return flat


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail before any work when the tracking store cannot be used: a server that does not answer, or a local
    SQLite store that is not a database or cannot be created."""
    if uri.startswith("sqlite:///"):
        return _check_sqlite(Path(uri.removeprefix("sqlite:///")))
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout)
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise NeuronXAError(
            f"MLflow server {uri} is unreachable ({reason}): start it, fix tracking.uri, "
            "or use the local store (drop the tracking.uri override)"
        ) from None


def _check_sqlite(path: Path) -> None:
    """An existing file must be an SQLite database; a new one must have a folder to go in."""
    if path.is_dir():
        raise NeuronXAError(f"tracking.uri names {path}, a folder: give a file, e.g. sqlite:///{path / 'mlflow.db'}")
    if path.exists():
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
                connection.execute("PRAGMA schema_version")
        except sqlite3.DatabaseError as error:
            raise NeuronXAError(f"tracking store {path} is not an SQLite database ({error}): point tracking.uri at "
                                "another file, or move this one away") from None
        return
    check_creatable(path.parent, "tracking.uri")


def _experiment_id(client, name: str, artifacts: Path) -> str:
    """The experiment's id, created with its artifacts under ``artifacts`` if new, and marked as a model-
    development experiment so that the MLflow UI opens on its runs (not on GenAI traces)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=artifacts.resolve().as_uri())
        except Exception:  # noqa: BLE001 - another job of the sweep created it first
            pass
        experiment = client.get_experiment_by_name(name)
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_DEVELOPMENT:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_DEVELOPMENT)
    return experiment.experiment_id


def score_metrics(summary: pd.DataFrame, scores: pd.DataFrame) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
    """MLflow metrics of a scoring run: ``metric.language`` (layer-pooled) with ``.ci_low`` and ``.ci_high``,
    and ``metric.language.by_layer`` curves with step = layer."""
    values = {}
    for row in summary.itertuples():
        values |= {f"{row.metric}.{row.language}": row.score, f"{row.metric}.{row.language}.ci_low": row.ci_low,
                   f"{row.metric}.{row.language}.ci_high": row.ci_high}
    series = [(f"{row.metric}.{row.language}.by_layer", row.value, row.layer) for row in scores.itertuples()]
    return values, series


def correlation_metrics(correlations: pd.DataFrame) -> dict[str, float]:
    """``pearson.metric.benchmark`` with its interval and permutation p, and the same for Spearman."""
    values = {}
    for row in correlations.itertuples():
        for kind, value in (("pearson", row.pearson_r), ("spearman", row.spearman_rho)):
            name = f"{kind}.{row.metric}.{row.benchmark}"
            values |= {name: value, f"{name}.ci_low": getattr(row, f"{kind}_ci_low"),
                       f"{name}.ci_high": getattr(row, f"{kind}_ci_high"),
                       f"{name}.permutation_p": getattr(row, f"{kind}_permutation_p")}
    return values


def corpus_digest(corpus: ParallelCorpus) -> str:
    """A short digest of the corpus's languages, unit ids and texts: the same texts give the same digest."""
    digest = hashlib.sha256()
    for language in corpus.languages:
        digest.update(f"{language}\t{corpus.fingerprint(language)}\n".encode())
    return digest.hexdigest()[:16]


def corpus_input(corpus: ParallelCorpus, context: str, source: str = ""):
    """The corpus as an MLflow dataset input: its name, its languages (the schema: a text column per language),
    its size (the profile) and its digest; ``context`` says what the run did with it, ``source`` where it was
    read."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    schema = Schema([ColSpec("string", language) for language in corpus.languages])
    profile = {"languages": len(corpus.languages), "units": sum(len(units) for units in corpus.units.values())}
    dataset = Dataset(corpus.name, corpus_digest(corpus), "local", json.dumps({"uri": source}),
                      json.dumps({"mlflow_colspec": schema.to_dict()}), json.dumps(profile))
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])


class Recorder:
    """Logs what a job hands over (a ``Logged``) into its open MLflow run."""

    def __init__(self, client, run_id: str, lock) -> None:
        self.client, self.run_id, self.lock = client, run_id, lock

    def record(self, logged: Logged, source: str = "") -> None:
        """Tags, metrics, files, and each corpus as a dataset input read from ``source``."""
        from mlflow.entities import Metric, RunTag

        metrics = [Metric(name, float(value), 0, int(step)) for name, value, step in logged.series if pd.notna(value)]
        metrics += [Metric(name, float(value), 0, 0) for name, value in logged.values.items() if pd.notna(value)]
        inputs = [corpus_input(corpus, context, source) for context, corpus in logged.corpora.items()]
        with self.lock:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in logged.tags.items()])
            if inputs:
                self.client.log_inputs(self.run_id, datasets=inputs)
            for start in range(0, len(metrics), 1000):
                self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])
            for path in logged.files:
                self.client.log_artifact(self.run_id, str(path))


@contextmanager
def recorded(uri: str, experiment: str, run_name: str, *, params: dict[str, str], tags: dict[str, str],
             artifact_root: Path) -> Iterator[Recorder]:
    """An MLflow run open for the whole job: created before any work (so its duration is the job's), ended
    FINISHED, or FAILED (KILLED on Ctrl-C) with the error's first line as the tag ``error``.

    Parallel jobs of a sweep sharing one local SQLite store take turns (a file lock), so that none of them
    races another to create the store's tables."""
    import mlflow
    from mlflow.entities import Param

    lock = FileLock(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else nullcontext()
    with lock:
        client = mlflow.tracking.MlflowClient(uri)
        run = client.create_run(_experiment_id(client, experiment, artifact_root), run_name=run_name, tags=tags)
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[start : start + 100])
    try:
        yield Recorder(client, run.info.run_id, lock)
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        with lock:
            client.set_tag(run.info.run_id, "error", (str(error).splitlines() or [type(error).__name__])[0][:500])
            client.set_terminated(run.info.run_id, status)
        raise
    with lock:
        client.set_terminated(run.info.run_id, "FINISHED")


def runs(uri: str, experiment: str) -> pd.DataFrame:
    """All runs of an experiment with their params, tags and metrics (one row per run)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=[experiment], output_format="pandas")
    if found.empty:
        raise NeuronXAError(f"no runs logged in experiment {experiment!r} at {uri}: run its sweep first")
    return found
