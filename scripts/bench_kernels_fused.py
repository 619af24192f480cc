"""Microbenchmark of the one-call native block (llamakit/kernels/fused.py): microseconds per block call.

    python scripts/bench_kernels_fused.py                      # SmolLM2 (Q4_1, Q8_0) and TinyLlama dims, T=1
    python scripts/bench_kernels_fused.py --types Q4_0 --threads 1 --ctx 256 --iters 2000

Weights are random (64 distinct rows, tiled), quantized with llamakit's codecs and prepared by the library. Each row: the time of a
Python-level call (FusedBlock.__call__), the share of it spent in the 7 lk_matmul calls and in the rest
(norms, rope, cache stores, attention over `--ctx` filled slots, SwiGLU, residuals; measured in C), and the
bare ctypes+Python overhead of __call__ (CPU time of a T=0 call). On a loaded machine the wall-clock columns
are inflated by waiting for a core; the last column (process CPU time per call, all threads) is steadier. On a shared machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llamakit.gguf.constants import GGMLType  # noqa: E402
from llamakit.kernels import fused  # noqa: E402
from llamakit.kernels.fused import FusedBlock  # noqa: E402
from llamakit.kernels.native import NativeKernel  # noqa: E402
from llamakit.quants import get_codec  # noqa: E402

DIMS = {
    "smollm2": dict(n_embd=576, n_head=9, n_head_kv=3, head_dim=64, n_ff=1536, n_rot=64, eps=1e-5),
    "tinyllama": dict(n_embd=2048, n_head=32, n_head_kv=4, head_dim=64, n_ff=5632, n_rot=64, eps=1e-5),
}


def make_block(dims: dict, gtype: GGMLType, n_ctx: int, variant: str | None) -> FusedBlock:
    g = torch.Generator().manual_seed(0)
    e, nq, nkv, ff = dims["n_embd"], dims["n_head"] * dims["head_dim"], dims["n_head_kv"] * dims["head_dim"], dims["n_ff"]
    shapes = {"attn_q": (nq, e), "attn_k": (nkv, e), "attn_v": (nkv, e), "attn_output": (e, nq),
              "ffn_gate": (ff, e), "ffn_up": (ff, e), "ffn_down": (e, ff)}
    codec, kernel = get_codec(gtype), NativeKernel(gtype, variant)
    linears: dict = {}
    for name, (rows, cols) in shapes.items():
        # 64 random rows quantized (llamakit's quantizers are slow on 11M weights), tiled to `rows`
        raw = codec.quantize(torch.randn(64, cols, generator=g) * 0.05).repeat(rows // 64, 1).contiguous()
        linears[name] = (int(gtype), kernel.prepare(raw.view(rows, -1)), rows, cols, None)
    linears["attn_norm"] = torch.ones(e)
    linears["ffn_norm"] = torch.ones(e)
    shape = (1, dims["n_head_kv"], n_ctx + 1, dims["head_dim"])
    kc, vc = torch.randn(shape, generator=g).half(), torch.randn(shape, generator=g).half()
    return FusedBlock(dims, linears, kc, vc, variant=variant)


def bench(fb: FusedBlock, dims: dict, n_ctx: int, iters: int) -> tuple[float, float, float, float]:
    """(us per __call__, us in matmuls per call, us in C per call, CPU us per call over all threads) for
    T=1 at position n_ctx. The CPU time is the steadier number on a loaded machine."""
    x0 = torch.randn(1, dims["n_embd"]) * 0.1
    x = x0.clone()
    pos, seq = torch.tensor([n_ctx], dtype=torch.int32), torch.tensor([0], dtype=torch.int32)
    half = dims["n_rot"] // 2
    cos, sin = torch.ones(n_ctx + 1, half), torch.zeros(n_ctx + 1, half)
    for _ in range(max(10, iters // 20)):
        fb(x, pos, seq, cos, sin)
        x.copy_(x0)  # keep the activations from growing over thousands of residual adds
    fb._b.timing, fb._b.ns_matmul, fb._b.ns_total = 1, 0, 0
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(iters):
        fb(x, pos, seq, cos, sin)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    fb._b.timing = 0
    return wall / iters * 1e6, fb._b.ns_matmul / iters / 1e3, fb._b.ns_total / iters / 1e3, cpu / iters * 1e6


def call_overhead(fb: FusedBlock, dims: dict, iters: int = 20000) -> float:
    """CPU us per __call__ with T=0: the Python + ctypes cost alone (the C side returns at once)."""
    x, pos = torch.zeros(0, dims["n_embd"]), torch.zeros(0, dtype=torch.int32)
    cos, sin = torch.ones(fb.n_ctx, fb.half), torch.zeros(fb.n_ctx, fb.half)
    t0 = time.process_time()
    for _ in range(iters):
        fb(x, pos, pos, cos, sin)
    return (time.process_time() - t0) / iters * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DIMS), choices=list(DIMS))
    ap.add_argument("--types", nargs="+", default=["Q4_1", "Q8_0"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--ctx", type=int, default=64, help="filled cache slots the token attends to")
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--variant", default=None, help="scalar, avx2, avx512 (default: the best this CPU runs)")
    a = ap.parse_args()
    lib = fused._library(a.variant)
    lib.lk_set_threads.argtypes = [ctypes.c_int]
    print(f"variant {a.variant or 'best'}, T=1 at position {a.ctx}, f16 cache, {a.iters} calls each (noisy: shared machine)")
    print(f"{'model':10} {'type':6} {'thr':>3} {'us/call':>9} {'matmul':>8} {'rest':>7} {'py+ctypes':>9} {'cpu us':>8}")
    for m in a.models:
        for t in a.types:
            fb = make_block(DIMS[m], GGMLType[t], a.ctx, a.variant)
            ovh = call_overhead(fb, DIMS[m])
            for n in a.threads:
                lib.lk_set_threads(n)
                call, mm, total, cpu = bench(fb, DIMS[m], a.ctx, a.iters)
                print(f"{m:10} {t:6} {n:3d} {call:9.1f} {mm:8.1f} {total - mm:7.1f} {ovh:9.1f} {cpu:8.1f}")
    lib.lk_set_threads(1)


if __name__ == "__main__":
    main()
