"""Perplexity as llama.cpp's `llama-perplexity` computes it (examples/perplexity/perplexity.cpp:440-660).

The text is tokenized once (add_special = the model's add_bos, no special-token parsing), cut into chunks of
n_ctx tokens (n_chunk = min(--chunks, n_tokens // n_ctx)); each chunk is evaluated from an empty cache with
its first token replaced by BOS when the model adds one, and only the second half is scored: the logits at
positions first = n_ctx/2 .. n_ctx-2 predict tokens first+1 .. n_ctx-1. After each chunk the running value
exp(nll / count) is printed as `[i]ppl,`; at the end

    Final estimate: PPL = exp(mean nll) +/- ppl * sqrt((mean(nll^2) - mean(nll)^2) / (count - 1))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from .generate import Context


@dataclass
class PerplexityResult:
    ppl: float
    uncertainty: float
    count: int
    running: list[float] = field(default_factory=list)  # the [i] values


def chunk_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float32 (n, vocab), int (n,) -> float64 (n,) negative log-likelihoods, as log_softmax() in
    perplexity.cpp: max in float, sum of expf(l - max) in double."""
    mx = logits.max(dim=1, keepdim=True).values
    z = (logits - mx).exp().double().sum(dim=1)
    picked = (logits.gather(1, targets[:, None]) - mx).double().squeeze(1)
    return -(picked - z.log())


def perplexity(ctx: Context, tokens: Sequence[int], n_chunks: int = -1, bos_id: int | None = None,
               add_bos: bool = False, emit: Callable[[str], None] = lambda s: None,
               log: Callable[[str], None] = lambda s: None) -> PerplexityResult:
    """Score `tokens` in chunks of ctx.n_ctx. `emit` gets the `[i]x.xxxx,` pieces (stdout in llama.cpp),
    `log` the progress lines (stderr)."""
    n_ctx = ctx.n_ctx
    if n_ctx < 3:  # the scored half is positions n_ctx/2 .. n_ctx-2: at least one
        raise InputError(f"perplexity needs -c of at least 3 (got {n_ctx})")
    if n_chunks == 0:
        raise InputError("--chunks 0 scores nothing; give a positive count (or -1 for the whole text)")
    if len(tokens) < 2 * n_ctx:
        raise InputError(f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of {n_ctx}; "
                         f"the text tokenizes to only {len(tokens)} tokens (use a longer text or a smaller -c)")
    n_max = len(tokens) // n_ctx
    n_chunk = n_max if n_chunks < 0 else min(n_chunks, n_max)
    first = n_ctx // 2
    log(f"perplexity: calculating perplexity over {n_chunk} chunks, n_ctx={n_ctx}, "
        f"batch_size={ctx.n_batch}, n_seq=1")
    ids = torch.as_tensor(list(tokens), dtype=torch.long)
    nll = nll2 = 0.0
    count = 0
    result = PerplexityResult(0.0, 0.0, 0)
    rows = torch.arange(first, n_ctx - 1)  # the positions whose logits are scored
    for i in range(n_chunk):
        t0 = time.perf_counter()
        chunk = ids[i * n_ctx:(i + 1) * n_ctx].clone()
        if add_bos and bos_id is not None:
            chunk[0] = bos_id
        ctx.clear()
        logits = []
        for s in range(0, n_ctx, ctx.n_batch):  # one llama_decode per n_batch tokens
            part = chunk[s:s + ctx.n_batch].tolist()
            want = rows[(rows >= s) & (rows < s + len(part))] - s
            out = ctx.decode(part, logits=want)
            if out.shape[0]:
                logits.append(out)
        lg = torch.cat(logits)
        v = chunk_nll(lg, ids[i * n_ctx + first + 1:(i + 1) * n_ctx])
        nll += float(v.sum())
        nll2 += float((v * v).sum())
        count += n_ctx - first - 1
        if i == 0:
            t = time.perf_counter() - t0
            log(f"perplexity: {t:.2f} seconds per pass - ETA {t * n_chunk / 60.0:.2f} minutes")
        running = math.exp(nll / count)
        result.running.append(running)
        emit(f"[{i + 1}]{running:.4f},")
    mean, mean2 = nll / count, nll2 / count
    ppl = math.exp(mean)
    var = mean2 - mean * mean
    result.ppl, result.count = ppl, count
    result.uncertainty = math.sqrt(var / (count - 1)) * ppl if var > 0 else float("nan")
    return result


def final_line(r: PerplexityResult) -> str:
    return f"Final estimate: PPL = {r.ppl:.4f} +/- {r.uncertainty:.5f}"


def run_perplexity(model: str | Path, text: str, *, n_ctx: int = 512, n_chunks: int = -1, n_batch: int = 2048,
                   n_ubatch: int = 512, use_mmap: bool = True, gpu_layers: int = -1,
                   emit: Callable[[str], None] = lambda s: None, log: Callable[[str], None] = lambda s: None
                   ) -> PerplexityResult:
    """`llamakit perplexity`: load, tokenize `text`, score, print the llama_perf context lines."""
    from ..tokenizer import Tokenizer
    from .loader import load_model
    from .completion import describe_offload, prepare_context

    if n_ctx <= 0:
        raise InputError("perplexity needs -c > 0")
    with load_model(model, use_mmap=use_mmap, gpu_layers=gpu_layers) as lm:
        for line in describe_offload(lm, gpu_layers):
            log(line)
        tok = Tokenizer.from_metadata(lm.metadata)
        ctx = prepare_context(lm, n_ctx, n_batch, n_ubatch, log)
        log("perplexity: tokenizing the input ..")
        t0 = time.perf_counter()
        tokens = tok.encode(text, add_special=True, parse_special=False)
        log(f"perplexity: tokenization took {(time.perf_counter() - t0) * 1e3:g} ms")
        result = perplexity(ctx, tokens, n_chunks, tok.bos_id, tok.add_bos, emit=emit, log=log)
        emit("\n")
        log(final_line(result))
        log("")
        for line in ctx.perf.lines()[1:]:
            log(line)
        return result
