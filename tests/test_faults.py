"""Faults with real processes: a stage one killed by SIGKILL resumes to the same result, and two jobs writing
the same cache entries at once compute each language once and leave it intact."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from helpers import LANGUAGES, ROOT, assert_storage_close, corpus_file
from neuronxa.data.readers import read_tsv
from neuronxa.stage_one.cache import extract_corpus
from neuronxa.stage_one.models import ModelSpec
from neuronxa.stage_one.options import StageOneOptions
from neuronxa.stage_one.store import StateStore

pytestmark = pytest.mark.cli     # every test here runs stage one in child processes

CHILD = textwrap.dedent("""
    import sys, time
    from neuronxa.stage_one import cache, forward
    from neuronxa.data.readers import read_tsv
    from neuronxa.stage_one.models import ModelSpec
    from neuronxa.stage_one.options import StageOneOptions
    slow = float(sys.argv[4])
    real = forward.pooled_tensors
    def paced(*args, **kwargs):
        time.sleep(slow)
        return real(*args, **kwargs)
    forward.pooled_tensors = paced
    options = StageOneOptions(group_units=int(sys.argv[5]), device="cpu", dtype="float32")
    store, report = cache.extract_corpus(read_tsv(sys.argv[1]), ModelSpec("tiny", sys.argv[2]), sys.argv[3],
                                         options=options)
    print(" ".join(report.status), flush=True)
""")


def child(tsv, folder, cache, slow, group_units=3):
    """Stage one in a separate process, one language per group (3 units each) unless told otherwise."""
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tsv), str(folder), str(cache), str(slow),
                             str(group_units)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_same_cache(first: StateStore, second: StateStore, same_plan: bool = True):
    """Bit-identical states where the batch plan is the same; within storage rounding where it is not."""
    compare = np.testing.assert_array_equal if same_plan else assert_storage_close
    for language in LANGUAGES:
        for kind in ("nas", "nav", "hidden"):
            compare(first.read(language, kind, "weighted"), second.read(language, kind, "weighted"))


def test_sigkill_in_the_middle_of_stage_one_resumes_to_the_same_result(tiny_folder, tmp_path):
    tsv, cache = corpus_file(tmp_path), tmp_path / "cache"
    process = child(tsv, tiny_folder, cache, slow=1.5)
    spec = ModelSpec("tiny", str(tiny_folder))
    deadline = time.time() + 120
    while time.time() < deadline:
        if cache.exists() and any(not p.parts[-3].startswith(".") for p in cache.glob("*/eng_Latn/zarr.json")):
            break  # the first language is in place; the child is now working on the second
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    store, report = extract_corpus(read_tsv(tsv), spec, cache, options=StageOneOptions(group_units=3))
    statuses = report.status.tolist()
    assert statuses[0] == "reused" and "written" in statuses and set(statuses) <= {"reused", "written"}
    fresh, _ = extract_corpus(read_tsv(tsv), spec, tmp_path / "fresh", options=StageOneOptions(group_units=3))
    assert_same_cache(store, fresh)
    default_plan, _ = extract_corpus(read_tsv(tsv), spec, tmp_path / "default")   # all languages in one group
    assert_same_cache(store, default_plan, same_plan=False)


def test_two_jobs_writing_one_cache_compute_each_language_once(tiny_folder, tmp_path):
    tsv, cache = corpus_file(tmp_path), tmp_path / "cache"
    jobs = [child(tsv, tiny_folder, cache, slow=0.3) for _ in range(2)]
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), [err[-2000:] for _, err in outputs]
    statuses = [out.split() for out, _ in outputs]
    for index in range(len(LANGUAGES)):
        assert sorted(s[index] for s in statuses) == ["reused", "written"]
    spec = ModelSpec("tiny", str(tiny_folder))
    shared, report = extract_corpus(read_tsv(tsv), spec, cache)
    assert set(report.status) == {"reused"}
    fresh, _ = extract_corpus(read_tsv(tsv), spec, tmp_path / "fresh", options=StageOneOptions(group_units=3))
    assert_same_cache(shared, fresh)
    default_plan, _ = extract_corpus(read_tsv(tsv), spec, tmp_path / "default")
    assert_same_cache(shared, default_plan, same_plan=False)
