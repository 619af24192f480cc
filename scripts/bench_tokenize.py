"""Encoding speed of llamakit's tokenizers on ../shared/reference/tiny-llama/corpus.txt (one thread).

    python scripts/bench_tokenize.py [--corpus FILE] [--repeat N]

Prints tokens/s for each vocabulary: SentencePiece (ggml-vocab-llama-spm.gguf, target >= 200k tokens/s) and
byte-level BPE (ggml-vocab-gpt-2.gguf and SmolLM2, target >= 1M tokens/s). "cold" is the first encode of the
corpus by a fresh tokenizer (every word merged once); "warm" is the best of N later encodes (word caches hit).
The Rust `tokenizers` library is pinned to one thread (RAYON_NUM_THREADS=1) before it is imported.
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


def bench(name: str, path: Path, text: str, repeat: int, target: float, engine: str = "auto") -> None:
    tok, t_load = _load(path, engine)
    t0 = time.perf_counter()
    ids = tok.encode(text, add_special=False)
    cold = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        again = tok.encode(text, add_special=False)
        best = min(best, time.perf_counter() - t0)
    assert again == ids
    n = len(ids)
    warm_rate = n / best
    print(f"{name:28s} {tok.engine:15s} {n:7d} tokens  load {t_load * 1e3:6.0f} ms  "
          f"cold {n / cold / 1e3:8.0f} k tok/s  warm {warm_rate / 1e3:8.0f} k tok/s  "
          f"(target {target / 1e3:.0f} k: cold x{n / cold / target:.2f}, warm x{warm_rate / target:.2f})")


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
    smol = args.smollm2
    if smol is None:
        from llamakit.runtime.default_model import default_model_path

        smol = default_model_path()
    bench("SmolLM2 (BPE, smollm)", smol, text, args.repeat, 1e6)


if __name__ == "__main__":
    main()
