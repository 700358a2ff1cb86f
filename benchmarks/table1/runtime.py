"""What every phase shares while it runs: the stop flag, the command's time budget and the log line."""
from __future__ import annotations

import threading
import time

#: Set when the command is interrupted: every method's deployment stops and cleans up its processes.
STOP = threading.Event()


class Deadline:
    """A command's time budget (0 = none): phases stop starting new work once it passed."""

    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s if budget_s > 0 else float("inf")

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.end

    def left(self) -> float:
        return self.end - time.monotonic()


def log(msg: str) -> None:
    print(f"[table1 {time.strftime('%H:%M:%S')}] {msg}", flush=True)
