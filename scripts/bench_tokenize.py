"""Encoding speed of llamakit's tokenizers on ../shared/reference/tiny-llama/corpus.txt (one thread).

    python scripts/bench_tokenize.py [--corpus FILE] [--repeat N]

Prints tokens/s for each vocabulary: SentencePiece (ggml-vocab-llama-spm.gguf, target >= 200k tokens/s) and
byte-level BPE (ggml-vocab-gpt-2.gguf and SmolLM2, target >= 1M tokens/s). "cold" is the first encode of the
corpus by a fresh tokenizer (every word merged once; best of 3 tokenizers); "warm" is the best of N later
encodes (word caches hit).
The Rust `tokenizers` library is pinned to one thread (RAYON_NUM_THREADS=1) before it is imported. Rates are
given per CPU second of this process ("cpu": what one core does, steadier on a shared machine) and per wall
second ("wall").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # benchmark on one core; set before `tokenizers` loads
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("LLAMAKIT_SHARED", ROOT.parent / "shared"))
REF = SHARED / "reference"


def _load(path: Path, engine: str = "auto"):
    from llamakit.gguf import GGUFReader
    from llamakit.tokenizer import Tokenizer

    t0 = time.perf_counter()
    with GGUFReader(path) as r:
        tok = Tokenizer.from_metadata(r.metadata, engine=engine)
    return tok, time.perf_counter() - t0


def _timed(fn):  # (result, wall seconds, CPU seconds of this process)
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def bench(name: str, path: Path, text: str, repeat: int, target: float, engine: str = "auto") -> None:
    cold = [float("inf")] * 2  # best wall, best CPU
    warm = [float("inf")] * 2
    t_load = float("inf")
    ids: list[int] = []
    for _ in range(3):  # best of 3 fresh tokenizers for "cold", so one noisy run does not decide it
        tok, t = _load(path, engine)
        t_load = min(t_load, t)
        ids, w, c = _timed(lambda: tok.encode(text, add_special=False))
        cold = [min(cold[0], w), min(cold[1], c)]
    for _ in range(repeat):
        again, w, c = _timed(lambda: tok.encode(text, add_special=False))
        warm = [min(warm[0], w), min(warm[1], c)]
    assert again == ids
    n = len(ids)
    k = 1e3
    print(f"{name:27s} {tok.engine:14s} {n:6d} tok  load {t_load * 1e3:4.0f} ms  "
          f"cold {n / cold[1] / k:6.0f}k/s cpu {n / cold[0] / k:6.0f}k/s wall  "
          f"warm {n / warm[1] / k:6.0f}k/s cpu {n / warm[0] / k:6.0f}k/s wall  "
          f"cold/target x{n / cold[1] / target:.2f}")


def bench_hf_reference(path: Path, text: str, repeat: int) -> None:
    """For scale: Hugging Face `tokenizers` end to end (its own ByteLevel regex, Rust) on the same vocabulary."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from llamakit.gguf import GGUFReader

    with GGUFReader(path) as r:
        md = r.metadata
        vocab = {t: i for i, t in enumerate(md["tokenizer.ggml.tokens"])}
        merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    best = float("inf")
    n = 0
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        n = len(hf.encode(text, add_special_tokens=False).ids)
        best = min(best, time.perf_counter() - t0)
    print(f"{'gpt-2 via HF tokenizers':27s} {'(reference)':14s} {n:6d} tok  "
          f"best of {repeat + 1} (wall): {n / best / 1e3:6.0f}k/s (its own word cache warm after the first run)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=REF / "tiny-llama" / "corpus.txt")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smollm2", type=Path, default=None, help="SmolLM2 GGUF (default: the cached default model)")
    args = ap.parse_args()
    text = args.corpus.read_text(encoding="utf-8")
    print(f"corpus {args.corpus} ({len(text.encode())} bytes), one thread")
    vocab = REF / "vocab"
    bench("llama-spm (SPM)", vocab / "ggml-vocab-llama-spm.gguf", text, args.repeat, 200e3)
    bench("gpt-2 (BPE)", vocab / "ggml-vocab-gpt-2.gguf", text, args.repeat, 1e6)
    bench("gpt-2 (BPE, python engine)", vocab / "ggml-vocab-gpt-2.gguf", text, args.repeat, 1e6, engine="python")
    bench_hf_reference(vocab / "ggml-vocab-gpt-2.gguf", text, args.repeat)
    smol = args.smollm2
    if smol is None:
        from llamakit.runtime.default_model import default_model_path

        smol = default_model_path()
    bench("SmolLM2 (BPE, smollm)", smol, text, args.repeat, 1e6)


if __name__ == "__main__":
    main()
