"""PyTorch's scaled_dot_product_attention at FLUX.2 [klein]'s 1024x1024 attention shape: the
ggml-free baselines beside tests/cuda/flash_attn_check.cu's timing (same TFLOPS count:
4 L^2 128 heads per call). Each backend PyTorch has on this GPU, f16 and bf16.

    python3 tests/cuda/flash_attn_sdpa.py [--tokens 4608] [--heads 24]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch_timing import time_call  # beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=4608)
    parser.add_argument("--heads", type=int, default=24)
    args = parser.parse_args()
    L, H, D = args.tokens, args.heads, 128
    flop = 4.0 * L * L * D * H
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v = (torch.randn(1, H, L, D, device="cuda", dtype=dtype) for _ in range(3))
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel(backend):
                    ms = time_call(lambda: F.scaled_dot_product_attention(q, k, v), reps=20)
            except RuntimeError as err:  # a backend this build or GPU lacks
                print(f"sdpa {str(dtype)[6:]:8s} {backend.name:20s} unavailable: {str(err).splitlines()[0][:80]}")
                continue
            print(f"sdpa {str(dtype)[6:]:8s} {backend.name:20s} L={L} heads {H}: {ms:.3f} ms per call, "
                  f"{flop / (ms * 1e-3) / 1e12:.1f} TFLOPS")


if __name__ == "__main__":
    main()
