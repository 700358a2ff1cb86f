"""torch's intra-op thread count for a block of code, restored after it.

Two places choose a count of their own: a single act() on the CPU (a chain of tiny ops, where intra-op
threads only add synchronization: measured on a busy 2-core box, 14 ms with 1 thread, 90-500 ms
with 2) and CPU training (TrainConfig.cpu_threads). The setting is process-wide, so both put back
what they found.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def cpu_threads(n: int | None, device: torch.device | str) -> Iterator[None]:
    """Run the block with `n` intra-op threads when `device` is the CPU (None or 0: keep the current count).

    On exit the count found on entry is restored whenever it differs (also when the block changed it).
    """
    before = torch.get_num_threads()
    if n and torch.device(device).type == "cpu" and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
