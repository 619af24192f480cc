"""Byte-level BPE exactly as llama.cpp's llm_tokenizer_bpe_session merges a word.

Per pre-tokenized word (src/llama-vocab.cpp): the word's UTF-8 bytes become GPT-2 byte characters; with
`ignore_merges` a word that is itself a token is emitted whole; otherwise the adjacent pair with the lowest
merge rank is merged until none is left (ties: leftmost); each final symbol is looked up, and one that is not
a token is emitted byte by byte where a one-byte token exists (otherwise dropped).

Two engines give that result:
  * Hugging Face `tokenizers` (Rust) BPE model: same priority (rank, then position), same `ignore_merges`
    rule. It needs every merge's parts and result to be tokens, which real vocabularies satisfy;
  * `PyBpe`, a direct transcription, used when the vocabulary breaks that rule (and by the tests as a check
    on the Rust engine).
Words repeat, so the ids of each word are cached per tokenizer on top of either engine.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .merge import heap_merge
from .unicode import byte_encode_table

WordEncoder = Callable[[str], Sequence[int]]  # byte-encoded word -> ids


class PyBpe:
    """Reference engine: llama.cpp's merge loop, transcribed."""

    def __init__(self, token_to_id: dict[str, int], merges: Sequence[tuple[str, str]], ignore_merges: bool) -> None:
        self._vocab = token_to_id
        ranks: dict[tuple[str, str], int] = {}
        for i, pair in enumerate(merges):
            ranks.setdefault(pair, i)
        self._ranks = ranks
        self._ignore_merges = ignore_merges

    def __call__(self, word: str) -> list[int]:
        vocab = self._vocab
        if self._ignore_merges:
            tid = vocab.get(word)
            if tid is not None:
                return [tid]
        sym = heap_merge(list(word), lambda a, b: self._ranks.get((a, b)))

        out: list[int] = []
        for s in sym:
            tid = vocab.get(s)
            if tid is not None:
                out.append(tid)
            else:
                for b in s.encode("utf-8"):  # only a one-byte (ASCII) string can be a token
                    if b < 0x80:
                        t = vocab.get(chr(b))
                        if t is not None:
                            out.append(t)
        return out


def word_engine(token_to_id: dict[str, int], merges: Sequence[tuple[str, str]], ignore_merges: bool,
                engine: str = "auto") -> tuple[WordEncoder, str]:
    """The word encoder for a vocabulary and its name: "tokenizers-bpe" (Rust, with PyBpe for the words it
    cannot do exactly) or "python-bpe". engine: "auto" | "rust" | "python"."""
    py = PyBpe(token_to_id, merges, ignore_merges)
    if engine == "python":
        return py, "python-bpe"
    seen: set[tuple[str, str]] = set()
    clean: list[tuple[str, str]] = []
    for a, b in merges:
        if (a, b) in seen:
            continue  # a repeated pair keeps its first rank, as in llama.cpp
        if a not in token_to_id or b not in token_to_id or a + b not in token_to_id:
            # llama.cpp would still merge the pair into a non-token; only PyBpe does that
            if engine == "rust":
                raise ValueError(f"merge {a!r} {b!r} has a part or result outside the vocabulary")
            return py, "python-bpe"
        seen.add((a, b))
        clean.append((a, b))
    # Dropping repeated pairs shifts later ranks down, but only their order matters ("lowest rank first").
    from tokenizers import models

    model = models.BPE(vocab=dict(token_to_id), merges=clean, ignore_merges=ignore_merges, fuse_unk=False,
                       byte_fallback=False)
    tokenize = model.tokenize

    def rust(word: str) -> list[int]:
        return [t.id for t in tokenize(word)]

    # A byte character missing from the vocabulary (SmolLM2 lacks e.g. the one for b'\x04') stays a symbol
    # that blocks merges in llama.cpp but is dropped before merging by `tokenizers`: such words go to PyBpe.
    missing = frozenset(ch for ch in byte_encode_table().values() if ch not in token_to_id)
    if not missing:
        return rust, "tokenizers-bpe"

    def mixed(word: str) -> list[int]:
        return py(word) if not missing.isdisjoint(word) else rust(word)

    return mixed, "tokenizers-bpe"


class BpeEncoder:
    """Pre-tokenized words -> ids, with a per-tokenizer cache keyed by the raw (not byte-encoded) word."""

    def __init__(self, engine: WordEncoder, cache_limit: int = 1 << 16) -> None:
        self._engine = engine
        self._table = byte_encode_table()
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_limit = cache_limit

    def encode(self, words: Sequence[str], out: list[int]) -> None:
        cache = self._cache
        for w in words:
            ids = cache.get(w)
            if ids is None:
                ids = tuple(self._engine(w.encode("utf-8").decode("latin-1").translate(self._table)))
                if len(cache) >= self._cache_limit:
                    cache.clear()
                cache[w] = ids
            out.extend(ids)
