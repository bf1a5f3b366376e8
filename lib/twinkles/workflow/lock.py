"""One driver per run directory: the run lock.

``twinkles run`` takes the lock (``runs/<name>/run.lock``) before it touches anything in the
run directory and holds it until it ends. The lock is an exclusive ``flock`` on that file, which
the kernel releases when the holding process dies, however it dies; the file's content names
the holder (host, pid, the pid's start time, when it started, the command). A second driver
is refused at once with the holder's name. The ``flock`` of a driver that died (killed, or
its machine rebooted) is gone with it, so its lock file is taken over; what it said of its
holder is kept as ``taken_over``, and the pid's start time recorded with it tells a dead
driver from a pid reused since.

On a shared file system (where Slurm runs) ``flock`` is honoured between hosts by NFSv4 and
Lustre (mounted with ``flock``); there a driver that died on another host holds the lock
until that client's lease expires. ``twinkles status``, ``report`` and ``note`` only read and
never take the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from twinkles.errors import TwinklesError

__all__ = ["RunLock", "RunLockedError", "process_start_time"]


class RunLockedError(TwinklesError):
    """Another driver holds the run directory."""


def process_start_time(pid: int) -> int | None:
    """When a process started (clock ticks since boot, Linux), or None if it does not exist.

    With the pid it identifies a process even after the pid is reused.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat(5); the two before ")" are pid and comm
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class RunLock:
    """The lock of the run directory ``run_dir``; a context manager.

    Parameters
    ----------
    run_dir : Path
        The run directory (created if absent: the lock is the first thing in it).
    """

    run_dir: Path

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.path = self.run_dir / "run.lock"
        self._fd: int | None = None

    def holder(self) -> dict | None:
        """What the lock file says of its holder (None if there is none)."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def describe(self, info: dict | None) -> str:
        """Who holds the lock, from its recorded info: pid, host, start time and command."""
        if not info:
            return "another process"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("start", 0)))
        return (
            f"pid {info.get('pid')} on {info.get('host')} since {started} "
            f"({info.get('command', '?')})"
        )

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunLockedError` naming the holder."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise RunLockedError(
                f"{self.run_dir} is being run by {self.describe(self.holder())}; wait for it "
                f"to end or stop it (twinkles status and report read it meanwhile)"
            ) from None
        # the kernel dropped the flock of a driver that ended or died: what the file still says
        # of it is the run being taken over
        previous = self.holder()
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": process_start_time(os.getpid()),
            "start": time.time(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        self.taken_over = previous

    def release(self) -> None:
        """Give the lock up (the file stays, empty: no holder)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
