"""Atomic writes: a file or folder is written under a staging name beside its target and moved into place only
when complete, so that a crash or Ctrl-C never leaves something that looks finished."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec
from fsspec.implementations.local import LocalFileSystem


def remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove a file or folder; already gone (or a failing disk) is not an error."""
    try:
        fs.rm(path, recursive=True)
    except OSError:
        pass


def move(fs: fsspec.AbstractFileSystem, source: str, target: str) -> None:
    """One atomic rename on a local disk; a recursive copy and delete elsewhere."""
    if isinstance(fs, LocalFileSystem):
        os.replace(source, target)
    else:
        fs.mv(source, target, recursive=True)


@contextmanager
def staged(target: str, fs: fsspec.AbstractFileSystem | None = None, staging_dir: str | None = None) -> Iterator[str]:
    """Yield a staging path to write ``target`` (a file or a folder) at; on success it replaces ``target``
    (an older one is moved aside, then removed), on any error it is removed and ``target`` is left as it was.
    ``staging_dir``: where the staging path goes (default: beside ``target``, on the same file system)."""
    fs = fs or fsspec.filesystem("file")
    parent, name = target.rstrip("/").rsplit("/", 1) if "/" in target.rstrip("/") else (".", target)
    staging_dir = staging_dir or parent
    fs.makedirs(staging_dir, exist_ok=True)
    staging = f"{staging_dir}/.{name}-{uuid.uuid4().hex}"
    try:
        yield staging
        if fs.exists(target):
            trash = f"{staging_dir}/.old-{name}-{uuid.uuid4().hex}"
            move(fs, target, trash)
            remove(fs, trash)
        move(fs, staging, target)
    except BaseException:
        remove(fs, staging)
        raise
