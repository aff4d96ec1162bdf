"""Thread settings for torch around many small tensor ops (stacking, merging, small SVDs)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the duration.

    Stacking is thousands of tiny tensor ops; on a busy machine OpenMP's thread hand-offs made them ~8x slower
    (measured: 17 s vs 2 s for a SmolLM2-sized pair under load), and one thread is as fast when idle.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


__all__ = ["single_thread"]
