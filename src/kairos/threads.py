"""Thread settings shared by the torch code paths."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

_serving_threads: int | None = None  # set in serving processes (api/workers.py)


def limit_torch_threads(threads: int) -> None:
    """Give torch `threads` intra-op threads in this process: now if it is loaded, else
    when the first model is served (`apply_torch_limit`). Importing torch only to set
    this cost a serving process 2 s of start-up when no model was served."""
    global _serving_threads
    _serving_threads = threads
    if "torch" in sys.modules:
        apply_torch_limit()


def apply_torch_limit() -> None:
    if _serving_threads is None:
        return
    import torch

    if torch.get_num_threads() != _serving_threads:
        torch.set_num_threads(_serving_threads)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with `threads` intra-op threads, then restore: the setting is process-wide."""
    import torch

    previous = torch.get_num_threads()
    if previous != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if previous != threads:
            torch.set_num_threads(previous)
