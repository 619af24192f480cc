"""Benchmark `llamakit quantize`: seconds and MB/s of input per file type, on an F16 GGUF.

    python scripts/bench_quantize.py                          # SmolLM2-135M F16 (made once from the default model)
    python scripts/bench_quantize.py model-f16.gguf -t Q4_0 -t Q4_K_M --threads 2
    python scripts/bench_quantize.py --codecs                 # per-codec throughput (Mweights/s, one thread)
    python scripts/bench_quantize.py --codecs --ggml-lib /path/to/libggml-base.so   # + byte check against ggml

Numbers for llama.cpp's llama-quantize on the same 2-core machine (SmolLM2-135M f16, 2 threads) are printed
beside ours where known. Timings depend on load: other processes on the machine make them noisy.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llamakit.gguf import GGMLType, GGUFReader  # noqa: E402
from llamakit.quantize import plan_quantize, quantize_file, run_quantize  # noqa: E402
from llamakit.quants import get_codec  # noqa: E402

LLAMA_CPP_SECONDS = {"Q4_0": 0.7, "Q4_K_M": 4.6, "Q2_K": 20.0}  # llama-quantize, SmolLM2-135M f16, 2 threads
CODECS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"]


def smollm2_f16() -> Path:
    """SmolLM2-135M as F16 (dequantized from the default Q4_1 model), cached beside it."""
    from llamakit.runtime.default_model import default_model_path

    src = default_model_path()
    dst = src.with_name("SmolLM2-135M-Instruct.F16.gguf")
    if not dst.exists():
        print(f"making {dst} from {src} ...", file=sys.stderr)
        quantize_file(src, dst, "F16", allow_requantize=True)
    return dst


def bench_files(path: Path, types: list[str], threads: int | None, repeat: int) -> None:
    with GGUFReader(path) as r:
        size = sum(t.nbytes for t in r.tensors)
    print(f"input {path} ({size / 1e6:.1f} MB of tensors), threads {threads or os.cpu_count()}, "
          f"torch {torch.__version__}")
    print(f"{'type':8s} {'seconds':>8s} {'cpu s':>8s} {'MB/s':>8s} {'out MB':>8s}  llama.cpp (wall)")
    with tempfile.TemporaryDirectory() as tmp:
        for t in types:
            best = cpu = float("inf")
            for _ in range(repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                with plan_quantize(path, t) as plan:
                    res = run_quantize(plan, Path(tmp) / f"{t}.gguf", threads=threads)
                best = min(best, time.perf_counter() - t0)
                cpu = min(cpu, time.process_time() - c0)  # all threads: robust to other load, not to contention
            ref = LLAMA_CPP_SECONDS.get(t.upper())
            cmp = f"{ref:.1f} s ({ref / best:.2f}x)" if ref and "SmolLM2" in path.name else "-"
            print(f"{t:8s} {best:8.2f} {cpu:8.2f} {size / best / 1e6:8.1f} {res.output_bytes / 1e6:8.1f}  {cmp}",
                  flush=True)


def _ggml(lib_path: str):  # type: ignore[no-untyped-def]
    """ggml_quantize_chunk from a ggml-base shared library, as an oracle for the codec bytes."""
    lib = ctypes.CDLL(lib_path)

    class InitParams(ctypes.Structure):
        _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]

    lib.ggml_init.restype = ctypes.c_void_p
    lib.ggml_init.argtypes = [InitParams]
    lib.ggml_init(InitParams(1 << 20, None, False))  # fills the f16 tables the K-quant requantization reads
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]

    def quantize(t: GGMLType, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        c = get_codec(t)
        out = np.zeros((x.shape[0], x.shape[1] // c.block_size * c.type_size), dtype=np.uint8)
        lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
        return out

    return quantize


def bench_codecs(ggml_lib: str | None) -> None:
    torch.set_num_threads(1)
    x = torch.randn(576, 1536, generator=torch.Generator().manual_seed(0)) * 0.02
    oracle = _ggml(ggml_lib) if ggml_lib else None
    print(f"codec throughput on a 576x1536 matrix, one thread (Mweights/s){', bytes vs ggml' if oracle else ''}")
    for name in CODECS:
        c = get_codec(GGMLType[name])
        c.quantize(x[:16])
        t0 = time.process_time()
        q = c.quantize(x)
        tq = time.process_time() - t0
        t0 = time.process_time()
        for _ in range(5):
            c.dequantize(q)
        td = (time.process_time() - t0) / 5
        line = f"{name:7s} quantize {x.numel() / tq / 1e6:8.1f}   dequantize {x.numel() / td / 1e6:8.1f}"
        if oracle:
            same = np.array_equal(oracle(GGMLType[name], x.numpy()), q.numpy())
            line += "   ggml bytes: " + ("identical" if same else "DIFFERENT")
        print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, help="an F16 (or F32/BF16) GGUF; default: SmolLM2-135M F16")
    ap.add_argument("-t", "--type", action="append", dest="types", help="file type (repeatable)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="runs per type; the best is printed")
    ap.add_argument("--codecs", action="store_true", help="per-codec throughput instead of whole files")
    ap.add_argument("--ggml-lib", help="with --codecs: a libggml-base.so to compare the bytes with")
    a = ap.parse_args()
    if a.codecs:
        bench_codecs(a.ggml_lib)
        return
    bench_files(a.model or smollm2_f16(), a.types or ["Q4_0", "Q4_K_M", "Q2_K", "Q8_0", "Q6_K"], a.threads, a.repeat)


if __name__ == "__main__":
    main()
