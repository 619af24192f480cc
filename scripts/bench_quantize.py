"""Benchmark `llamakit quantize`: seconds and MB/s of input per file type, on an F16 GGUF.

    python scripts/bench_quantize.py                          # SmolLM2-135M F16 (made once from the default model)
    python scripts/bench_quantize.py model-f16.gguf -t Q4_0 -t Q4_K_M --threads 2
    python scripts/bench_quantize.py --codecs                 # per-codec throughput (Mweights/s, one thread)
    python scripts/bench_quantize.py --codecs --ggml-lib /path/to/libggml-base.so   # + byte check against ggml
    python scripts/bench_quantize.py --vs-llama-cpp model-f16.gguf -t Q4_0 -t Q4_K_M --threads 1 --threads 2 --repeat 3
        # whole processes, interleaved: `python -m llamakit.cli quantize` against llama.cpp's quantizer
        # (llama_cpp.llama_model_quantize from llama-cpp-python, benchmark-only); wall/cpu medians, spread,
        # peak RSS, ratios, and whether the two outputs are byte-identical

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


_LLAMA_CPP = """
import ctypes, sys
import llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.nthread, p.ftype = int(sys.argv[3]), int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def _run_child(cmd: list[str]) -> tuple[float, float, int]:
    """(wall s, user+sys cpu s, peak RSS bytes) of one whole child process."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: llama.cpp logs more than a pipe holds
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            err = log.read().decode(errors="replace")
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def _stats(v: list[float]) -> str:
    import statistics

    return f"{statistics.median(v):6.2f} [{min(v):.2f}-{max(v):.2f}]"


def bench_vs_llama_cpp(path: Path, types: list[str], threads: list[int], repeat: int) -> None:
    """Interleaved whole-process runs of both quantizers; medians of wall and cpu time, peak RSS."""
    import filecmp
    import statistics

    from llamakit.quants.mixes import parse_file_type

    print(f"input {path} ({path.stat().st_size / 1e6:.0f} MB); {repeat} interleaved runs each; "
          f"median [min-max]; machine load {os.getloadavg()[0]:.1f}")
    print(f"{'type':7s} {'thr':>3s} | {'llamakit wall':>20s} {'cpu':>6s} {'RSS MB':>6s} | {'llama.cpp wall':>20s} "
          f"{'cpu':>6s} {'RSS MB':>6s} | {'wall x':>6s} {'cpu x':>6s} bytes")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        for t in types:
            ftype = parse_file_type(t).ftype
            for n in threads:
                lk_out, cpp_out = Path(tmp) / "lk.gguf", Path(tmp) / "cpp.gguf"
                lk = [sys.executable, "-m", "llamakit.cli", "quantize", str(path), str(lk_out), t, "--threads", str(n)]
                cpp = [sys.executable, "-c", _LLAMA_CPP, str(path), str(cpp_out), str(n), str(int(ftype))]
                a: list[tuple[float, float, int]] = []
                b: list[tuple[float, float, int]] = []
                for i in range(repeat):
                    for cmd, acc in ((lk, a), (cpp, b)) if i % 2 == 0 else ((cpp, b), (lk, a)):
                        acc.append(_run_child(cmd))
                same = "identical" if filecmp.cmp(lk_out, cpp_out, shallow=False) else "DIFFER"
                wa, wb = [x[0] for x in a], [x[0] for x in b]
                ca, cb = [x[1] for x in a], [x[1] for x in b]
                ra, rb = max(x[2] for x in a) / 1e6, max(x[2] for x in b) / 1e6
                print(f"{t:7s} {n:3d} | {_stats(wa):>20s} {statistics.median(ca):6.2f} {ra:6.0f} | {_stats(wb):>20s} "
                      f"{statistics.median(cb):6.2f} {rb:6.0f} | {statistics.median(wa) / statistics.median(wb):6.2f} "
                      f"{statistics.median(ca) / statistics.median(cb):6.2f} {same}", flush=True)
                lk_out.unlink()
                cpp_out.unlink()


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
    from llamakit.quantize import native_quantizer

    native = native_quantizer(True, notify=print)
    print(f"codec throughput on a 576x1536 matrix, one thread (Mweights/s; torch codecs, then the native "
          f"quantizers){', bytes vs ggml' if oracle else ''}")
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
        if native is not None and native.supports(GGMLType[name]):
            t0 = time.process_time()
            qn = native.quantize_f32(GGMLType[name], x.numpy())
            tn = time.process_time() - t0
            line += f"   native ({native.variant}) {x.numel() / tn / 1e6:8.1f}, " + (
                "same bytes" if np.array_equal(qn, q.numpy()) else "DIFFERENT bytes")
        if oracle:
            same = np.array_equal(oracle(GGMLType[name], x.numpy()), q.numpy())
            line += "   ggml bytes: " + ("identical" if same else "DIFFERENT")
        print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, help="an F16 (or F32/BF16) GGUF; default: SmolLM2-135M F16")
    ap.add_argument("-t", "--type", action="append", dest="types", help="file type (repeatable)")
    ap.add_argument("--threads", type=int, action="append", help="worker threads (repeatable with --vs-llama-cpp)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per type; the best is printed")
    ap.add_argument("--codecs", action="store_true", help="per-codec throughput instead of whole files")
    ap.add_argument("--ggml-lib", help="with --codecs: a libggml-base.so to compare the bytes with")
    ap.add_argument("--vs-llama-cpp", action="store_true",
                    help="whole-process runs against llama.cpp's quantizer (needs llama-cpp-python)")
    a = ap.parse_args()
    if a.codecs:
        bench_codecs(a.ggml_lib)
        return
    types = a.types or ["Q4_0", "Q4_K_M", "Q2_K", "Q8_0", "Q6_K"]
    if a.vs_llama_cpp:
        bench_vs_llama_cpp(a.model or smollm2_f16(), types, a.threads or [1, 2], a.repeat)
        return
    bench_files(a.model or smollm2_f16(), types, a.threads[-1] if a.threads else None, a.repeat)


if __name__ == "__main__":
    main()
