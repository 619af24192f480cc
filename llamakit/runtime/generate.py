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
from .kv_cache import KVCache
from .loader import LoadedModel
from .sampling import Sampler


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


class Context:
    """A model with a KV cache for n_ctx positions; `decode` appends tokens and returns logits."""

    def __init__(self, lm: LoadedModel, n_ctx: int, n_batch: int = 2048, n_ubatch: int = 512,
                 cache_dtype: torch.dtype = torch.float32) -> None:
        self.lm, self.model, self.cfg = lm, lm.model, lm.config
        self.n_ctx = n_ctx
        self.n_batch = max(1, n_batch)
        self.n_ubatch = max(1, min(n_ubatch, self.n_batch))
        self.cache = KVCache(self.cfg, n_ctx, lm.placement.blocks, cache_dtype)
        self.n_past = 0
        self.perf = Perf(t_start=lm.t_start)
        self._evaluated_once = False

    @torch.inference_mode()
    def decode(self, tokens: Sequence[int], logits: str | torch.Tensor = "last") -> torch.Tensor:
        """Process `tokens` at positions [n_past, n_past + len) in physical batches of n_ubatch.
        Returns float32 logits for the last token ("last"), every token ("all"), or an index tensor's rows."""
        n = len(tokens)
        if n == 0:
            raise ValueError("decode needs at least one token")
        if self.n_past + n > self.n_ctx:
            raise InputError(f"{n} more tokens do not fit in the context ({self.n_past} of {self.n_ctx} used); "
                             f"raise -c")
        t0 = time.perf_counter()
        ids = torch.tensor(tokens, dtype=torch.long)
        want = None if isinstance(logits, str) else logits.to(torch.long)
        outs = []
        for s in range(0, n, self.n_ubatch):
            e = min(n, s + self.n_ubatch)
            rows: str | torch.Tensor | None
            if want is None:
                rows = "all" if logits == "all" else ("last" if e == n else None)
            else:
                sel = want[(want >= s) & (want < e)] - s
                rows = sel if sel.numel() else None
            out = self.model(ids[s:e], self.n_past, self.cache.layers, rows)
            self.n_past += e - s
            if out is not None:
                outs.append(out)
        if not outs:
            result = torch.empty(0, self.cfg.n_vocab)
        else:
            result = outs[0] if len(outs) == 1 else torch.cat(outs)
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
        return result

    def clear(self) -> None:
        self.n_past = 0

    def warmup(self, tokens: Sequence[int]) -> None:
        """llama.cpp's warmup: one decode (of [BOS, EOS]), then an empty cache and fresh counters."""
        if tokens:
            self.decode(list(tokens)[: self.n_batch])
        self.clear()
        self.perf.reset()

    def shift(self, keep: int, discard: int) -> None:
        self.cache.shift(keep, discard, self.n_past, self.model.rope_freqs.weight)
        self.n_past -= discard

    # -- minimal engine-contract methods (branch engine replaces them with the multi-sequence versions) ----------
    def n_past_of(self, seq: int = 0) -> int:
        """Positions used by sequence `seq` (one sequence here: seq 0)."""
        if seq != 0:
            raise ValueError(f"sequence {seq}: this context holds one sequence (0)")
        return self.n_past

    def truncate(self, n: int, seq: int = 0) -> None:
        """Keep the first n positions of sequence `seq` (prefix reuse); later decodes overwrite the rest."""
        if not 0 <= n <= self.n_past_of(seq):
            raise ValueError(f"truncate({n}): the sequence holds {self.n_past} positions")
        self.n_past = n

    def kv_export(self, seq: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer copies of K and V of the used positions: (n_head_kv, n_past, head_dim), cache dtype, CPU."""
        n = self.n_past_of(seq)
        return [(k[:, :n].to("cpu", copy=True), v[:, :n].to("cpu", copy=True)) for k, v in self.cache.layers]

    def kv_import(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], seq: int = 0) -> None:
        """The reverse of kv_export: copy the layers into the cache and set n_past."""
        self.n_past_of(seq)
        if len(layers) != len(self.cache.layers):
            raise ValueError(f"kv_import: {len(layers)} layers given, the model has {len(self.cache.layers)}")
        n = int(layers[0][0].shape[1]) if layers else 0
        if n > self.n_ctx:
            raise ValueError(f"kv_import: {n} positions do not fit in the context of {self.n_ctx}")
        for (k, v), (k2, v2) in zip(self.cache.layers, layers):
            if k2.shape != (k.shape[0], n, k.shape[2]) or v2.shape != k2.shape:
                raise ValueError(f"kv_import: layer shape {tuple(k2.shape)} does not match the cache's "
                                 f"({k.shape[0]}, {n}, {k.shape[2]})")
            k[:, :n] = k2.to(k.device, k.dtype)
            v[:, :n] = v2.to(v.device, v.dtype)
        self.n_past = n


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
