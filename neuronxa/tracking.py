"""MLflow logging of a run: the flattened config as params, scores as metrics (per layer as steps), tables and
plots as artifacts. The default store is a local SQLite file under ``outputs/``: nothing to start.
``mlflow`` is imported only here and only when a run is logged (it takes seconds to import).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
from filelock import FileLock

from neuronxa.errors import NeuronXAError


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
    """Fail before any work when a tracking server cannot be reached (local stores always can)."""
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


def _experiment_id(mlflow, name: str, artifacts: Path) -> str:
    """The experiment's id, created with its artifacts under ``artifacts`` if new."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifacts.resolve().as_uri())
    except Exception:  # noqa: BLE001 - another job of the sweep created it first
        return mlflow.get_experiment_by_name(name).experiment_id


def score_metrics(summary: pd.DataFrame, scores: pd.DataFrame) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
    """MLflow metrics of a scoring run: ``metric.language`` (layer-pooled) and ``metric.language.by_layer``
    curves with step = layer."""
    values = {f"{row.metric}.{row.language}": row.score for row in summary.itertuples()}
    series = [(f"{row.metric}.{row.language}.by_layer", row.value, row.layer) for row in scores.itertuples()]
    return values, series


def log_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, str],
    tags: dict[str, str],
    values: dict[str, float],
    series: list[tuple[str, float, int]],
    artifacts: list[Path],
    artifact_root: Path = Path("outputs/mlartifacts"),
) -> str:
    """Log one run: params, tags, single values, (name, value, step) series and artifact files; returns its id.

    Parallel jobs of a sweep logging to one local SQLite store take turns (a file lock), so that none of them
    races another to create the store's tables."""
    lock = FileLock(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else nullcontext()
    with lock:
        return _log_run(uri, experiment, run_name, params, tags, values, series, artifacts, artifact_root)


def _log_run(uri, experiment, run_name, params, tags, values, series, artifacts, artifact_root) -> str:
    import mlflow
    from mlflow.entities import Metric

    mlflow.set_tracking_uri(uri)
    experiment_id = _experiment_id(mlflow, experiment, artifact_root)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params(params)
        mlflow.set_tags(tags)
        metrics = [Metric(name, float(value), 0, int(step)) for name, value, step in series if pd.notna(value)]
        metrics += [Metric(name, float(value), 0, 0) for name, value in values.items() if pd.notna(value)]
        client = mlflow.tracking.MlflowClient()
        for start in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000])
        for path in artifacts:
            mlflow.log_artifact(str(path))
        return run.info.run_id


def runs(uri: str, experiment: str) -> pd.DataFrame:
    """All runs of an experiment with their params, tags and metrics (one row per run)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=[experiment], output_format="pandas")
    if found.empty:
        raise NeuronXAError(f"no runs logged in experiment {experiment!r} at {uri}: run its sweep first")
    return found
