"""The PyTorch baselines' timer (tests/cuda/conv2d_torch.py, tests/cuda/flash_attn_sdpa.py)."""

from __future__ import annotations

import torch


def time_call(fn, reps: int) -> float:
    """Milliseconds per call of fn on the current CUDA device, after three warm-up calls."""
    for _ in range(3):
        fn()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps
