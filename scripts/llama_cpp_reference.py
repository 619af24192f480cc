"""llama.cpp's own figures for a GGUF, through llama-cpp-python, to compare llamakit against.

    PYTHONPATH=/path/to/llama-cpp-python/site python scripts/llama_cpp_reference.py MODEL.gguf \
        [--ppl TEXT [-c 512] [--chunks 8]] [--bench [-p 512] [-n 128] [-r 3]] [-t 2]

llama-cpp-python is not a llamakit dependency: install it anywhere (it compiles llama.cpp, e.g.
`pip install --no-deps --target DIR llama-cpp-python==0.3.36 diskcache`) and put DIR on PYTHONPATH.
--ppl follows examples/perplexity/perplexity.cpp: one trailing newline dropped, tokenized with add_special and
no special parsing, chunks of n_ctx with the first token replaced by BOS when the model adds one, the second
half of each chunk scored. --bench times prompt processing of p random tokens (BOS first) from an empty
cache and n single-token decodes, as llama-bench, printing mean +/- std tokens/s over -r runs.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import numpy as np


def perplexity(llm, text: str, n_ctx: int, n_chunks: int) -> tuple[list[float], float, float]:  # type: ignore[no-untyped-def]
    if text.endswith("\n"):
        text = text[:-1]
    toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    add_bos = bool(llm._model.add_bos_token()) if hasattr(llm._model, "add_bos_token") else False
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    running = []
    for i in range(min(n_chunks, len(toks) // n_ctx) if n_chunks >= 0 else len(toks) // n_ctx):
        chunk = list(toks[i * n_ctx:(i + 1) * n_ctx])
        if add_bos:
            chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float32)
        for j in range(first, n_ctx - 1):
            row = logits[j]
            mx = row.max()
            s = float(np.exp(row - mx).astype(np.float64).sum())
            v = -(float(row[toks[i * n_ctx + j + 1]]) - float(mx) - math.log(s))
            nll += v
            nll2 += v * v
        count += n_ctx - first - 1
        running.append(math.exp(nll / count))
    mean, mean2 = nll / count, nll2 / count
    ppl = math.exp(mean)
    return running, ppl, math.sqrt((mean2 - mean * mean) / (count - 1)) * ppl


def bench(llm, n_prompt: int, n_gen: int, reps: int) -> dict[str, tuple[float, float]]:  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    n_vocab = llm.n_vocab()
    out = {}
    if n_prompt:
        toks = [llm.token_bos()] + [rng.randrange(n_vocab) for _ in range(n_prompt - 1)]
        llm.reset(); llm.eval(toks[:32])  # warmup
        rates = []
        for _ in range(reps):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(toks)
            rates.append(n_prompt / (time.perf_counter() - t0))
        out[f"pp{n_prompt}"] = (statistics.fmean(rates), statistics.stdev(rates) if reps > 1 else 0.0)
    if n_gen:
        toks = [llm.token_bos()] + [rng.randrange(n_vocab) for _ in range(n_gen - 1)]
        llm.reset(); llm.eval(toks[:1])
        rates = []
        for _ in range(reps):
            llm.reset()
            t0 = time.perf_counter()
            for t in toks:
                llm.eval([t])
            rates.append(n_gen / (time.perf_counter() - t0))
        out[f"tg{n_gen}"] = (statistics.fmean(rates), statistics.stdev(rates) if reps > 1 else 0.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ppl", metavar="TEXT")
    ap.add_argument("-c", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=-1)
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-t", type=int, default=2)
    a = ap.parse_args()
    from llama_cpp import Llama, __version__

    print(f"llama-cpp-python {__version__}, {a.t} threads")
    if a.ppl:
        llm = Llama(a.model, n_ctx=a.c, n_batch=a.c, n_ubatch=a.c, logits_all=True, n_threads=a.t, verbose=False)
        running, ppl, err = perplexity(llm, open(a.ppl, encoding="utf-8").read(), a.c, a.chunks)
        print(",".join(f"[{i + 1}]{v:.4f}" for i, v in enumerate(running)))
        print(f"Final estimate: PPL = {ppl:.4f} +/- {err:.5f}")
        del llm
    if a.bench:
        llm = Llama(a.model, n_ctx=max(a.p, a.n) + 8, n_batch=2048, n_ubatch=512, n_threads=a.t,
                    n_threads_batch=a.t, verbose=False)
        for test, (mean, std) in bench(llm, a.p, a.n, a.r).items():
            print(f"llama.cpp {test}: {mean:.2f} ± {std:.2f} t/s")


if __name__ == "__main__":
    main()
