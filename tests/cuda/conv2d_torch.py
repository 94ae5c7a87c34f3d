"""The FLUX.2 VAE decoder's convolutions at 1024x1024 through PyTorch: the baselines beside
tests/cuda/conv2d_check.cu's timing (same shapes, same TFLOPS count: 2 OC IC KH KW OH OW per call,
same weighting by how often one decode runs each shape).

    python3 tests/cuda/conv2d_torch.py

cudnn: F.conv2d in f16 with bias, NCHW (what diffusers' decoder runs). gemm: only the product an
im2col path multiplies, [OC, IC KH KW] x [IC KH KW, OH OW] in f16 through cuBLAS (ggml's MUL_MAT
after its IM2COL, without the im2col, the permuting copy and the bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch_timing import time_call  # beside this script

# (name, size, IC, OC, kernel, how many per decode), as in conv2d_check.cu
SHAPES = [
    ("post_quant_conv 1x1 32->32 @128", 128, 32, 32, 1, 1),
    ("conv_in 32->512 @128", 128, 32, 512, 3, 1),
    ("3x3 512->512 @128", 128, 512, 512, 3, 10),
    ("attn 1x1 512->512 @128", 128, 512, 512, 1, 4),
    ("3x3 512->512 @256", 256, 512, 512, 3, 7),
    ("3x3 512->512 @512 (upsample)", 512, 512, 512, 3, 1),
    ("3x3 512->256 @512", 512, 512, 256, 3, 1),
    ("1x1 512->256 @512 (shortcut)", 512, 512, 256, 1, 1),
    ("3x3 256->256 @512", 512, 256, 256, 3, 5),
    ("3x3 256->256 @1024 (upsample)", 1024, 256, 256, 3, 1),
    ("3x3 256->128 @1024", 1024, 256, 128, 3, 1),
    ("1x1 256->128 @1024 (shortcut)", 1024, 256, 128, 1, 1),
    ("3x3 128->128 @1024", 1024, 128, 128, 3, 5),
    ("conv_out 128->3 @1024", 1024, 128, 3, 3, 1),
]


def main() -> None:
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    totals = {"cudnn": 0.0, "gemm": 0.0}
    total_flop = 0.0
    for name, size, ic, oc, k, count in SHAPES:
        x = torch.rand(1, ic, size, size, device="cuda", dtype=torch.float16)
        w = torch.randn(oc, ic, k, k, device="cuda", dtype=torch.float16) / (ic * k * k) ** 0.5
        b = torch.randn(oc, device="cuda", dtype=torch.float16)
        flop = 2.0 * oc * ic * k * k * size * size
        total_flop += flop * count
        ms = time_call(lambda: F.conv2d(x, w, b, padding=k // 2), reps=10)
        totals["cudnn"] += ms * count
        line = f"{name:34s} cudnn {ms:8.3f} ms {flop / (ms * 1e-3) / 1e12:6.1f} TFLOPS"
        cols = torch.rand(ic * k * k, size * size, device="cuda", dtype=torch.float16)
        w2 = w.reshape(oc, -1)
        ms = time_call(lambda: torch.mm(w2, cols), reps=10)
        totals["gemm"] += ms * count
        print(f"{line} | gemm {ms:8.3f} ms {flop / (ms * 1e-3) / 1e12:6.1f} TFLOPS", flush=True)
        del x, cols
    for key, ms in totals.items():
        print(f"decoder convolutions, one 1024x1024 decode, {key}: {ms:.2f} ms, {total_flop * 1e-12:.2f} TFLOP, "
              f"{total_flop / (ms * 1e-3) / 1e12:.1f} TFLOPS")


if __name__ == "__main__":
    main()
