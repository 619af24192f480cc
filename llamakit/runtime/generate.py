"""Decoding: a context (model + KV cache + position, llama.cpp's llama_context) and the generation loop of
llama-cli's main.cpp as a generator of token ids.

Timing follows llama.cpp's perf counters (src/llama-context.cpp): a decode of more than one token counts
as prompt eval, a single-token decode as one eval run; load time runs from the start of loading to the end
of the first (warmup) decode; counters are reset after the warmup.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..model import Batch, Run, rope_tables
from .decode_graph import DecodeGraph, graphs_enabled
from .fused import fused_blocks
from .kv_cache import KVCache
from .loader import LoadedModel
from .placement import graph_segments
from .sampling import Sampler
from .threads import Threads


@dataclass
class Perf:
    t_start: float = field(default_factory=time.perf_counter)
    t_load_ms: float = 0.0
    t_p_eval_ms: float = 0.0
    n_p_eval: int = 0
    t_eval_ms: float = 0.0
    n_eval: int = 0
    t_sample_ms: float = 0.0
    n_sample: int = 0

    def reset(self) -> None:
        self.t_start = time.perf_counter()
        self.t_p_eval_ms = self.t_eval_ms = self.t_sample_ms = 0.0
        self.n_p_eval = self.n_eval = self.n_sample = 0

    def lines(self) -> list[str]:
        """llama.cpp's common_perf_print lines (llama_perf_sampler_print, llama_perf_context_print)."""
        def rate(ms: float, n: int) -> tuple[float, float]:
            return (ms / n if n else float("nan"), 1e3 / ms * n if ms else float("inf"))
        ns, npe, ne = self.n_sample, max(1, self.n_p_eval), max(1, self.n_eval)
        total = (time.perf_counter() - self.t_start) * 1e3
        return [
            "llama_perf_sampler_print:    sampling time = %10.2f ms / %5d runs   (%8.2f ms per token, %8.2f tokens per second)"
            % (self.t_sample_ms, ns, *rate(self.t_sample_ms, ns)),
            "llama_perf_context_print:        load time = %10.2f ms" % self.t_load_ms,
            "llama_perf_context_print: prompt eval time = %10.2f ms / %5d tokens (%8.2f ms per token, %8.2f tokens per second)"
            % (self.t_p_eval_ms, npe, *rate(self.t_p_eval_ms, npe)),
            "llama_perf_context_print:        eval time = %10.2f ms / %5d runs   (%8.2f ms per token, %8.2f tokens per second)"
            % (self.t_eval_ms, ne, *rate(self.t_eval_ms, ne)),
            "llama_perf_context_print:       total time = %10.2f ms / %5d tokens" % (total, npe + ne),
        ]


# Physical batch cap of the fused blocks: their one shared scratch is sized for the largest batch run
# (~23 KB per token on SmolLM2), and the native matmuls already run 32 rows at full speed.
FUSED_UBATCH = 32


class Context:
    """A model with a KV cache of n_seq sequences of n_ctx positions (llama.cpp's llama_context): `decode`
    appends tokens to a sequence and returns logits; `decode_batch` does several sequences in one pass.

    Threads: `n_threads` for single-token decodes, `n_threads_batch` for prompt batches (llama.cpp's -t /
    -tb), applied to torch and to the native kernels' pool when they change (None: leave them as they are).
    `fused`: run blocks whose weights are all native through one native call each (None: when possible).
    `graphs`: replay single-token decodes of GPU blocks from CUDA graphs (decode_graph.py). None: on CUDA
    devices unless LLAMAKIT_CUDA_GRAPHS=0 (llama.cpp's GGML_CUDA_DISABLE_GRAPHS); True: also on any other
    device, eagerly (tests); False: never.
    """

    def __init__(self, lm: LoadedModel, n_ctx: int, n_batch: int = 2048, n_ubatch: int = 512,
                 cache_dtype: torch.dtype = torch.float16, n_seq: int = 1, *,
                 cache_dtype_v: torch.dtype | None = None, n_threads: int | None = None,
                 n_threads_batch: int | None = None, fused: bool | None = None,
                 graphs: bool | None = None) -> None:
        self.lm, self.model, self.cfg = lm, lm.model, lm.config
        if n_ctx < 1:
            raise InputError(f"the context size must be at least 1 (got {n_ctx})")
        if n_seq < 1:
            raise InputError(f"n_seq must be at least 1 (got {n_seq})")
        self.n_ctx, self.n_seq = n_ctx, n_seq
        self.n_batch = max(1, n_batch)
        self.n_ubatch = max(1, min(n_ubatch, self.n_batch))
        self.cache = KVCache(self.cfg, n_ctx, lm.placement.blocks, cache_dtype, n_seq, cache_dtype_v)
        self._past = [0] * n_seq
        self.perf = Perf(t_start=lm.t_start)
        self._evaluated_once = False
        freq = self.model.rope_freqs.weight
        self.rope = {d: rope_tables(self.cfg, n_ctx, None if freq is None else freq.to(d), d)
                     for d in {*lm.placement.blocks}}
        self.threads = Threads(lm, n_threads, n_threads_batch)
        self.fused = fused_blocks(lm, self.cache, max_tokens=min(self.n_ubatch, FUSED_UBATCH)) \
            if fused is not False else None
        if fused and self.fused is None:
            raise InputError("fused blocks need every block weight on the native kernels (CPU, supported types)")
        # each fused block keeps a scratch sized for the largest batch it saw: cap the physical batch
        self._ubatch = min(self.n_ubatch, FUSED_UBATCH) if self.fused is not None else self.n_ubatch
        self.segments: dict[int, DecodeGraph] = {}
        if graphs is not False and (graphs or graphs_enabled()):
            eligible = [f is None for f in (self.fused or [None] * self.cfg.n_layer)]
            for a, b in graph_segments(lm.placement, eligible, everywhere=bool(graphs)):
                dev = lm.placement.blocks[a]
                self.segments[a] = DecodeGraph(self.model, a, b, self.cache.layers, self.rope[dev], n_ctx)

    # -- positions ---------------------------------------------------------------------------------------
    @property
    def n_past(self) -> int:
        """Sequence 0's length (the single-sequence API)."""
        return self._past[0]

    @n_past.setter
    def n_past(self, n: int) -> None:
        self._past[0] = n

    def n_past_of(self, seq: int = 0) -> int:
        return self._past[self._seq(seq)]

    def _seq(self, seq: int) -> int:
        if not 0 <= seq < self.n_seq:
            raise InputError(f"sequence {seq} does not exist (this context has {self.n_seq}: 0..{self.n_seq - 1})")
        return seq

    def clear(self, seq: int | None = None) -> None:
        """Forget every sequence (None) or one."""
        if seq is None:
            self._past = [0] * self.n_seq
        else:
            self._past[self._seq(seq)] = 0

    def truncate(self, n: int, seq: int = 0) -> None:
        """Keep the first n positions of `seq` (prefix reuse: the next decode continues at n)."""
        s = self._seq(seq)
        if not 0 <= n <= self._past[s]:
            raise InputError(f"cannot truncate sequence {seq} to {n} positions (it has {self._past[s]})")
        self._past[s] = n

    # -- state -------------------------------------------------------------------------------------------
    def kv_export(self, seq: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer copies of K and V of the used positions, each (n_head_kv, n_past, head_dim), CPU."""
        s = self._seq(seq)
        return self.cache.export(s, self._past[s])

    def kv_import(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], seq: int = 0) -> None:
        s = self._seq(seq)
        self._past[s] = self.cache.load(layers, s)

    # -- evaluation --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, tokens: Sequence[int], logits: str | torch.Tensor = "last", seq: int = 0) -> torch.Tensor:
        """Process `tokens` at sequence `seq`'s next positions in physical batches of n_ubatch.
        Returns float32 logits for the last token ("last"), every token ("all"), or an index tensor's rows."""
        n = len(tokens)
        if n == 0:
            raise ValueError("decode needs at least one token")
        s = self._seq(seq)
        past = self._past[s]
        if past + n > self.n_ctx:
            raise InputError(f"{n} more tokens do not fit in the context ({past} of {self.n_ctx} used); "
                             f"raise -c")
        t0 = time.perf_counter()
        self.threads.use(batch=n > 1)
        ids = torch.tensor(tokens, dtype=torch.long)
        want = None if isinstance(logits, str) else logits.to(torch.long)
        outs = []
        for b in range(0, n, self._ubatch):
            e = min(n, b + self._ubatch)
            rows: str | torch.Tensor | None
            if want is None:
                rows = "all" if logits == "all" else ("last" if e == n else None)
            else:
                sel = want[(want >= b) & (want < e)] - b
                rows = sel if sel.numel() else None
            batch = Batch.single(s, self._past[s], e - b)
            out = self.model(ids[b:e], batch, self.cache.layers, self.rope, rows, self.fused, self.segments)
            self._past[s] += e - b
            if out is not None:
                outs.append(out)
        if not outs:
            result = torch.empty(0, self.cfg.n_vocab)
        else:
            result = outs[0] if len(outs) == 1 else torch.cat(outs)
        self._count(n, t0)
        return result

    @torch.inference_mode()
    def decode_batch(self, items: Sequence[tuple[int, Sequence[int]]]) -> list[torch.Tensor]:
        """Several sequences' new tokens, (seq id, tokens) each (a sequence at most once), in ONE forward
        pass; returns each item's last-token logits, float32 (1, n_vocab)."""
        if not items:
            return []
        runs, i = [], 0
        seen = set()
        for seq, toks in items:
            s = self._seq(seq)
            if s in seen:
                raise InputError(f"sequence {seq} appears twice in one batch")
            seen.add(s)
            if not toks:
                raise ValueError(f"decode_batch: sequence {seq} has no tokens")
            if self._past[s] + len(toks) > self.n_ctx:
                raise InputError(f"{len(toks)} more tokens do not fit in sequence {seq}'s context "
                                 f"({self._past[s]} of {self.n_ctx} used); raise -c")
            runs.append(Run(s, i, i + len(toks), self._past[s], self._past[s] + len(toks)))
            i += len(toks)
        t0 = time.perf_counter()
        self.threads.use(batch=i > 1)
        ids = torch.tensor([t for _, toks in items for t in toks], dtype=torch.long)
        last = torch.tensor([r.i1 - 1 for r in runs])
        out = self.model(ids, Batch.of_runs(runs), self.cache.layers, self.rope, last, self.fused, self.segments)
        for r in runs:
            self._past[r.seq] = r.p1
        self._count(i, t0)
        return [out[j:j + 1] for j in range(len(runs))]

    def _count(self, n: int, t0: float) -> None:
        ms = (time.perf_counter() - t0) * 1e3
        if n > 1:
            self.perf.t_p_eval_ms += ms
            self.perf.n_p_eval += n
        else:
            self.perf.t_eval_ms += ms
            self.perf.n_eval += 1
        if not self._evaluated_once:
            self._evaluated_once = True
            self.perf.t_load_ms = (time.perf_counter() - self.lm.t_start) * 1e3

    def warmup(self, tokens: Sequence[int]) -> None:
        """llama.cpp's warmup: one decode (of [BOS, EOS]), then an empty cache and fresh counters."""
        if tokens:
            self.decode(list(tokens)[: self.n_batch])
        self.clear()
        self.perf.reset()

    def shift(self, keep: int, discard: int, seq: int = 0) -> None:
        s = self._seq(seq)
        self.cache.shift(keep, discard, self._past[s], self.model.rope_freqs.weight, s)
        self._past[s] -= discard


def resolve_keep(keep: int, n_prompt: int, add_bos: bool) -> int:
    """--keep: -1 (or more than the prompt) keeps the whole prompt; otherwise the BOS is kept on top."""
    if keep < 0 or keep > n_prompt:
        return n_prompt
    return keep + int(add_bos)


class Generation:
    """Iterate to get sampled token ids; `stop_reason` says why it ended:
    "eog" (an end-of-generation token, included in the output), "n_predict", "context_full".
    The consumer may stop early (a reverse prompt) simply by not asking for more."""

    def __init__(self, ctx: Context, prompt: Sequence[int], sampler: Sampler, *, n_predict: int = -1,
                 n_keep: int = 0, context_shift: bool = True, eog_ids: Sequence[int] = (),
                 ignore_eos: bool = False) -> None:
        if not prompt:
            raise InputError("the prompt is empty; give some text with -p or -f")
        if len(prompt) > ctx.n_ctx - 4:
            raise InputError(f"prompt is too long ({len(prompt)} tokens, max {ctx.n_ctx - 4}); "
                             f"raise -c or shorten the prompt")
        self.ctx, self.prompt, self.sampler = ctx, list(prompt), sampler
        self.n_predict, self.n_keep, self.context_shift = n_predict, n_keep, context_shift
        self.eog = frozenset(int(t) for t in eog_ids)
        self.ignore_eos = ignore_eos
        self.stop_reason: str | None = None
        self.n_shifts = 0

    def __iter__(self) -> Iterator[int]:
        ctx, smp, perf = self.ctx, self.sampler, self.ctx.perf
        for t in self.prompt:  # the prompt enters the penalty history (main.cpp)
            smp.accept(t)
        logits = None
        for s in range(0, len(self.prompt), ctx.n_batch):  # llama_decode per n_batch, as main.cpp
            logits = ctx.decode(self.prompt[s:s + ctx.n_batch])
        n_remain = self.n_predict
        while True:
            t0 = time.perf_counter()
            tok = smp.sample(logits[-1])
            smp.accept(tok)
            perf.t_sample_ms += (time.perf_counter() - t0) * 1e3
            perf.n_sample += 1
            n_remain -= 1
            yield tok
            if tok in self.eog and not self.ignore_eos:
                self.stop_reason = "eog"
                return
            if n_remain == 0:
                self.stop_reason = "n_predict"
                return
            if ctx.n_past + 1 >= ctx.n_ctx:
                if not self.context_shift or self.n_predict == -2:
                    self.stop_reason = "context_full"
                    return
                n_discard = (ctx.n_past - self.n_keep) // 2
                ctx.shift(self.n_keep, n_discard)
                self.n_shifts += 1
            logits = ctx.decode([tok])
