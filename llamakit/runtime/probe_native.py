"""The CPU probe of the engine as it runs with the native kernels: fused blocks, one native call each.

A CPU step is measured in three parts, each the way the engine pays it, at the thread counts asked (the
native pool and torch set as runtime/threads.py sets them):
  matmuls    lk_matmul at every (type, rows, cols) of the model's CPU layers, for one token (decode) and
             for one physical prompt batch (32 rows: the fused path's), cycling over as many copies of the
             matrix as fill min(192 MiB, the model's weights) (16 MiB for the compute-bound batches), so
             the weights come from where the engine finds them (DRAM for a real model, the caches for a
             tiny one); less ctypes' cost of a call (the engine's calls come from C);
  the block  one FusedBlock of the model's dimensions: everything but its 7 matmuls (norms, rope, the K/V
             stores, attention, SwiGLU), from the library's own counters, at two depths per step kind (so
             attention is a rate per cached slot), each call after a token's worth of weight traffic;
  Python     a model of the same number of layers and bytes per layer (up to 64 MiB in all) but 64 wide,
             through the real Context.decode: the time before its first block and after its last is the
             interpreter's per step; between them, less the native time the blocks report, per layer.
Traffic matters for the last two: in the engine every block's K/V, scratch and the interpreter's own data
were last touched a whole token of weights ago, out of every cache; measured with everything cached they
come out 2-3x too cheap (SmolLM2: ~4 vs ~10 us per block of non-matmul work, ~3 vs ~9 us of Python).
Each timing is the median of short windows after a warmup (another process on a shared core only ever
adds time, in bursts). The probe takes 1-3 s and is cached per process; not on disk, since what it
measures on a shared machine is the load of the moment.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..gguf.constants import GGML_BLOCK, GGMLType
from ..kernels.fused import LINEARS, FusedBlock
from ..kernels.registry import native_status
from ..quants import get_codec
from .costmodel import DeviceSpeed, EngineRates, MatShape

MiB = 1 << 20
# Decode rates are measured over up to DECODE_BYTES of distinct weights: at 2 threads (bandwidth-bound)
# the rate here fell until ~6x the 32 MiB last-level cache (Q4_0 5632x2048: 85 GW/s cycling over 64 MiB,
# 69 over 192 and more; the cache keeps part of a cyclic working set), and the engine streams it all.
DECODE_BYTES = 192 * MiB
PROMPT_BYTES = 16 * MiB  # 32-row batches are compute-bound
FLUSH_BYTES = 64 * MiB  # enough traffic to evict what a block touched
BLOCK_BYTES = 48 * MiB  # the largest block the non-matmul probe builds
PROBE_DEPTH = 256  # decode attention is measured at 0 and this many cached positions,
PROMPT_CTX = 512  # prompt steps at [0, ub) and [512 - ub, 512)


@dataclass(frozen=True)
class EngineShape:
    """What the probe needs of a model: its block dimensions, the shapes of its CPU matmuls, their bytes."""

    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    block_types: tuple[tuple[str, GGMLType], ...]  # each of the 7 linears' most common type
    matmuls: tuple[MatShape, ...]  # distinct (type, rows, cols) of the blocks and the output layer
    weight_bytes: int  # what one token streams (blocks + output)
    n_vocab: int
    n_layer: int
    layer_bytes: int  # one block's weights

    @property
    def traffic(self) -> int:
        """Bytes of weights the probe streams per token (the model's, capped)."""
        return max(1, min(self.weight_bytes, DECODE_BYTES))


def native_ok(shape: EngineShape, variant: str | None = None) -> bool:
    """True when the engine would run this model's blocks fused (every block type native)."""
    st = native_status(variant)
    return st.ok and all(st.lib.supports(t) for _, t in shape.block_types)


def _median(fn: Callable[[], float], windows: int = 5) -> float:
    fn()  # warmup
    return statistics.median(fn() for _ in range(windows))


class _Ring:
    """Prepared weights of one type in one buffer, as a run of x16 records (16 rows x one block: the unit
    of the prepared form, native/k_internal.h), so any run of (rows / 16) x (cols / block) records is a
    valid prepared (rows, cols) matrix. Made by repeating the two records of 32 random rows of one block
    (quantizing whole rows with a K-quant's torch search took ~1 s of the probe)."""

    def __init__(self, lib: Any, t: GGMLType, nbytes: int) -> None:
        dll = lib.dll
        self.block = GGML_BLOCK[t].block_size
        g = torch.Generator().manual_seed(int(t))
        self.src = get_codec(t).quantize(torch.randn(32, self.block, generator=g) * 0.02)  # 32 file rows
        base = torch.empty(int(dll.lk_prepared_size(int(t), 32, self.block)), dtype=torch.uint8)
        lib.check(dll.lk_prepare(int(t), 32, self.block, self.src.data_ptr(), base.data_ptr()), "prepare")
        self.record = base.numel() // 2
        self.buf = base.repeat(max(1, -(-nbytes // base.numel())))
        self.lib, self.t = lib, int(t)
        self._io: tuple[torch.Tensor, torch.Tensor] | None = None

    def group(self, cols: int) -> int:
        """Bytes of 16 rows of `cols` columns."""
        return cols // self.block * self.record

    def max_rows(self, cols: int) -> int:
        return self.buf.numel() // self.group(cols) * 16

    def view(self, rows: int, cols: int, index: int = 0) -> torch.Tensor:
        """Matrix `index` of (rows, cols) as a kernel's prepared (rows, bytes per row) tensor (matrices
        laid end to end, wrapping around the buffer)."""
        g, gb = -(-rows // 16), self.group(cols)
        start = (index * g) % max(1, self.buf.numel() // gb - g + 1)
        return self.buf[start * gb:(start + g) * gb].view(16 * g, gb // 16)[:rows]

    def copies(self, rows: int, cols: int, nbytes: int) -> list[int]:
        """Pointers of as many distinct (rows, cols) matrices as fill nbytes (at least one)."""
        size = -(-rows // 16) * self.group(cols)
        n = max(1, min(nbytes, self.buf.numel()) // size)
        return [self.buf.data_ptr() + i * size for i in range(n)]

    def stream(self, nbytes: int) -> None:
        """One token through nbytes of the buffer: a token's worth of weights through the caches."""
        cols = 64 * self.block
        rows = min(nbytes, self.buf.numel()) // self.group(cols) * 16
        if rows == 0:
            return
        if self._io is None or self._io[1].shape[1] < rows:
            self._io = (torch.zeros(1, cols), torch.empty(1, rows))
        x, y = self._io
        self.lib.dll.lk_matmul(self.t, rows, cols, self.buf.data_ptr(), 1, x.data_ptr(), y.data_ptr(), rows)


def _per_call(lib: Any, ring: _Ring, rows: int, cols: int, n: int, nbytes: int) -> float:
    """Seconds of one lk_matmul of n rows through a (rows, cols) matrix, cycling over copies that fill
    nbytes; ctypes' own cost (the same call with n = 0: checks and return) taken off."""
    fn, t = lib.dll.lk_matmul, ring.t
    ptrs = ring.copies(rows, cols, nbytes)
    x = torch.randn(n, cols) * 0.5
    y = torch.empty(n, rows)
    xp, yp = x.data_ptr(), y.data_ptr()
    t0 = time.perf_counter()
    for p in ptrs:
        fn(t, rows, cols, p, n, xp, yp, rows)
    reps = max(1, int(2e-3 / max(time.perf_counter() - t0, 1e-9)))  # windows of >= 2 ms

    def window() -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            for p in ptrs:
                fn(t, rows, cols, p, n, xp, yp, rows)
        return (time.perf_counter() - t0) / (reps * len(ptrs))

    def empty() -> float:
        t0 = time.perf_counter()
        for _ in range(64):
            fn(t, rows, cols, ptrs[0], 0, xp, yp, rows)
        return (time.perf_counter() - t0) / 64

    return max(_median(window) - _median(empty, 3), 1e-9)


def _matmul_rates(lib: Any, shape: EngineShape, rings: dict[int, _Ring], ub: int, n_threads: int,
                  n_threads_batch: int) -> tuple[dict[MatShape, float], dict[MatShape, float]]:
    """Weights x rows per second of every CPU matmul shape, at one row and at ub rows."""
    dec: dict[MatShape, float] = {}
    pp: dict[MatShape, float] = {}
    for key in shape.matmuls:
        t, rows, cols = key
        if not lib.supports(t):
            continue  # a torch kernel computes it: the generic per-type rate applies
        ring = rings[int(t)]
        r = min(rows, ring.max_rows(cols))  # a matrix larger than the ring: time its first rows
        lib.set_threads(n_threads)
        dec[key] = r * cols / _per_call(lib, ring, r, cols, 1, shape.traffic)
        lib.set_threads(n_threads_batch)
        pp[key] = ub * r * cols / _per_call(lib, ring, r, cols, ub, min(shape.traffic, PROMPT_BYTES))
    return dec, pp


def _block_phases(lib: Any, shape: EngineShape, rings: dict[int, _Ring], ub: int, n_threads: int,
                  n_threads_batch: int) -> tuple[float, float, float, float]:
    """(fixed s, s per slot) of a fused block's non-matmul work, at one token and at ub tokens."""
    e, hd = shape.n_embd, shape.head_dim
    nq, nkv = shape.n_head * hd, shape.n_head_kv * hd
    # a 70B's block is ~500 MB: its feed-forward is cut to keep the probe's block near BLOCK_BYTES (its
    # matmuls are not what is measured here, and SwiGLU is a few us of the non-matmul work)
    attn_w, ff = 2 * e * (nq + nkv), shape.n_ff  # weights of q, k, v, o
    if shape.layer_bytes > BLOCK_BYTES:
        per_weight = shape.layer_bytes / (attn_w + 3 * e * ff)
        ff = min(ff, max(256, int((BLOCK_BYTES / per_weight - attn_w) / (3 * e)) // 256 * 256))
    dims = {"n_embd": e, "n_head": shape.n_head, "n_head_kv": shape.n_head_kv, "head_dim": hd, "n_ff": ff,
            "n_rot": hd, "eps": 1e-5}
    sizes = {"attn_q": (nq, e), "attn_k": (nkv, e), "attn_v": (nkv, e), "attn_output": (e, nq),
             "ffn_gate": (ff, e), "ffn_up": (ff, e), "ffn_down": (e, ff)}
    types = dict(shape.block_types)
    linears: dict[str, Any] = {}
    for i, n in enumerate(LINEARS):
        ring = rings[int(types[n])]
        if ring.max_rows(sizes[n][1]) < sizes[n][0]:  # larger than the model's traffic: its own buffer
            ring = _Ring(lib, types[n], -(-sizes[n][0] // 16) * ring.group(sizes[n][1]))
        linears[n] = (types[n], ring.view(*sizes[n], i), *sizes[n], None)
    linears["attn_norm"] = linears["ffn_norm"] = torch.ones(e)
    n_ctx = max(PROBE_DEPTH + 1, PROMPT_CTX)
    k = torch.zeros(1, shape.n_head_kv, n_ctx, hd, dtype=torch.float16)
    v = torch.zeros_like(k)
    cos, sin = torch.ones(n_ctx, hd // 2), torch.zeros(n_ctx, hd // 2)
    lib.set_threads(max(n_threads, n_threads_batch))  # the scratch is sized for the larger pool
    fb = FusedBlock(dims, linears, k, v, max_tokens=ub)
    b = fb._b
    b.timing = 1
    flush = rings[int(types["ffn_gate"])]

    def other(t: int, p0: int, threads: int) -> float:
        lib.set_threads(threads)
        x0 = torch.randn(t, e)
        x = x0.clone()
        pos = torch.arange(p0, p0 + t, dtype=torch.int32)
        seq = torch.zeros(t, dtype=torch.int32)

        t0 = time.perf_counter()
        fb(x, pos, seq, cos, sin)
        calls = max(1, min(3, int(3e-3 / (time.perf_counter() - t0))))  # a 1.1B's prompt block: ~20 ms

        def window() -> float:
            x.copy_(x0)
            b.ns_total = b.ns_matmul = 0
            for _ in range(calls):
                flush.stream(FLUSH_BYTES)
                fb(x, pos, seq, cos, sin)
            return (b.ns_total - b.ns_matmul) / (calls * 1e9)

        return _median(window)

    d0, d1 = other(1, 0, n_threads), other(1, PROBE_DEPTH, n_threads)
    s1 = max((d1 - d0) / PROBE_DEPTH, 1e-12)
    p_lo, p_hi = other(ub, 0, n_threads_batch), other(ub, PROMPT_CTX - ub, n_threads_batch)
    s_pp = max((p_hi - p_lo) / (ub * (PROMPT_CTX - ub)), 1e-12)
    return max(d0 - s1, 0.0), s1, max(p_lo - s_pp * ub * (ub + 1) / 2, 0.0), s_pp


def _mimic_context(n_layer: int, n_ff: int, gate_up: _Ring, down: _Ring, n_threads: int) -> Any:
    """A 64-wide model of n_layer Q8_0 blocks whose feed-forward weights are ring views (distinct per
    layer: each layer streams its 3 x n_ff x 64 weights), built in memory, in a real Context."""
    from ..kernels.registry import kernel_for
    from ..model import Llama, LlamaConfig
    from ..model.layers import QuantEmbedding, QuantLinear
    from .generate import Context
    from .loader import LoadedModel
    from .placement import place_layers

    q8 = GGMLType.Q8_0
    cfg = LlamaConfig(n_vocab=64, n_embd=64, n_layer=n_layer, n_head=2, n_head_kv=1, n_ff=n_ff, head_dim=32,
                      n_rot=32, norm_eps=1e-5, rope_freq_base=10000.0, rope_freq_scale=1.0, n_ctx_train=256,
                      tied_output=True, has_rope_freqs=False)
    types = {"token_embd.weight": q8, **{f"blk.{i}.{n}.weight": q8 for i in range(n_layer) for n in LINEARS}}
    with torch.device("meta"):
        model = Llama(cfg, types)
    small = gate_up.view(64, 64)  # every 64x64 matrix (q, k, v, o, output, embedding rows): the same bytes
    for name, mod in model.named_modules():
        if isinstance(mod, (QuantLinear, QuantEmbedding)):
            i = int(name.split(".")[1]) if name.startswith("blk.") else 0
            w = {"ffn_gate": gate_up.view(n_ff, 64, 2 * i), "ffn_up": gate_up.view(n_ff, 64, 2 * i + 1),
                 "ffn_down": down.view(64, n_ff, i)}.get(name.rsplit(".", 1)[-1], small)
            mod.set_kernel(kernel_for(q8, "cpu", use="rows" if isinstance(mod, QuantEmbedding) else "linear"), w)
    for name, buf in list(model.named_buffers()):
        if buf is not None and buf.is_meta:  # the norms
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer(name.rsplit(".", 1)[1], torch.ones(buf.shape))
    lm = LoadedModel(model=model, config=cfg, metadata={}, path=Path("probe"), placement=place_layers(n_layer, 0),
                     file_bytes=0, tensor_bytes=0, n_params=0, t_start=time.perf_counter())
    ctx = Context(lm, 64, n_threads=n_threads, n_threads_batch=n_threads)
    if ctx.fused is None or any(f is None for f in ctx.fused):
        raise RuntimeError("the probe's model did not run fused")
    for f in ctx.fused:
        f._b.timing = 1  # type: ignore[union-attr]
    return ctx


class _Stamp:
    """A fused block that notes when its calls begin and end (only the first and last blocks get one)."""

    def __init__(self, fb: Any) -> None:
        self.fb, self._b, self.begin, self.end = fb, fb._b, 0.0, 0.0

    def __call__(self, *args: Any) -> None:
        self.begin = time.perf_counter()
        self.fb(*args)
        self.end = time.perf_counter()


def _python(lib: Any, shape: EngineShape, n_threads: int) -> tuple[float, float]:
    """(per step, per layer) seconds of the interpreter's work in a decode step: before the first block
    and after the last one (decode(), the embedding, the output norm and call), and between them less
    the blocks' native time, per layer."""
    n_layer = shape.n_layer
    per_layer = max(min(shape.layer_bytes, min(shape.traffic, FLUSH_BYTES) // max(1, n_layer)), 16 * 1024)
    n_ff = max(32, per_layer * 32 // (3 * 64 * 34) // 32 * 32)  # Q8_0: 34 bytes per 32 weights
    gate_up = _Ring(lib, GGMLType.Q8_0, 2 * n_ff * 64 * 34 // 32 * n_layer + 64 * 68)
    down = _Ring(lib, GGMLType.Q8_0, 64 * n_ff * 34 // 32 * n_layer)
    ctx = _mimic_context(n_layer, n_ff, gate_up, down, n_threads)
    first, last = _Stamp(ctx.fused[0]), _Stamp(ctx.fused[-1]) if n_layer > 1 else None
    ctx.fused[0] = first
    if last is not None:
        ctx.fused[-1] = last
    last = last or first

    def window() -> tuple[float, float]:
        ctx.clear()
        outside = inside = 0.0
        for f in ctx.fused:
            f._b.ns_total = 0
        for i in range(6):
            t0 = time.perf_counter()
            ctx.decode([i])
            t1 = time.perf_counter()
            outside += (first.begin - t0) + (t1 - last.end)
            inside += last.end - first.begin
        inside -= sum(f._b.ns_total for f in ctx.fused) / 1e9
        return outside / 6, inside / 6 / n_layer

    window()
    runs = [window() for _ in range(5)]
    return statistics.median(r[0] for r in runs), max(statistics.median(r[1] for r in runs), 0.0)


def _sample_s(n_vocab: int) -> float:
    """llama.cpp's default sampler chain on random logits of the model's vocabulary."""
    from .sampling import Sampler, SamplingParams

    smp = Sampler(SamplingParams(seed=0), n_vocab)
    logits = torch.randn(n_vocab) * 3

    def window() -> float:
        t0 = time.perf_counter()
        for _ in range(4):
            smp.sample(logits)
        return (time.perf_counter() - t0) / 4

    return _median(window)


class _OtherLoad:
    """Cores that other processes kept busy while a block ran (Linux: /proc/stat's busy time less this
    process's CPU time); None where /proc/stat cannot be read."""

    cores: float | None = None

    def __enter__(self) -> "_OtherLoad":
        self.t0, self.busy0, self.ours0 = time.monotonic(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, wall = self._busy(), time.monotonic() - self.t0
        if busy is not None and self.busy0 is not None and wall > 0:
            self.cores = max(0.0, (busy - self.busy0) - (self._ours() - self.ours0)) / wall

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system


QUIET = 0.25  # cores of other work during a probe beyond which it is measured again (up to 3 times)


@functools.lru_cache(maxsize=8)
def probe_native(shape: EngineShape, n_threads: int, n_threads_batch: int, ub: int,
                 variant: str | None = None) -> DeviceSpeed:
    """The CPU's measured decode and prompt rates for this model's shapes (see the module doc). When
    other processes kept more than QUIET cores busy meanwhile (a burst on a shared machine makes every
    rate look slower), it measures again (up to 3 times, while under 3 s) and keeps the least disturbed run."""
    t0 = time.monotonic()
    best: DeviceSpeed | None = None
    for _ in range(3):
        with _OtherLoad() as load:
            speed = _probe_once(shape, n_threads, n_threads_batch, ub, variant)
        speed = replace(speed, other_load=load.cores)
        if best is None or (load.cores is not None and best.other_load is not None
                            and load.cores < best.other_load):
            best = speed
        if load.cores is None or load.cores <= QUIET or time.monotonic() - t0 > 3.0:
            break
    assert best is not None
    return best


def _probe_once(shape: EngineShape, n_threads: int, n_threads_batch: int, ub: int,
                variant: str | None) -> DeviceSpeed:
    lib = native_status(variant).lib
    saved = (lib.get_threads(), torch.get_num_threads())
    try:
        with torch.inference_mode():
            torch.set_num_threads(n_threads)
            rings = {int(t): _Ring(lib, t, shape.traffic) for t in {k[0] for k in shape.matmuls} if lib.supports(t)}
            dec, pp = _matmul_rates(lib, shape, rings, ub, n_threads, n_threads_batch)
            a1, s1, a_pp, s_pp = _block_phases(lib, shape, rings, ub, n_threads, n_threads_batch)
            del rings
            lib.set_threads(n_threads)
            step, layer_py = _python(lib, shape, n_threads)
            sample = _sample_s(shape.n_vocab)
    finally:
        lib.set_threads(saved[0])
        torch.set_num_threads(saved[1])
    nq = shape.n_head * shape.head_dim
    # prompt steps: the same interpreter path per step and per layer (~1% of a step's time)
    decode = EngineRates(1, dec, layer_py + a1, 4 * nq / s1, step, sample)
    prompt = EngineRates(ub, pp, layer_py + a_pp, 4 * nq / s_pp, step)
    by_type: dict[GGMLType, float] = {}
    for t in {k[0] for k in dec}:  # bytes/s of the type's shapes, one call each (the generic terms)
        keys = [k for k in dec if k[0] == t]
        blk = GGML_BLOCK[t]
        nbytes = sum(k[1] * k[2] // blk.block_size * blk.type_size for k in keys)
        by_type[t] = nbytes / sum(k[1] * k[2] / dec[k] for k in keys)
    bw = statistics.median(by_type.values()) if by_type else 20e9
    flops = 2 * statistics.median(pp.values()) if pp else 200e9
    return DeviceSpeed(bandwidth=bw, flops=flops, layer_overhead=decode.layer, by_type=by_type, source="probe",
                       decode=decode, prompt=prompt, threads=n_threads)
