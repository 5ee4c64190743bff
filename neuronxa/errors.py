"""The exception types that the command line turns into one line instead of a traceback, and the checks of a
count option and of a local path the tool is about to create."""

from __future__ import annotations

import os
from pathlib import Path


class NeuronXAError(Exception):
    """A problem with the user's input or environment: the message says what, where, and what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying one line that says what was kept and how to go on."""


def check_whole(value: object, option: str, minimum: int, meaning: str = "") -> None:
    """Fail with one line unless ``value`` is a whole number (not a bool) of at least ``minimum``; ``meaning``
    says why, or what null means, after the rule."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NeuronXAError(f"{option} must be a whole number of at least {minimum}{meaning}, not {value!r}")


def check_creatable(path: str | Path, option: str) -> None:
    """Fail with one line when the folder ``path`` cannot be created or written in: a file stands where a folder
    must go, or the nearest existing folder is read-only. ``option`` names the setting to change."""
    path = Path(path).absolute()
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir():
        raise NeuronXAError(f"{option}: {path} cannot be created, {existing} is a file: point {option} elsewhere")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NeuronXAError(f"{option}: {existing} is not writable: point {option} at a folder you can write")
