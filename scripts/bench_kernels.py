"""Throughput of the native matmul kernels: giga-weights per second (rows * cols * n / time) per format x
variant x threads x batch n x shape. A benchmark, not a test: run it on a quiet machine and say how quiet it
was when you quote it (each figure is the best of --repeats timed loops of ~--seconds each).

    PYTHONPATH=$PWD python scripts/bench_kernels.py                         # priority formats, best variant
    PYTHONPATH=$PWD python scripts/bench_kernels.py --formats Q4_0 --variants all --threads 1 2 --torch
"""

from __future__ import annotations

import argparse
import time

import torch

from llamakit.gguf.constants import GGMLType
from llamakit.kernels.native import NativeKernel, build
from llamakit.quants import get_codec

PRIORITY = ["Q4_0", "Q8_0", "Q4_1", "Q4_K", "Q6_K", "F16", "F32"]
OTHERS = ["Q5_0", "Q5_1", "Q5_K", "Q3_K", "Q2_K", "IQ4_NL", "BF16"]
SHAPES = ["2048x2048", "5632x2048", "2048x5632", "576x576", "1536x576", "49152x576"]


def file_bytes(t: GGMLType, rows: int, cols: int) -> torch.Tensor:
    """Weights in the file's format, quantized from a gaussian (random blocks for IQ4_NL: its quantizer is slow)."""
    codec = get_codec(t)
    gen = torch.Generator().manual_seed(0)
    if t == GGMLType.IQ4_NL:
        b = torch.randint(0, 256, (rows * cols // 32, 18), dtype=torch.uint8, generator=gen)
        b[:, :2] = torch.tensor([0x00, 0x24], dtype=torch.uint8)  # d = 2^-6
        return b.reshape(rows, -1)
    out = []
    for r in range(0, rows, 4096):  # bounded float temporaries for the 49152-row matrix
        out.append(codec.quantize(torch.randn(min(4096, rows - r), cols, generator=gen)))
    return torch.cat(out)


def gws(fn, weights: float, seconds: float, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(seconds / once))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return weights / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--formats", nargs="+", default=PRIORITY, help=f"ggml type names, or 'all' ({PRIORITY + OTHERS})")
    ap.add_argument("--variants", nargs="+", default=None, help="scalar/avx2/avx512 or 'all' (default: the best)")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--n", nargs="+", type=int, default=[1, 4, 16, 128], help="activation rows (batch)")
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="ROWSxCOLS (rows = output features)")
    ap.add_argument("--seconds", type=float, default=0.2, help="per timed loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch", action="store_true", help="also time llamakit's torch kernel (the current engine)")
    a = ap.parse_args()
    formats = PRIORITY + OTHERS if a.formats == ["all"] else a.formats
    variants = build.cpu_variants() if a.variants == ["all"] else a.variants or build.cpu_variants()[:1]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads; GW/s = rows*cols*n / time / 1e9")
    print(f"{'format':7s} {'variant':7s} {'thr':>3s} {'shape':>10s} " + " ".join(f"{'n=' + str(n):>8s}" for n in a.n))
    for name in formats:
        t = GGMLType[name]
        for shape in a.shapes:
            rows, cols = map(int, shape.split("x"))
            block = get_codec(t).block_size
            if cols % block:
                print(f"{name:7s} {'':7s} {'':>3s} {shape:>10s}   (cols not a multiple of {block})")
                continue
            wb = file_bytes(t, rows, cols)
            for v in variants:
                k = NativeKernel(t, variant=v)
                wp = k.prepare(wb)
                for th in a.threads:
                    k.set_threads(th)
                    row = []
                    for n in a.n:
                        x = torch.randn(n, cols)
                        out = torch.empty(n, rows)
                        row.append(gws(lambda: k.linear(x, wp, cols, out=out), rows * cols * n, a.seconds, a.repeats))
                    print(f"{name:7s} {v:7s} {th:3d} {shape:>10s} " + " ".join(f"{g:8.1f}" for g in row), flush=True)
                k.set_threads(1)
            if a.torch:
                from llamakit.model.kernels import kernel_for

                tk = kernel_for(t)
                for th in a.threads:
                    torch.set_num_threads(th)
                    row = [gws(lambda: tk.linear(torch.randn(n, cols), wb, cols), rows * cols * n, a.seconds,
                               a.repeats) for n in a.n]
                    print(f"{name:7s} {'torch':7s} {th:3d} {shape:>10s} " + " ".join(f"{g:8.1f}" for g in row),
                          flush=True)


if __name__ == "__main__":
    main()
