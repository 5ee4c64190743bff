"""The background writer of stage one's cache: a group's entries are written on a thread while the next group
runs through the model, under the group's per-language locks."""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack

from filelock import FileLock

from neuronxa.stage_one.store import StateStore


def timed_writes(writes: list) -> float:
    """Run the cache writes of one group, its languages side by side (compressing is the work, and it releases
    the interpreter); return their seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(min(len(writes), os.cpu_count() or 1), 1)) as pool:
        for future in [pool.submit(write) for write in writes]:
            future.result()
    return time.perf_counter() - started


class GroupWriter:
    """Writes a group's cache entries on a background thread while the next group computes, holding the group's
    per-language locks until its entries are written; accounts each language's seconds (by its tokens)."""

    def __init__(self, store: StateStore, bar) -> None:
        self.store, self.bar = store, bar
        self.locks = store.lock_dir()
        self.locks.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        self.in_flight: list[tuple[Future, ExitStack, list[str], float]] = []
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuronxa-write")

    def lock(self, group: list[str]) -> ExitStack:
        """The group's locks, taken in one global order (overlapping groups cannot deadlock)."""
        held = ExitStack()
        try:
            for language in sorted(group):
                held.enter_context(FileLock(str(self.locks / f"{self.store.digest[:16]}-{language}.lock")))
        except BaseException:
            held.close()
            raise
        return held

    def submit(self, writes: list, held: ExitStack, *, languages: list[str], seconds: float) -> None:
        """Start writing a group (after the previous group's writes are done); ``seconds``: its forward pass's."""
        self.settle()
        self.in_flight.append((self.pool.submit(timed_writes, writes), held, languages, seconds))

    def settle(self) -> None:
        """Wait for the group being written, release its locks, and account its seconds."""
        if not self.in_flight:
            return
        future, held, group, compute_seconds = self.in_flight.pop()
        with held:
            elapsed = compute_seconds + future.result()
        tokens = {language: self.store.n_tokens_total(language) for language in group}
        for language in group:
            self.seconds[language] = elapsed * tokens[language] / max(sum(tokens.values()), 1)
        self.bar.update(len(group))

    def __enter__(self) -> GroupWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """On success, the last group is written; on an error, the write in progress finishes, then unlocks."""
        try:
            if kind is None:
                self.settle()
        finally:
            for future, held, _, _ in self.in_flight:
                future.exception()
                held.close()
            self.in_flight.clear()
            self.pool.shutdown(wait=True)
