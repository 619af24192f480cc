"""Short probes of a device's effective speeds for the planner's cost model (costmodel.py), in its generic
form: a CUDA device, and the CPU when the native kernels are not there (the torch engine). With the native
kernels the CPU's engine is measured by runtime/probe_native.py instead.

Each probe runs the kernels the engine would run, so what it measures includes their real cost:
  bandwidth per ggml type: packed bytes / time of one linear (T = 1) over a matrix of ~`probe_bytes`
      (larger than the caches), the median of a few runs after a warmup;
  flop rate: the same kernel at a prompt batch (512 rows through a 1024-row weight of the blocks' most
      common type): the prompt path as the engine runs it (dequantize + GEMM, or the native int8 path);
  per-layer overhead: one token through a tiny block (n_embd 256) of the model's types, whose weights
      are too small to matter: what a layer costs besides its bytes (torch op dispatch, launches). On
      the CPU: the torch kernels' blocks. On CUDA also the one-token step replayed from a CUDA graph, as
      decode runs it (`graph_layer_overhead`, used for generation; prompts keep the eager figure).
CUDA timings synchronize before reading the clock. A probe takes well under a second per type on a CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch

from ..gguf.constants import GGML_BLOCK, GGMLType
from ..model import Batch, Block, LlamaConfig, rope_cos_sin
from ..kernels.registry import kernel_for
from ..kernels.torch_kernels import torch_kernel_for
from ..quants import get_codec
from .costmodel import DeviceSpeed
from .decode_graph import capture, graphs_enabled

MiB = 1 << 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, reps: int = 5, pick: Callable = statistics.median
          ) -> float:
    fn()  # warmup (and Triton compilation)
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(pick(times))


def _kernel(t: GGMLType, device: torch.device):  # type: ignore[no-untyped-def]
    if device.type == "cuda":
        from ..kernels.triton_kernels import lookup

        k = lookup(t)
        if k is not None:
            return k
    return kernel_for(t, device.type)


def _matrix(t: GGMLType, n_in: int, nbytes: int, device: torch.device) -> torch.Tensor:
    """A packed (rows, row_bytes) matrix of ~nbytes: 64 quantized random rows, repeated."""
    g = torch.Generator().manual_seed(0)
    base = get_codec(t).quantize(torch.randn(64, n_in, generator=g))
    reps = max(1, nbytes // base.numel())
    return base.repeat(reps, 1).to(device)


def bandwidth(t: GGMLType, device: torch.device, n_in: int = 2048, probe_bytes: int = 8 * MiB) -> float:
    """Effective packed bytes/s of the engine's linear kernel for type t on device."""
    blk = GGML_BLOCK[t].block_size
    n_in = max(blk, n_in // blk * blk)
    w = _matrix(t, n_in, probe_bytes, device)
    nbytes = w.numel()
    x = torch.randn(1, n_in, device=device)
    k = _kernel(t, device)
    w = k.prepare(w)  # the kernel's working form (a repack for native kernels), as the loader does
    return nbytes / _time(lambda: k.linear(x, w, n_in), device)


def flop_rate(t: GGMLType, device: torch.device, n_in: int = 2048, rows: int = 1024, batch: int = 512) -> float:
    """Effective flop/s of the engine's linear kernel for type t at a prompt batch (`batch` rows of
    activations through a (rows, n_in) weight): what a prompt step's matmuls run at."""
    blk = GGML_BLOCK[t].block_size
    n_in = max(blk, n_in // blk * blk)
    k = _kernel(t, device)
    w = k.prepare(_matrix(t, n_in, rows * n_in * GGML_BLOCK[t].type_size // blk, device))
    x = torch.randn(batch, n_in, device=device)
    return 2 * batch * rows * n_in / _time(lambda: k.linear(x, w, n_in), device, reps=3)


def layer_overhead(types: dict[str, GGMLType], device: torch.device, graph: bool = False) -> float:
    """Seconds one token spends in a block besides moving its weights (a block of n_embd 256). graph: the
    one-token step as decode runs it on CUDA (runtime/decode_graph.py: `Block.step` replayed from a CUDA
    graph; elsewhere the same step, eagerly), instead of the ordinary forward (prompts, batches)."""
    cfg = LlamaConfig(n_vocab=256, n_embd=256, n_layer=1, n_head=4, n_head_kv=4, n_ff=512, head_dim=64, n_rot=64,
                      norm_eps=1e-5, rope_freq_base=10000.0, rope_freq_scale=1.0, n_ctx_train=64, tied_output=True,
                      has_rope_freqs=False)
    blk = Block(cfg, types)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, mod in blk.named_children():
            w = getattr(mod, "weight", None)
            if w is None:
                continue
            if w.dtype == torch.uint8:
                rows, n_in = mod.out_features, mod.in_features
                w.copy_(get_codec(mod.ggml_type).quantize(torch.randn(rows, n_in, generator=g) * 0.05))
            else:
                w.fill_(1.0)
    blk = blk.to(device)
    for mod in blk.modules():
        if hasattr(mod, "set_kernel"):
            # CPU: the torch kernels. Native kernels called one matmul at a time from a torch block make
            # torch's and the native pool's threads wait on each other (measured 40 ms per tiny block on
            # 2 cores, vs ~1 ms); the engine avoids that with whole native blocks (runtime/fused.py).
            k = _kernel(mod.ggml_type, device) if device.type == "cuda" else torch_kernel_for(mod.ggml_type)
            mod.set_kernel(k, k.prepare(mod.weight))
    kv = (torch.zeros(1, 4, 64, 64, dtype=torch.float16, device=device),
          torch.zeros(1, 4, 64, 64, dtype=torch.float16, device=device))  # (n_seq, n_head_kv, n_ctx, hd)
    cos, sin = rope_cos_sin(cfg, torch.tensor([8], device=device))
    rot = torch.complex(cos, sin)[:, None, :]
    batch = Batch.single(0, 8, 1)
    x = torch.randn(1, 256, device=device)
    with torch.inference_mode():
        step: Callable[[], object] = lambda: blk(x, rot, kv, batch)  # noqa: E731
        if graph:
            pos, slots = torch.tensor([8], device=device), torch.arange(64, device=device)
            step = lambda: blk.step(x, rot, kv, 0, pos, slots)  # noqa: E731
            if device.type == "cuda":
                step = capture(step, device)[0].replay  # type: ignore[attr-defined]
        # the fastest of 25: other processes only ever add time to a sub-millisecond call
        return _time(step, device, reps=25, pick=min)


def probe_device(device: torch.device, types: Iterable[GGMLType], block_types: dict[str, GGMLType],
                 n_in: int = 2048) -> DeviceSpeed:
    """Every probe for one device: bandwidth of each type, flop rate, per-layer overhead."""
    # CPU: F32 weights (a plain F.linear), so the tiny block times only the dispatch of a block's ops.
    # Measured first: right after the native kernels ran, their pool's waiting threads slowed the torch
    # ops of the tiny block 10-60x on 2 cores (a quantized tiny block varied 1-500 ms the same way).
    over = layer_overhead(block_types if device.type == "cuda" else {k: GGMLType.F32 for k in block_types},
                          device)
    with torch.inference_mode():
        by_type = {t: bandwidth(t, device, n_in) for t in sorted(set(types))}
        main = max(block_types.values(), key=list(block_types.values()).count)  # the blocks' usual type
        flops = flop_rate(main, device, n_in)
    bw = statistics.median(by_type.values()) if by_type else 0.0
    graph_over = None
    if device.type == "cuda" and graphs_enabled():
        try:
            graph_over = layer_overhead(block_types, device, graph=True)
        except Exception:  # noqa: BLE001 - decode falls back to eager steps too (decode_graph.py)
            graph_over = None
    return DeviceSpeed(bandwidth=bw, flops=flops, layer_overhead=over, by_type=by_type, source="probe",
                       graph_layer_overhead=graph_over)
