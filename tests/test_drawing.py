"""The alignment job's plots drawn in a separate process after the tables (``score.plots=background``), logged to
the job's MLflow run, and drawn again on demand from a run folder."""

import subprocess
import sys

import mlflow
import pytest
from omegaconf import OmegaConf

from helpers import ROOT, composed, tiny_overrides
from neuronxa.tasks import align as align_task
from neuronxa.tasks import drawing
from neuronxa.tasks.tracking import runs


def hydra_like(cfg, folder):
    """The run's config where Hydra leaves it (the tests call the task without Hydra)."""
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")


class Started:
    """Stands in for ``subprocess.Popen``: remembers the command instead of starting it."""
    commands: list[list[str]] = []

    def __init__(self, command, **_):
        Started.commands.append(command)
        self.pid = 0


def test_background_plots_are_drawn_after_the_job_and_logged_to_its_finished_run(tiny_folder, tmp_path,
                                                                                  monkeypatch):
    cfg = composed(tiny_overrides(tiny_folder, tmp_path) + ["metric=nasca", "score.plots=background",
                                                            "score.resamples=20"])
    folder = tmp_path / "run"
    hydra_like(cfg, folder)
    inline = composed(tiny_overrides(tiny_folder, tmp_path) + ["metric=nasca", "tracking.enabled=false",
                                                               "score.resamples=20"])
    align_task.run(inline, tmp_path / "inline")
    monkeypatch.setattr(drawing.subprocess, "Popen", Started)
    Started.commands.clear()
    align_task.run(cfg, folder)
    assert not (folder / "plots").exists() and len(Started.commands) == 1
    assert Started.commands[0][2:5] == ["neuronxa.tasks.drawing", str(folder), "--low-priority"]
    run = runs(cfg.tracking.uri, "neuronxa").iloc[0]
    assert run.status == "FINISHED" and Started.commands[0][-4:] == ["--run-id", run.run_id, "--tracking-uri",
                                                                      cfg.tracking.uri]
    client = mlflow.tracking.MlflowClient(cfg.tracking.uri)
    assert not [a for a in client.list_artifacts(run.run_id) if a.path.endswith(".png")]
    monkeypatch.undo()
    done = subprocess.run(Started.commands[0], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    drawn = sorted(path.name for path in (folder / "plots").iterdir())
    assert drawn == sorted(path.name for path in (tmp_path / "inline" / "plots").iterdir())
    logged = {a.path for a in client.list_artifacts(run.run_id)}
    assert set(drawn) <= logged and "scores.csv" in logged


def test_plots_of_a_run_folder_drawn_on_demand(tiny_folder, tmp_path, monkeypatch):
    cfg = composed(tiny_overrides(tiny_folder, tmp_path) + ["metric=nasca", "score.plots=off",
                                                            "tracking.enabled=false", "score.resamples=20"])
    folder = tmp_path / "run"
    hydra_like(cfg, folder)
    align_task.run(cfg, folder)
    assert not (folder / "plots").exists()
    monkeypatch.chdir(tmp_path)
    drawing.main([str(folder)])
    assert {"nasca_by_layer.png", "nasca_heatmap.png", "alignment_intervals.png"} <= {
        path.name for path in (folder / "plots").iterdir()}


def test_drawing_a_folder_that_is_no_run_says_so(tmp_path, capsys, monkeypatch):
    niced = []
    monkeypatch.setattr(drawing.os, "nice", niced.append)
    for low in ([], ["--low-priority"]):
        with pytest.raises(SystemExit) as exit_:
            drawing.main([str(tmp_path), *low])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: {tmp_path} is no alignment run folder")
    assert niced == [19]   # only when asked to


@pytest.mark.cli
def test_the_drawing_command_answers_help_without_drawing():
    result = subprocess.run([sys.executable, "-m", "neuronxa.tasks.drawing", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "RUN" in result.stdout.upper()
