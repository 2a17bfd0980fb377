"""utils.files: a write that fails half-way leaves the old file or folder, and its temp files are found later."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from utils.files import TEMP_MARK, atomic_folder, atomic_write_text, atomic_writer, remove_temp_files


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(path, "w") as f:
            f.write("new, half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["config.json"]


def test_a_killed_writer_leaves_the_old_file_and_a_temp_file_the_next_start_removes(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_write_text(path, "old")
    code = ("import os, sys; from utils.files import atomic_writer\n"
            "with atomic_writer(sys.argv[1]) as f:\n    f.write(b'new, half'); f.flush(); os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code, str(path)]).returncode == 9  # no cleanup ran
    leftovers = [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]
    assert path.read_text() == "old" and len(leftovers) == 1 and leftovers[0].parent == path.parent
    assert remove_temp_files(tmp_path) == leftovers and sorted(os.listdir(tmp_path)) == ["last.ckpt"]


def test_an_atomic_folder_replaces_the_old_one_only_when_complete(tmp_path):
    folder = tmp_path / "export"
    with atomic_folder(folder) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(folder, replace=True) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("failed half-way")
    assert (folder / "a.txt").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["export"]
    with atomic_folder(folder, replace=True) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(os.listdir(folder)) == ["b.txt"] and sorted(os.listdir(tmp_path)) == ["export"]
    with pytest.raises(FileExistsError):
        with atomic_folder(folder):
            pass
