"""llama.cpp's default sampler chain (common/sampling.cpp, src/llama-sampling.cpp), vectorised in torch:

    logit bias -> penalties -> top-k -> top-p -> min-p -> temperature -> dist(seed)

with llama-cli's defaults (common.h): temp 0.8, top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.0 (off),
last 64 tokens, presence/frequency penalty 0. temp <= 0 keeps only the most likely token (greedy). The
random draw uses an explicit torch.Generator seeded from `seed`, so the same seed gives the same tokens
(llama.cpp's mt19937 stream is not reproduced: same seed, different text than llama.cpp).

Cost: a token is sampled on the thread that decodes (or, in the server, on a slot's thread while the other
slots sample too), so the chain avoids torch's intra-op parallel kernels: a full-vocab `clone()` above torch's
grain size (32768 elements, e.g. SmolLM2's 49152) wakes the OpenMP team, which on a machine whose cores are busy
(the native kernels' pool, other slots) waits milliseconds for a core. The logits are copied with numpy (one
memcpy, into a buffer the sampler keeps: a fresh 200 KB array is a fresh mapping, page faults included) and only
when bias or penalties modify them; greedy sampling is one numpy argmax (the first maximum, as torch.argmax), not
a top-k.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: draw a random seed


@dataclass(frozen=True)
class SamplingParams:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64  # 0 = off; -1 = the context size (resolve before building the Sampler)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_keep: int = 0
    seed: int = DEFAULT_SEED


def resolve_seed(seed: int) -> int:
    """-1 / LLAMA_DEFAULT_SEED -> a random 32-bit seed (llama.cpp prints the one it used)."""
    if seed < 0 or seed == DEFAULT_SEED:
        return int.from_bytes(os.urandom(4), "little")
    return seed & 0xFFFFFFFF


class Sampler:
    """accept(token) records history for the penalties; sample(logits) picks the next token."""

    def __init__(self, params: SamplingParams, n_vocab: int, logit_bias: dict[int, float] | None = None,
                 generator: torch.Generator | None = None) -> None:
        if params.repeat_last_n < 0:
            raise ValueError("repeat_last_n = -1 must be resolved to the context size first")
        self.params, self.n_vocab = params, n_vocab
        self.seed = resolve_seed(params.seed)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        self.prev: deque[int] = deque(maxlen=params.repeat_last_n)  # the penalty window
        self._bias = None
        self._scratch: np.ndarray | None = None  # the modified copy of the logits, reused from token to token
        if logit_bias:
            self._bias_ids = torch.tensor(list(logit_bias), dtype=torch.long)
            self._bias = torch.tensor(list(logit_bias.values()), dtype=torch.float32)
            self._bias_ids_np, self._bias_np = self._bias_ids.numpy(), self._bias.numpy()

    def accept(self, token: int) -> None:
        self.prev.append(int(token))

    def apply_penalties(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.repeat_last_n == 0 or (p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0
                                    and p.presence_penalty == 0.0) or not self.prev:
            return logits
        ids, counts = torch.tensor(self.prev, dtype=torch.long).unique(return_counts=True)
        ids, counts = ids[ids < self.n_vocab], counts[ids < self.n_vocab]
        lg = logits[ids]
        lg = torch.where(lg <= 0, lg * p.repeat_penalty, lg / p.repeat_penalty)
        lg = lg - (counts.float() * p.frequency_penalty + p.presence_penalty)
        logits[ids] = lg
        return logits

    def _modifies(self) -> bool:
        """True when bias or penalties change the logits (then they are applied to a copy)."""
        p = self.params
        return self._bias is not None or bool(
            p.repeat_last_n != 0 and self.prev
            and (p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0))

    def _prepared(self, logits: torch.Tensor) -> torch.Tensor:
        """float32 CPU (n_vocab,) after bias and penalties; the caller's tensor is never modified."""
        logits = logits.detach().to("cpu", torch.float32)
        if not self._modifies():
            return logits
        if self._scratch is None or self._scratch.shape != logits.shape:
            self._scratch = np.empty(logits.shape, np.float32)
        np.copyto(self._scratch, logits.numpy())  # a serial memcpy (see the module docstring)
        logits = torch.from_numpy(self._scratch)  # valid until the next call: candidates() returns new tensors
        if self._bias is not None:
            self._scratch[self._bias_ids_np] += self._bias_np  # float32 adds, as torch's; no GIL release
        return self.apply_penalties(logits)

    def candidates(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float (n_vocab,) -> the surviving (logits, ids) after bias, penalties, top-k, top-p and min-p,
        sorted by logit, descending (as llama.cpp's array is once top-k has run).

        top-p and min-p only pick how many of the sorted top-k survive: the float32 softmax and cumsum are
        torch's, the comparisons are done in numpy on the same float32 values (a float32 threshold, as torch
        casts a Python scalar), so the cut is the one the tensor expressions would give, for fewer torch ops."""
        p = self.params
        logits = self._prepared(logits)
        n = logits.shape[0]
        k = n if p.top_k <= 0 else min(p.top_k, n)
        vals, ids = torch.topk(logits, k, sorted=True)
        keep = k
        if p.top_p < 1.0:
            cum = torch.cumsum(torch.softmax(vals, 0), 0).numpy()  # non-decreasing: the first hit is the cut
            hits = np.flatnonzero(cum >= np.float32(p.top_p))
            if hits.size and max(int(hits[0]), p.min_keep - 1) < k:
                keep = max(int(hits[0]), p.min_keep - 1) + 1
        if p.min_p > 0.0:
            v = vals.numpy()[:keep]
            threshold = v[0] + np.float32(math.log(p.min_p))  # float32 + float32, as the tensor add
            keep = min(keep, max(int(np.count_nonzero(v >= threshold)), p.min_keep, 1))
        return vals[:keep], ids[:keep]

    def sample(self, logits: torch.Tensor) -> int:
        if self.params.temp <= 0.0:
            # the temp sampler keeps only the max, which top-k / top-p / min-p always keep: the argmax of the
            # biased and penalized logits (numpy's: serial, the first maximum)
            return int(np.argmax(self._prepared(logits).numpy()))
        vals, ids = self.candidates(logits)
        probs = torch.softmax(vals / self.params.temp, 0)
        return int(ids[torch.multinomial(probs, 1, generator=self.generator)])
