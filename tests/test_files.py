"""Atomic writes: a target appears whole or not at all, and an older one survives a failed rewrite."""

import fsspec
import pytest

from neuronxa.files import staged


def test_a_staged_folder_replaces_its_target_only_when_complete(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged(str(target)) as staging:
            (tmp_path / staging.rsplit("/", 1)[-1]).mkdir()
            (tmp_path / staging.rsplit("/", 1)[-1] / "half.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert [p.name for p in target.iterdir()] == ["old.txt"]          # the old one survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]     # nothing staged is left
    with staged(str(target)) as staging:
        fsspec.filesystem("file").makedirs(staging)
        (tmp_path / staging.rsplit("/", 1)[-1] / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_staged_file_on_another_file_system(tmp_path):
    fs = fsspec.filesystem("memory")
    with staged("/out/results.csv", fs) as staging, fs.open(staging, "w") as file:
        file.write("a,b\n")
    assert fs.cat("/out/results.csv") == b"a,b\n" and fs.ls("/out", detail=False) == ["/out/results.csv"]
