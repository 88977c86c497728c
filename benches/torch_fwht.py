#!/usr/bin/env python3
"""PyTorch baselines for the CUDA Walsh-Hadamard kernels (run on the GPU machine; a benchmark, not a test).

    python3 benches/torch_fwht.py            # prints a table; same sizes as examples/gpu_check.rs

Measures, with CUDA events, on the same GPU as gpu_check:
  * a device-to-device copy of 64 MiB (torch's copy_), the memory-bandwidth floor;
  * a bf16 matmul (16384 x 4096) @ H_4096 through cuBLAS (torch.matmul), the dense alternative;
  * a plain-PyTorch FWHT (log2 n reshaped butterflies, f32 arithmetic), what a user gets without a kernel.
"""
import math

import torch


def time_ms(fn, reps=5, iters=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / iters)
    return best


def hadamard(n, dtype, device):
    i = torch.arange(n, device=device)
    bits = torch.bitwise_and(i[:, None], i[None, :])
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).to(dtype)


def torch_fwht(x, scale):
    """log2(n) butterfly passes over a reshaped view, in f32, rounded once at the end."""
    shape, n = x.shape, x.shape[-1]
    y = x.float().reshape(-1, n)
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return (y.reshape(shape) * scale).to(x.dtype)


def main():
    dev = torch.device("cuda")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    nbytes = 64 << 20
    src = torch.randn(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    copy = time_ms(lambda: dst.copy_(src))
    print(f"copy 64 MiB: {copy * 1e3:.1f} us = {2 * nbytes / copy / 1e9:.2f} TB/s (read + write)")

    m, n = 16384, 4096
    x = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    h = hadamard(n, torch.bfloat16, dev)
    mm = time_ms(lambda: x @ h)
    print(f"cuBLAS bf16 matmul ({m}x{n}) @ H_{n}: {mm * 1e3:.1f} us = {2 * m * n * n / mm / 1e9:.0f} TFLOP/s")
    ref = (x.float() @ h.float()) / 64
    got = torch_fwht(x, 1 / 64).float()
    rel = ((got - ref).norm() / ref.norm()).item()
    tf = time_ms(lambda: torch_fwht(x, 1 / 64), reps=3, iters=5)
    print(f"plain-PyTorch FWHT bf16 ({m}x{n}): {tf * 1e3:.1f} us (rel err vs dense {rel:.1e})")

    print("\n| dtype | n | rows | torch fwht us | copy us | ratio |")
    print("|---|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        numel = nbytes // torch.tensor([], dtype=dtype).element_size()
        xx = torch.randn(numel, device=dev).to(dtype)
        for log_n in (8, 12, 15, 20):
            nn = 1 << log_n
            xr = xx.view(-1, nn)
            t = time_ms(lambda: torch_fwht(xr, 1 / math.sqrt(nn)), reps=2, iters=3)
            print(f"| {str(dtype)[6:]} | 2^{log_n} | {numel // nn} | {t * 1e3:.1f} | {copy * 1e3:.1f} | {t / copy:.1f} |")


if __name__ == "__main__":
    main()
