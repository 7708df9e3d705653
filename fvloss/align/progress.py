"""A dependency-free progress line for long loops (stderr; one line per 10% when not a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``Progress(total, "align")``; call :meth:`update` per item and :meth:`close` at the end."""

    def __init__(
        self, total: int, desc: str = "", enabled: bool = True, stream: TextIO | None = None
    ):
        self.total, self.desc, self.enabled = total, desc, enabled and total > 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done, self.start = 0, time.perf_counter()
        self._last_time, self._last_decile = 0.0, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self._last_time >= 0.2 or self.done >= self.total:
                self._last_time = now
                self.stream.write("\r" + self._line(now))
                self.stream.flush()
        elif self.done * 10 // self.total > self._last_decile:  # logs and CI: 10 lines at most
            self._last_decile = self.done * 10 // self.total
            self.stream.write(self._line(now) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100 * self.done / self.total
        return (
            f"{self.desc} {self.done}/{self.total} ({pct:3.0f}%) "
            f"{rate:6.1f} img/s, {elapsed:5.0f} s elapsed, eta {eta:4.0f} s"
        )
