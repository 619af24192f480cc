"""Prompt-processing and generation speed, measured as llama-bench does (examples/llama-bench).

pp<N>: N random tokens (BOS first) decoded from an empty cache in n_batch pieces; tg<N>: N single-token
decodes from an empty cache. One untimed warmup per test, then `reps` timed runs; t/s = mean +/- sample
standard deviation of the per-run rates.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..gguf.constants import file_type_name
from .generate import Context
from .loader import LoadedModel


@dataclass(frozen=True)
class BenchResult:
    test: str  # "pp512", "tg128"
    rates: tuple[float, ...]  # tokens per second, one per rep

    @property
    def mean(self) -> float:
        return statistics.fmean(self.rates)

    @property
    def std(self) -> float:
        return statistics.stdev(self.rates) if len(self.rates) > 1 else 0.0


def _tokens(n: int, n_vocab: int, bos: int | None, rng: random.Random) -> list[int]:
    toks = [rng.randrange(n_vocab) for _ in range(n)]
    if bos is not None and toks:
        toks[0] = bos
    return toks


def _bench(ctx: Context, name: str, n: int, step: int, bos: int | None, reps: int, seed: int) -> BenchResult:
    """n random tokens decoded `step` at a time from an empty cache, after one short warmup decode."""
    toks = _tokens(n, ctx.cfg.n_vocab, bos, random.Random(seed))

    def once() -> float:
        ctx.clear()
        t0 = time.perf_counter()
        for s in range(0, n, step):
            ctx.decode(toks[s:s + step])
        return time.perf_counter() - t0

    ctx.clear()
    ctx.decode(toks[: min(32, step)])  # warmup, as llama-bench
    return BenchResult(f"{name}{n}", tuple(n / once() for _ in range(reps)))


def bench_prompt(ctx: Context, n_prompt: int, bos: int | None, reps: int, seed: int = 0) -> BenchResult:
    """Prompt processing: decodes of up to n_batch tokens."""
    return _bench(ctx, "pp", n_prompt, ctx.n_batch, bos, reps, seed)


def bench_gen(ctx: Context, n_gen: int, bos: int | None, reps: int, seed: int = 0) -> BenchResult:
    """Generation: one token per decode."""
    return _bench(ctx, "tg", n_gen, 1, bos, reps, seed)


def run_bench(models: Sequence[str | Path], n_prompt: int, n_gen: int, reps: int, *, n_batch: int = 2048,
              n_ubatch: int = 512, use_mmap: bool = True) -> Iterator[dict[str, str]]:
    """`llamakit bench`: for each model, the pp and tg tests; yields one llama-bench table row per test."""
    import torch

    from .loader import load_model

    if reps < 1:
        raise InputError(f"-r {reps}: give at least 1 repetition")
    for path in models:
        with load_model(path, use_mmap=use_mmap) as lm:
            bos = lm.metadata.get("tokenizer.ggml.bos_token_id")
            ctx = Context(lm, max(n_prompt, n_gen, 1), n_batch, n_ubatch)
            base = {**model_row(lm), "backend": "CPU", "threads": str(torch.get_num_threads())}
            for fn, n in ((bench_prompt, n_prompt), (bench_gen, n_gen)):
                if n > 0:
                    r = fn(ctx, n, bos, reps)
                    yield {**base, "test": r.test, "t/s": f"{r.mean:.2f} ± {r.std:.2f}"}


def model_row(lm: LoadedModel) -> dict[str, str]:
    """llama-bench's model / size / params columns."""
    md = lm.metadata
    ftype = md.get("general.file_type")
    label = md.get("general.size_label") or "?B"
    size = lm.tensor_bytes
    size_s = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.2f} MiB"
    n = lm.n_params
    params_s = f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"
    return {"model": f"{lm.config.architecture} {label} {file_type_name(ftype) if ftype is not None else '?'}",
            "size": size_s, "params": params_s}


def markdown_table(rows: list[dict[str, str]]) -> list[str]:
    cols = ["model", "size", "params", "backend", "threads", "test", "t/s"]
    right = {"size", "params", "threads", "test", "t/s"}
    base = {"model": 30, "size": 10, "params": 10, "backend": 10, "threads": 7, "test": 13, "t/s": 20}  # llama-bench
    widths = {c: max(base[c], *(len(r[c]) for r in rows)) for c in cols}
    head = "| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |"
    rule = "| " + " | ".join(("-" * (widths[c] - 1) + ":") if c in right else "-" * widths[c] for c in cols) + " |"
    body = ["| " + " | ".join(r[c].rjust(widths[c]) if c in right else r[c].ljust(widths[c]) for c in cols) + " |"
            for r in rows]
    return [head, rule, *body]
