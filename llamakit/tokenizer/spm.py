"""SentencePiece-style tokenization exactly as llama.cpp's llm_tokenizer_spm_session does it.

The algorithm (src/llama-vocab.cpp): split the text into UTF-8 characters; repeatedly merge the adjacent pair
whose concatenation is a vocabulary token with the highest score (ties: the leftmost pair); every token type
counts, not only NORMAL. A final symbol that is not a token is emitted as byte tokens `<0xNN>`.

Speed without changing the result: merges only ever create vocabulary tokens, so a position that no token
occurrence in the text can straddle is a wall no merge crosses. We cut the escaped text before each U+2581
('▁', an escaped space) unless some vocabulary token with '▁' after its first character occurs across it
(in Llama's vocabulary only runs like '▁▁▁'), and merge the pieces separately. Because the tie-break is
"leftmost" and pieces keep their relative order, the result equals merging the whole text at once. Pieces
repeat (words), so their token ids are cached per tokenizer.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from ..errors import UnsupportedError
from .merge import heap_merge

SPACE = "\u2581"  # '▁', what SentencePiece writes for a space
_NO_PAIR = -math.inf  # "this pair is not a token"; real scores are finite (checked)


class SpmEncoder:
    """Merges escaped text into token ids. Holds only the vocabulary and a cache of pieces."""

    def __init__(self, token_to_id: dict[str, int], scores: Sequence[float], cache_limit: int = 1 << 16) -> None:
        self._vocab = token_to_id
        self._scores = scores
        # tokens with '▁' after their first character: only these can merge across a '▁'
        self._straddlers = tuple(t for t in token_to_id if SPACE in t[1:])
        self._finite = all(math.isfinite(x) for x in scores)
        # When every straddler is a run of '▁' (Llama: '▁▁' .. 16 x '▁'), a run at least as long as the
        # shortest of them is blocked inside and nowhere else, so one regex does the cutting.
        self._cutter: re.Pattern[str] | None = None
        if all(set(t) == {SPACE} for t in self._straddlers):
            m = min((len(t) for t in self._straddlers), default=0)
            long_run = f"{SPACE}{{{m},}}[^{SPACE}]*|" if m else ""
            self._cutter = re.compile(f"{long_run}{SPACE}[^{SPACE}]*|[^{SPACE}]+")
        self._bytes = [self._byte_token(b) for b in range(256)]
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_limit = cache_limit

    def _byte_token(self, b: int) -> int | None:
        # llama_vocab::byte_to_token: "<0xNN>" (upper-case hex), else the byte itself as a one-byte string
        tid = self._vocab.get(f"<0x{b:02X}>")
        if tid is None and b < 0x80:
            tid = self._vocab.get(chr(b))
        return tid

    def encode(self, escaped: str, out: list[int]) -> None:
        """Append the ids for `escaped` (spaces already replaced by '▁') to `out`."""
        cache = self._cache
        for piece in self._pieces(escaped):
            ids = cache.get(piece)
            if ids is None:
                ids = self._merge(piece)
                if len(cache) >= self._cache_limit:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)

    def _pieces(self, s: str) -> list[str]:
        """Cut `s` before each '▁' that no straddling token occurrence covers."""
        if self._cutter is not None:
            return self._cutter.findall(s)
        blocked: set[int] = set()
        for t in self._straddlers:
            start = s.find(t)
            while start >= 0:
                for k in range(1, len(t)):
                    if t[k] == SPACE:
                        blocked.add(start + k)
                start = s.find(t, start + 1)
        out = []
        begin = 0
        pos = s.find(SPACE, 1)
        while pos >= 0:
            if pos not in blocked:
                out.append(s[begin:pos])
                begin = pos
            pos = s.find(SPACE, pos + 1)
        out.append(s[begin:])
        return [p for p in out if p]

    def _merge(self, text: str) -> tuple[int, ...]:
        """Merge one piece: the best pair (highest score, then leftmost) until no pair is a token."""
        n = len(text)
        if n == 1:
            tid = self._vocab.get(text)
            return (tid,) if tid is not None else self._fallback(text)
        if n > 48 or not self._finite:
            return self._merge_heap(text)
        # Short pieces: keep the symbols and the score of each adjacent pair in lists; max() returns the first
        # (leftmost) maximum, which is llama.cpp's tie-break. O(n^2) but all in C for words.
        vocab, scores, none = self._vocab, self._scores, _NO_PAIR
        sym = list(text)
        pair = []
        for i in range(n - 1):
            t = vocab.get(sym[i] + sym[i + 1])
            pair.append(scores[t] if t is not None else none)
        while pair:
            best = max(pair)
            if best == none:
                break
            i = pair.index(best)
            sym[i] += sym.pop(i + 1)
            del pair[i]
            if i > 0:
                t = vocab.get(sym[i - 1] + sym[i])
                pair[i - 1] = scores[t] if t is not None else none
            if i < len(pair):
                t = vocab.get(sym[i] + sym[i + 1])
                pair[i] = scores[t] if t is not None else none
        return self._emit(sym)

    def _merge_heap(self, text: str) -> tuple[int, ...]:
        """llama.cpp's priority-queue formulation, for long pieces (and non-finite scores)."""
        vocab, scores = self._vocab, self._scores

        def key(a: str, b: str) -> float | None:  # max score first (heap is a min-heap), then leftmost
            i = vocab.get(a + b)
            return None if i is None else -scores[i]

        return self._emit(heap_merge(list(text), key))

    def _emit(self, sym: list[str]) -> tuple[int, ...]:
        vocab = self._vocab
        out: list[int] = []
        for s in sym:
            t = vocab.get(s)
            if t is not None:
                out.append(t)
            else:
                out.extend(self._fallback(s))
        return tuple(out)

    def _fallback(self, s: str) -> tuple[int, ...]:
        out = []
        for b in s.encode("utf-8"):
            t = self._bytes[b]
            if t is None:
                raise UnsupportedError(
                    f"the text contains {s!r}, which has no token, and the vocabulary has no byte token "
                    f"<0x{b:02X}> to spell it (llama.cpp fails the same way)")
            out.append(t)
        return tuple(out)
