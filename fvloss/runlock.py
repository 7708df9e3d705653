"""One training process per run folder: an OS file lock, not a check-then-write race.

Two processes started on the same ``--run-dir`` (or two ``--resume`` of one run) would
interleave their checkpoints and metrics. :class:`RunLock` holds ``RUN/.lock`` with
``flock`` for as long as the run trains; the second process is refused at once with the
holder's pid. The OS drops the lock when the holder dies, so a killed run never leaves a stale
lock behind.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are then not locked
    fcntl = None

__all__ = ["RunLock", "RunLocked"]


class RunLocked(OSError):
    """Another process is training in this run folder."""


class RunLock:
    """``with RunLock(run_dir): ...`` or ``lock = RunLock(run_dir).acquire()`` / ``release()``."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunLocked(
                    f"{self.path.parent}: another process (pid {holder}) is training in this "
                    "run folder; wait for it, or pick another --run-dir"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
