"""RunLock: one run per output folder, refused while a live run holds it, taken over when its holder died.

Other processes are real subprocesses. They load utils/run_folder/lock.py by file path (it imports only the standard
library), so each starts in a fraction of a second instead of importing Lightning through utils.training.
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO_ROOT
from utils.run_folder import lock as run_lock
from utils.run_folder.lock import LOCK_FILENAME, RunFolderBusyError, RunLock

MODULE_PATH = str(REPO_ROOT / "utils/run_folder/lock.py")
LOAD_RUN_LOCK = """
import importlib.util, pathlib, sys, time
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1])
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
"""
# Holds the lock in argv[2] until killed.
HOLD = LOAD_RUN_LOCK + """
run_lock.RunLock(sys.argv[2]).acquire()
time.sleep(60)
"""
# Creates argv[5], waits for argv[3] to exist, tries the lock in argv[2]; the winner holds it until argv[4]
# exists. Exit code 0: took the lock; 3: RunFolderBusyError (its message on stdout).
RACE = LOAD_RUN_LOCK + """
go, stop = pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
pathlib.Path(sys.argv[5]).touch()
while not go.exists():
    time.sleep(0.001)
try:
    lock = run_lock.RunLock(sys.argv[2]).acquire()
except run_lock.RunFolderBusyError as e:
    print(e)
    sys.exit(3)
deadline = time.time() + 10
while not stop.exists() and time.time() < deadline:
    time.sleep(0.01)
lock.release()
"""
HOST = socket.gethostname()


@pytest.fixture
def spawn():
    """Starts `python -c code MODULE_PATH *args`; every process is killed at the end of the test."""
    procs = []

    def start(code, *args):
        proc = subprocess.Popen([sys.executable, "-c", code, MODULE_PATH, *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def wait_for(condition, what, timeout=5.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def dead_pid(spawn) -> int:
    proc = spawn("pass")
    proc.wait(timeout=5)
    return proc.pid


def write_lock(folder, pid, hostname=HOST, heartbeat_age=0.0):
    folder.mkdir(parents=True, exist_ok=True)
    heartbeat_at = time.time() - heartbeat_age
    record = {"pid": pid, "hostname": hostname, "started_at": heartbeat_at - 60, "heartbeat_at": heartbeat_at}
    (folder / LOCK_FILENAME).write_text(json.dumps(record))


def read_lock(folder) -> dict:
    return json.loads((folder / LOCK_FILENAME).read_text())


def test_lock_held_by_another_process_is_refused_naming_it(tmp_path, spawn):
    holder = spawn(HOLD, tmp_path / "run")
    lock_file = tmp_path / "run" / LOCK_FILENAME
    wait_for(lambda: lock_file.exists() and lock_file.stat().st_size > 0, "the holder to write its lock")

    with pytest.raises(RunFolderBusyError) as e:
        RunLock(tmp_path / "run").acquire()
    message = str(e.value)
    assert f"pid {holder.pid} on {HOST}" in message
    assert re.search(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, last heartbeat \d+ s ago", message)
    assert "Wait for it to finish, stop it, or choose another output_dir." in message
    assert read_lock(tmp_path / "run")["pid"] == holder.pid  # refused, not taken


def test_lock_of_a_dead_pid_on_this_host_is_taken_over(tmp_path, spawn, capsys):
    pid = dead_pid(spawn)
    write_lock(tmp_path, pid)

    with RunLock(tmp_path):
        assert read_lock(tmp_path)["pid"] == os.getpid()
    assert capsys.readouterr().out == (f"Taking over the run lock in {tmp_path}: "
                                       f"pid {pid} on {HOST} is no longer running.\n")


def test_lock_from_another_host_with_an_old_heartbeat_is_taken_over(tmp_path, capsys):
    write_lock(tmp_path, 4242, hostname="colab-old-runtime", heartbeat_age=run_lock.STALE_AFTER_S + 60)

    with RunLock(tmp_path):
        assert read_lock(tmp_path)["hostname"] == HOST
    assert capsys.readouterr().out == (f"Taking over the run lock in {tmp_path}: "
                                       "pid 4242 on colab-old-runtime last showed life 180 s ago.\n")


def test_lock_from_another_host_with_a_fresh_heartbeat_is_refused(tmp_path):
    write_lock(tmp_path, 4242, hostname="colab-other-runtime", heartbeat_age=5)

    with pytest.raises(RunFolderBusyError, match="pid 4242 on colab-other-runtime, started .*, last heartbeat 5 s ago"):
        RunLock(tmp_path).acquire()
    assert read_lock(tmp_path)["pid"] == 4242


@pytest.mark.parametrize("content", [b"", b'{"pid": 12', b"[]"], ids=["empty", "cut-off", "not-a-record"])
def test_torn_lock_file_is_taken_over(tmp_path, monkeypatch, capsys, content):
    monkeypatch.setattr(run_lock, "TORN_WAIT_S", 0.01)
    (tmp_path / LOCK_FILENAME).write_bytes(content)

    with RunLock(tmp_path):
        assert read_lock(tmp_path)["pid"] == os.getpid()
    assert "the lock file was empty or unreadable" in capsys.readouterr().out


def test_empty_lock_whose_writer_finishes_meanwhile_is_not_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "TORN_WAIT_S", 0.5)
    (tmp_path / LOCK_FILENAME).write_bytes(b"")  # another run between its create and its write
    writer = threading.Timer(0.05, write_lock, (tmp_path, 4242, "colab-other-runtime"))
    writer.start()

    with pytest.raises(RunFolderBusyError, match="pid 4242 on colab-other-runtime"):
        RunLock(tmp_path).acquire()
    writer.join()


def test_taking_over_never_removes_a_lock_written_since_it_was_judged_stale(tmp_path):
    # The interleaving a race test hits only now and then: we read a stale lock, another taker replaces it
    # with its own fresh lock, then we go to remove "the stale lock".
    write_lock(tmp_path, 4242, hostname="colab-old-runtime", heartbeat_age=1000)
    judged_stale = (tmp_path / LOCK_FILENAME).read_bytes()
    write_lock(tmp_path, 4343, hostname="colab-new-runtime")

    assert RunLock(tmp_path)._remove_stale(judged_stale) is False
    assert read_lock(tmp_path)["pid"] == 4343
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILENAME]


def test_lock_left_by_this_process_is_taken_over_unless_still_held(tmp_path, capsys):
    write_lock(tmp_path, os.getpid())  # a kernel's earlier cell that was interrupted without releasing
    with RunLock(tmp_path):
        assert f"pid {os.getpid()} on {HOST} is this process, which no longer holds it" in capsys.readouterr().out
        with pytest.raises(RunFolderBusyError, match="held by an earlier RunLock in this same process"):
            RunLock(tmp_path).acquire()


def test_release_removes_the_file_and_the_folder_can_be_locked_again(tmp_path):
    folder = tmp_path / "new" / "run"  # acquire creates it
    lock = RunLock(folder).acquire()
    assert read_lock(folder)["pid"] == os.getpid()
    lock.release()
    assert list(folder.iterdir()) == []
    lock.release()  # idempotent
    lock.acquire().release()  # the same object can lock again

    with RunLock(folder) as again:
        assert read_lock(folder)["started_at"] == again.record["started_at"]
    assert list(folder.iterdir()) == []


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = RunLock(tmp_path).acquire()
    write_lock(tmp_path, 4242, hostname="colab-other-runtime")  # another runtime took it over
    lock.release()
    assert read_lock(tmp_path)["pid"] == 4242


def test_heartbeat_thread_refreshes_the_heartbeat_until_release(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_INTERVAL_S", 0.02)
    threads_before = set(threading.enumerate())
    with RunLock(tmp_path):
        first = read_lock(tmp_path)
        wait_for(lambda: read_lock(tmp_path)["heartbeat_at"] > first["heartbeat_at"], "a heartbeat")
        later = read_lock(tmp_path)
        assert {k: later[k] for k in run_lock.IDENTITY} == {k: first[k] for k in run_lock.IDENTITY}
    assert not [t for t in set(threading.enumerate()) - threads_before if t.name == "run-lock-heartbeat"]
    assert list(tmp_path.iterdir()) == []  # no temp files left behind


def test_heartbeat_never_overwrites_a_lock_another_run_took_over(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_lock, "HEARTBEAT_INTERVAL_S", 0.2)
    with RunLock(tmp_path):
        write_lock(tmp_path, 4242, hostname="colab-other-runtime")  # well before the first beat
        wait_for(lambda: "no longer this run's" in capsys.readouterr().out, "the heartbeat's warning")
        assert read_lock(tmp_path)["pid"] == 4242
    assert read_lock(tmp_path)["pid"] == 4242


@pytest.mark.parametrize("round_", range(5))
def test_two_processes_taking_over_one_stale_lock_exactly_one_wins(tmp_path, spawn, round_):
    write_lock(tmp_path / "run", dead_pid(spawn))
    go, stop = tmp_path / "go", tmp_path / "stop"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    racers = [spawn(RACE, tmp_path / "run", go, stop, path) for path in ready]
    wait_for(lambda: all(path.exists() for path in ready), "both racers to start")
    go.touch()

    wait_for(lambda: any(p.poll() is not None for p in racers), "the loser to exit (did both take the lock?)")
    loser = next(p for p in racers if p.poll() is not None)
    winner = next(p for p in racers if p is not loser)
    assert loser.returncode == 3, loser.communicate()[0]
    assert read_lock(tmp_path / "run")["pid"] == winner.pid
    stop.touch()
    assert winner.wait(timeout=5) == 0
    assert f"pid {winner.pid} on {HOST}" in loser.communicate()[0]
