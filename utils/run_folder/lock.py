"""One training run per output folder: `with RunLock(output_dir): train(...)`.

The lock is output_dir/.run.lock, a small JSON record (pid, hostname, started_at, heartbeat_at in epoch
seconds). A second run into a held folder gets RunFolderBusyError instead of interleaving its checkpoints
with the first one's; a lock left by a run that died (a killed process, a Colab runtime gone while the folder
lives on Google Drive) is taken over with a one-line note. Standard library only: cheap before Lightning loads.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

from utils.errors import KitError
from utils.files import TEMP_MARK

LOCK_FILENAME = ".run.lock"
HEARTBEAT_INTERVAL_S = 30.0  # how often a held lock rewrites heartbeat_at
STALE_AFTER_S = 120.0  # another host's lock whose heartbeat is older than this is dead (4 missed beats)
TORN_WAIT_S = 0.5  # an unreadable lock may be one whose writer is between create and write: give it this long
MAX_ATTEMPTS = 5  # stale locks taken over in a row before giving up; more means others keep replacing it

IDENTITY = ("pid", "hostname", "started_at")  # what makes a lock record one run's
_held_here: set[str] = set()  # lock paths this process holds now: our pid in a lock we don't hold is a leftover


class RunFolderBusyError(KitError, RuntimeError):
    """Another live training run holds the output folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 sends nothing, it only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def _write_new(path: Path, data: bytes) -> None:
    """Create path, failing with FileExistsError if it exists, and write data through to the disk."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _parse(raw: bytes) -> dict | None:
    """The holder's record, or None for a file torn by a kill (empty, cut off) or not a lock record."""
    try:
        record = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return None
    fields_ok = (isinstance(record, dict) and isinstance(record.get("pid"), int) and record["pid"] > 0
                 and isinstance(record.get("hostname"), str)
                 and all(isinstance(record.get(k), (int, float)) for k in ("started_at", "heartbeat_at")))
    return record if fields_ok else None


def live_holder(output_dir: str | Path) -> dict | None:
    """The lock record of the run training in output_dir now, or None (no lock, or one a dead run left)."""
    try:
        holder = _parse((Path(output_dir) / LOCK_FILENAME).read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None
    if holder is None:
        return None
    if holder["hostname"] != socket.gethostname():  # another machine's run: its heartbeat says whether it lives
        return holder if time.time() - holder["heartbeat_at"] <= STALE_AFTER_S else None
    return holder if _pid_alive(holder["pid"]) else None


class RunLock:
    """Holds output_dir/.run.lock while a run trains: `with RunLock(d):` or acquire() ... release()."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILENAME
        self.record: dict | None = None  # our lock record while held
        self._key = str(self.path.resolve())  # one folder reached by two spellings is one lock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunFolderBusyError if a live run holds it; a dead run's lock is taken over."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(MAX_ATTEMPTS):
            now = time.time()
            record = {"pid": os.getpid(), "hostname": socket.gethostname(), "started_at": now, "heartbeat_at": now}
            try:
                _write_new(self.path, json.dumps(record).encode())
            except FileExistsError:
                pass
            else:
                self._start(record)
                return self
            try:
                raw, holder = self._read_holder()
            except FileNotFoundError:  # released or moved aside since our create: try again
                continue
            reason = self._stale_reason(holder)
            if reason is None:
                raise RunFolderBusyError(self._busy_message(holder))
            if self._remove_stale(raw):
                print(f"Taking over the run lock in {self.output_dir}: {reason}.")
        raise RunFolderBusyError(f"Could not take the run lock {self.path}: other processes kept replacing it. "
                                 "Stop the other runs writing to this folder, or choose another output_dir.")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours; calling it again does nothing."""
        if self.record is None:
            return
        self._stop.set()
        self._thread.join()  # so no heartbeat rewrites the file after we remove it
        _held_here.discard(self._key)
        if self._still_ours():
            self.path.unlink(missing_ok=True)
        self.record = None

    def _start(self, record: dict) -> None:
        self.record = record
        _held_here.add(self._key)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _read_holder(self) -> tuple[bytes, dict | None]:
        """The lock's bytes and record; an unreadable one gets TORN_WAIT_S for its writer to finish it."""
        deadline = time.time() + TORN_WAIT_S
        while True:
            raw = self.path.read_bytes()
            holder = _parse(raw)
            if holder is not None or time.time() > deadline:
                return raw, holder
            time.sleep(0.01)

    def _stale_reason(self, holder: dict | None) -> str | None:
        """Why the holder is dead, or None if it may be alive."""
        if holder is None:
            return "the lock file was empty or unreadable, left by a run killed while writing it"
        who = f"pid {holder['pid']} on {holder['hostname']}"
        if holder["hostname"] != socket.gethostname():  # can't see its processes: trust its heartbeat
            age = time.time() - holder["heartbeat_at"]
            return f"{who} last showed life {age:.0f} s ago" if age > STALE_AFTER_S else None
        if holder["pid"] == os.getpid():  # a notebook kernel re-running a cell after an interrupted one
            return None if self._key in _held_here else f"{who} is this process, which no longer holds it"
        return None if _pid_alive(holder["pid"]) else f"{who} is no longer running"

    def _busy_message(self, holder: dict) -> str:
        started = datetime.fromtimestamp(holder["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
        age = max(0.0, time.time() - holder["heartbeat_at"])
        who = f"pid {holder['pid']} on {holder['hostname']}, started {started}, last heartbeat {age:.0f} s ago"
        if holder["pid"] == os.getpid() and holder["hostname"] == socket.gethostname():
            return (f"{self.output_dir} is held by an earlier RunLock in this same process ({who}). "
                    "Release that lock first, or choose another output_dir.")
        return (f"{self.output_dir} is in use by another training run ({who}). "
                "Wait for it to finish, stop it, or choose another output_dir.")

    def _remove_stale(self, raw: bytes) -> bool:
        """Remove the lock whose bytes we judged stale, and only that one: an unlink could delete a fresh lock
        another taker created since we read. Rename is atomic, so of several takers exactly one moves any given
        file; if the one we moved is not the one we judged, it is someone's new lock and goes back.
        """
        aside = self.path.with_name(f"{LOCK_FILENAME}.stale.{os.getpid()}.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another taker moved it first
            return False
        if aside.read_bytes() == raw:
            aside.unlink()
            return True
        os.rename(aside, self.path)
        return False

    def _still_ours(self) -> bool:
        try:
            holder = _parse(self.path.read_bytes())
        except FileNotFoundError:
            return False
        return holder is not None and all(holder[k] == self.record[k] for k in IDENTITY)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            if not self._still_ours():  # never overwrite a lock another run took over
                print(f"Warning: the run lock {self.path} is no longer this run's; another run may write here.")
                return
            record = {**self.record, "heartbeat_at": time.time()}
            tmp = self.path.with_name(f"{LOCK_FILENAME}.{os.getpid()}.{uuid.uuid4().hex}{TEMP_MARK}")  # see utils.files
            try:
                _write_new(tmp, json.dumps(record).encode())
                os.replace(tmp, self.path)  # readers see the old record or the new one, never half of one
            except OSError as e:  # a Drive hiccup: a missed beat is harmless, a dead heartbeat thread is not
                print(f"Warning: could not refresh the heartbeat of {self.path}: {e}")
