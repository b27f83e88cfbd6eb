"""What the person at the terminal sees during a run: our own lines only.

While the experts run, the process's stdout and stderr (file descriptors 1 and 2, so C++ and child
output too: Ray's start-up notices, execution plans, worker warnings, library chatter) go to the run's
log file, whose path is printed once; the terminal gets the progress line and, after the run, the
summary. Errors are unaffected: the descriptors are restored before any exception leaves the block.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def quiet(log_path: Path):
    """Send fds 1 and 2 to `log_path` for the block; yields a stream to the real terminal."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    with open(log_path, "a", encoding="utf-8") as log:
        try:
            for fd in (1, 2):
                os.dup2(log.fileno(), fd)
            yield terminal
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            terminal.close()


class Progress:
    """One live line: images done, images/s, ETA, per-expert counts, errors. On a terminal it redraws
    in place; in a log or pipe it writes a line at each quarter of the work (and at most once a minute
    otherwise), so a long run stays a few lines."""

    def __init__(self, total: int, experts: list[str], stream=sys.stderr, estimate_s: float | None = None):
        self.total, self.experts, self.stream = total, experts, stream
        self.done = 0
        self.counts: Counter = Counter()
        self.start = time.perf_counter()
        self.last = 0.0
        self.next_quarter = 1
        self.estimate_s = estimate_s
        self.tty = stream.isatty()

    def update(self, row: dict) -> None:
        self.done += 1
        for name in self.experts:
            if name in row["todo"].split(",") and not row["decode_reason"]:
                self.counts[name if not row[f"{name}_error"] else "errors"] += 1
        if row["decode_reason"]:
            self.counts["errors"] += 1
        now = time.perf_counter()
        if self.tty:
            due = now - self.last > 0.5 or self.done == self.total
        else:
            quarter = self.done * 4 >= self.next_quarter * self.total
            due = quarter or now - self.last > 60
            while self.done * 4 >= self.next_quarter * self.total and self.next_quarter <= 4:
                self.next_quarter += 1
        if due:
            self.last = now
            self.stream.write(("\r" if self.tty else "") + self.line() + ("" if self.tty else "\n"))
            self.stream.flush()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        per = " ".join(f"{n}={self.counts[n]}" for n in self.experts)
        width = 20
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        return (
            f"[annotate] [{bar}] {self.done}/{self.total} images  {rate:.2f} img/s  ETA {eta:4.0f}s  "
            f"{per}  errors={self.counts['errors']}"
        )

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
