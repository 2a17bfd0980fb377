"""Writing the run's files so that a kill at any instant leaves either the old file or the new one.

Every file the kit keeps (checkpoints, config, tokenizer, user model copy, Gist download, export) is
written to a temp file in the *same folder*, flushed, fsynced and renamed over the target. A rename
within one folder is atomic on local disks and on Google Drive's mount; a move from the system temp
folder to Drive is a copy that a kill can tear. Temp files of a killed write carry TEMP_MARK in
their name and are removed by `remove_temp_files` when the next run starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import IO, Iterator

from utils.errors import KitError, MissingFileError

TEMP_MARK = ".kit-tmp"  # in the name of every temp file or folder the kit writes


def temp_path_for(path: Path) -> Path:
    """A hidden sibling of path, unique to this process: `.NAME.PID.kit-tmp`."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_MARK}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; on a clean exit it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path, "w") as f:
        f.write(text)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    with open(src, "rb") as s, atomic_writer(dst, "wb") as d:
        shutil.copyfileobj(s, d)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Fill a temp folder beside `path`; on a clean exit it becomes `path`.

    replace=False refuses an existing `path`. replace=True swaps it out: the old folder is renamed to
    `.NAME.replaced-PID` (kept, not a temp file, should a kill land between the two renames) and
    deleted once the new one is in place.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} exists; the kit never writes a folder over an existing one")
    tmp = temp_path_for(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        old = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (FUSE mounts) refuse fsync on a directory; the rename stands
    finally:
        os.close(fd)


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files and folders that killed writes left anywhere under folder; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.rglob(f"*{TEMP_MARK}"))
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


class OutputDirError(KitError, OSError):
    """output_dir cannot hold a run: it is a file, or cannot be created or written."""


def existing_path(path: str | os.PathLike, what: str, field: str, hint: str, error=None) -> Path:
    """`path` with ~ expanded; an error naming the setting when nothing is there (MissingFileError unless given)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise (error or MissingFileError)(f"{what} not found: {path}. Check {field} ({hint}).")
    return path


def make_output_dir(path: str | os.PathLike, field: str = "output_dir") -> Path:
    """Create the run folder, or say in one line which setting names a place that cannot be one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{field}={str(path)!r} is a file, not a folder; choose a folder for the run "
                             "(a new name, or an existing run's folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"{field}={str(path)!r} cannot be created ({e.strerror}); choose a folder you can "
                             "write to, e.g. runs/my-run") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputDirError(f"{field}={str(path)!r} is not writable; choose a folder you can write to, "
                             "e.g. runs/my-run")
    return path
