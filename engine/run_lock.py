"""The lock that gives a run folder one trainer at a time, across processes: fcntl.flock on
<run>/.lock, held for as long as a trainer trains and released by the OS when its process ends
however it ends (a killed run resumes with no cleanup). The holder writes its pid, host and start
time into the file, for the message that refuses a second trainer."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from engine.errors import UserError

LOCK_NAME = ".lock"  # the trainer's lock file inside the run folder
LOCK_WAIT_S = 1.0  # how long taking the lock retries: a probe (holder_of) holds it for microseconds


@dataclass(frozen=True)
class LockHolder:
    """The process that holds a run's lock, as it wrote itself into the lock file (any field None
    when the file could not be read, e.g. in the moment between its lock and its write)."""

    pid: int | None = None
    host: str | None = None
    started: str | None = None  # local time, ISO format, seconds

    def __str__(self) -> str:
        if self.pid is None:
            return "another process"
        text = f"process {self.pid}" + (f" on {self.host}" if self.host else "")
        return text + (f" (started {self.started.replace('T', ' ')})" if self.started else "")

    @classmethod
    def read(cls, fd: int) -> LockHolder:
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
            pid, host, started = data.get("pid"), data.get("host"), data.get("started")
            return cls(pid if type(pid) is int else None, host if isinstance(host, str) else None,
                       started if isinstance(started, str) else None)
        except (OSError, ValueError, AttributeError):
            return cls()


def _open_lock_file(path: Path, create: bool) -> int:
    """The lock file's descriptor, never through a symlink (a planted link cannot make the lock
    write elsewhere). With `create`, read-write (the trainer writes its name); without, read-only:
    a probe of another user's run (its .lock is 0644) must still see the lock. FileNotFoundError
    when it (or, with create, the folder) does not exist."""
    flags = (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o666)


def locked_message(path, holder: LockHolder) -> str:
    return (f"{path} is being trained by {holder}: one run folder takes one trainer at a time; "
            "wait until that training ends (or stop it there), then try again")


def take(folder: Path) -> int:
    """Take `folder`'s exclusive lock for this process; its descriptor (keep it open to hold the
    lock). UserError naming the holder when another trainer has it; the folder must exist."""
    path = folder / LOCK_NAME
    try:
        fd = _open_lock_file(path, create=True)
    except OSError as e:
        raise UserError(f"cannot open the lock file {path}: {e.strerror or e}") from e
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:  # perhaps only a probe; a trainer keeps it
                time.sleep(0.02)
                continue
            holder = LockHolder.read(fd)
            os.close(fd)
            raise UserError(locked_message(folder, holder)) from None
        except OSError as e:
            os.close(fd)
            raise UserError(f"cannot lock {path}: {e.strerror or e}") from e
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    except OSError:
        pass  # the lock holds without the note; the refusal then says "another process"
    return fd


def let_go(fd: int) -> None:
    """Release a lock taken by take()."""
    try:
        os.ftruncate(fd, 0)  # no stale name left behind
    except OSError:
        pass
    os.close(fd)  # closing the last descriptor drops the flock


def holder_of(folder: Path) -> LockHolder | None:
    """Who holds `folder`'s lock now, or None: a non-blocking probe (a shared lock taken and
    dropped at once)."""
    try:
        fd = _open_lock_file(folder / LOCK_NAME, create=False)
    except (OSError, ValueError):  # no lock file (never trained here, not a run, no path): nobody
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return LockHolder.read(fd)
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
