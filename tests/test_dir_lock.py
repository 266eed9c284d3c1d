"""The one-run lock of an output folder (:class:`repvgg_seg.dir_lock.WorkDirLock`).

Exclusive while its owner lives, released with it however it ends (``kill -9`` included),
never held by processes forked from it, and its owner record (pid, host, start, marker) says
who holds it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from repvgg_seg.dir_lock import LOCK_NAME, WorkDirBusyError, WorkDirLock


def test_lock_is_exclusive_and_released(tmp_path):
    with WorkDirLock(tmp_path) as held:
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["marker"] == held.marker
        with pytest.raises(
            WorkDirBusyError, match=rf"'{re.escape(str(tmp_path))}' .*pid {os.getpid()}"
        ):
            WorkDirLock(tmp_path).acquire()
        assert held.path.exists()
    assert not (tmp_path / LOCK_NAME).exists()
    with WorkDirLock(tmp_path) as again:
        assert again.path.exists()


def test_lock_is_not_held_by_processes_forked_from_its_owner(tmp_path):
    # A DataLoader worker is a forked child; were it to keep the lock, a training killed
    # with -9 would hold its work dir until the orphaned workers notice (about 10 s).
    script = (
        "import os, sys, time\n"
        "from repvgg_seg.work_dir import WorkDirLock\n"
        "WorkDirLock(sys.argv[1]).acquire()\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60); os._exit(0)\n"
        "print('locked', flush=True); time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout.readline().strip() == "locked"
        with pytest.raises(WorkDirBusyError):
            WorkDirLock(tmp_path).acquire()
        owner.kill()
        owner.wait()
        stale = WorkDirLock(tmp_path).acquire()  # at once: the child holds no lock
        assert stale is not None and stale.pid == owner.pid
    finally:
        owner.kill()
        subprocess.run(["pkill", "-9", "-P", str(owner.pid)], check=False)


def test_lock_held_after_its_owner_died_says_so(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = WorkDirLock(tmp_path)
    lock.acquire()
    record = {"pid": dead.pid, "host": socket.gethostname(), "started": "t"}
    os.ftruncate(lock._fd, 0)
    os.pwrite(lock._fd, json.dumps(record).encode(), 0)
    with pytest.raises(WorkDirBusyError, match=rf"Process {dead.pid} is no longer running"):
        WorkDirLock(tmp_path).acquire()
    lock.release()
