"""Single-token decode of a run of GPU blocks replayed from CUDA graphs (llama.cpp's CUDA graphs, gpt-fast's
"reduce-overhead").

Why: one token of a 1.1B model on a GPU is ~35 torch operations per block x 22 blocks; launched eagerly
from Python (~5 us each) that is milliseconds per token against ~0.13 ms of HBM traffic. A graph launches
them all at once.

What is captured: `Block.step` for blocks [start, end) of one device, reading a static input row and
position, writing a static output row. The step attends over the first L cache slots with a mask, L a
power of two >= the position + 1 (at least MIN_SLOTS, at most n_ctx), so one graph per (sequence, L)
serves every position up to L: a 4096-token context captures at most 5 graphs per sequence, each on the
first step that needs it. Decode steps of several tokens or sequences (prompts, the server's batches)
decline and run eagerly. Capture failing (a kernel that syncs with the host, an old driver) is reported
once on stderr and the segment keeps running `Block.step` eagerly.

On a device that is not CUDA (tests: the CPU standing in for an accelerator) the same `Block.step` code
runs eagerly, so everything but the capture itself is checked in CI.

The cache slots past the current position are read (masked) every step, so they must be finite: the
segment zeroes its blocks' KV cache once, when it is built (torch.empty's bytes may be NaN patterns).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from ..model import Llama
from ..model.llama import Batch, KVPair

T = TypeVar("T")

MIN_SLOTS = 256


def graphs_enabled() -> bool:
    """False when LLAMAKIT_CUDA_GRAPHS=0 (llama.cpp: GGML_CUDA_DISABLE_GRAPHS=1)."""
    return os.environ.get("LLAMAKIT_CUDA_GRAPHS", "1") != "0"


def capture(fn: Callable[[], T], device: torch.device, pool: object | None = None) -> tuple[object, T]:
    """fn() captured as a CUDA graph, after two warm-up calls on a side stream (Triton compiles, cuBLAS
    picks its kernels); returns the graph and fn's output, which lives in the graph's memory and is
    rewritten by every replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


def slots_for(pos: int, n_ctx: int, min_slots: int = MIN_SLOTS) -> int:
    """The attention length L of a step at position pos: a power of two >= pos + 1, in [min_slots, n_ctx]."""
    n = max(min_slots, 1 << pos.bit_length())  # pos + 1 <= 2^bit_length(pos)
    return min(n, n_ctx)


class DecodeGraph:
    """Blocks [start, end) of `model` on one device, one token of one sequence per call (a Segment)."""

    def __init__(self, model: Llama, start: int, end: int, kv: Sequence[KVPair],
                 rope: tuple[torch.Tensor, torch.Tensor], n_ctx: int, *, capture: bool | None = None,
                 min_slots: int = MIN_SLOTS) -> None:
        self.model, self.start, self.end, self.n_ctx, self.min_slots = model, start, end, n_ctx, min_slots
        self.kv = list(kv[start:end])
        self.device = self.kv[0][0].device
        self.cos, self.sin = rope
        self.capture = self.device.type == "cuda" if capture is None else capture
        for k, v in self.kv:  # see the module docstring: masked slots must be finite
            k.zero_()
            v.zero_()
        n_embd = model.cfg.n_embd
        self.x = torch.zeros(1, n_embd, device=self.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self.slots = torch.arange(n_ctx, device=self.device)
        self.graphs: dict[tuple[int, int], tuple[object, torch.Tensor]] = {}
        self.replays = 0  # counters for tests and `bench`
        self.eager_steps = 0
        self._pool: object | None = None

    def _run(self, seq: int, n: int) -> torch.Tensor:
        p = self.pos
        rot = torch.complex(self.cos.index_select(0, p), self.sin.index_select(0, p))[:, None, :]
        h, slots = self.x, self.slots[:n]
        for i, pair in zip(range(self.start, self.end), self.kv):
            h = self.model.blk[i].step(h, rot, pair, seq, p, slots)
        return h

    def _capture(self, seq: int, n: int) -> tuple[object, torch.Tensor]:
        # the warm-up steps write this step's own K/V at this step's position, which the replay writes again
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return capture(lambda: self._run(seq, n), self.device, self._pool)

    def __call__(self, x: torch.Tensor, batch: Batch) -> torch.Tensor | None:
        if len(batch.runs) != 1 or batch.n_tokens != 1:
            return None
        r = batch.runs[0]
        n = slots_for(r.p0, self.n_ctx, self.min_slots)
        self.x.copy_(x)
        self.pos.fill_(r.p0)
        if self.capture:
            key = (r.seq, n)
            entry = self.graphs.get(key)
            if entry is None:
                try:
                    entry = self.graphs[key] = self._capture(r.seq, n)
                except Exception as e:  # noqa: BLE001 - any capture failure: run eagerly, say so once
                    print(f"llamakit: CUDA graph capture failed on {self.device} ({type(e).__name__}: {e}); "
                          f"decoding without graphs", file=sys.stderr)
                    self.capture = False
            if entry is not None:
                graph, out = entry
                graph.replay()  # type: ignore[attr-defined]
                self.replays += 1
                return out.clone()  # the next replay overwrites `out`
        self.eager_steps += 1
        return self._run(r.seq, n)
