"""The order in which GCC's libstdc++ iterates an `std::unordered_map<std::string, int>`.

llama.cpp finds EOT/FIM tokens by walking its `token_to_id` map (filled with `map[text] = id` in id order) and
taking the first matching text. When a vocabulary has two candidates for one role (SmolLM2 has both
`<|im_end|>` and `<|endoftext|>`), the winner is whichever the hash table lists first. On Linux builds that is
libstdc++'s order, reproduced here; macOS builds (libc++) may pick differently.

libstdc++'s hashtable, as relevant here:
  * hash: std::hash<std::string> = _Hash_bytes(data, len, seed 0xc70f6907), a 64-bit MurmurHash2 variant;
  * bucket = hash % bucket_count; the table grows (max load factor 1) when an insert would exceed
    bucket_count elements, to the bucket counts in _BUCKETS (observed with g++ 12 by inserting 1.2 M keys one
    at a time and printing bucket_count());
  * all nodes form one singly linked list; a node whose bucket is empty goes to the front of the list,
    otherwise right after the node before its bucket's first node; a rehash re-links the nodes in list order
    by the same rule.
Verified against a g++ 12 build on the SmolLM2, GPT-2 and Llama vocabularies and 300 000 synthetic keys with
repeats (the whole iteration order, not only the winner).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_M64 = (1 << 64) - 1
_MUL = (0xC6A4A793 << 32) + 0x5BD1E995
_SEED = 0xC70F6907
_BUCKETS = (13, 29, 59, 127, 257, 541, 1109, 2357, 5087, 10273, 20753, 42043, 85229, 172933, 351061, 712697,
            1447153)


def _shift_mix(v: int) -> int:
    return v ^ (v >> 47)


def std_hash(data: bytes) -> int:
    """std::hash<std::string> of libstdc++ on 64-bit targets."""
    n = len(data)
    aligned = n & ~7
    h = (_SEED ^ (n * _MUL)) & _M64
    for p in range(0, aligned, 8):  # 8-byte little-endian words
        d = (_shift_mix((int.from_bytes(data[p : p + 8], "little") * _MUL) & _M64) * _MUL) & _M64
        h = ((h ^ d) * _MUL) & _M64
    if n & 7:  # the 1..7 remaining bytes, little-endian
        h = ((h ^ int.from_bytes(data[aligned:], "little")) * _MUL) & _M64
    h = (_shift_mix(h) * _MUL) & _M64
    return _shift_mix(h)


def std_hashes(keys: Sequence[bytes]) -> np.ndarray:
    """std_hash of every key at once (uint64), vectorised over keys, 8-byte word by word."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    lengths = np.fromiter((len(k) for k in keys), dtype=np.uint64, count=n)
    n_words = int(lengths.max()) // 8 + 1  # room for the zero-padded tail word
    if n * n_words > 8 << 20:  # very long keys: do not build a huge matrix
        return np.array([std_hash(k) for k in keys], dtype=np.uint64)
    words = np.frombuffer(b"".join(k.ljust(8 * n_words, b"\0") for k in keys), dtype="<u8").reshape(n, n_words)
    mul, s47 = np.uint64(_MUL), np.uint64(47)
    full = lengths // np.uint64(8)
    h = np.uint64(_SEED) ^ (lengths * mul)
    for w in range(int(full.max())):
        d = words[:, w] * mul
        d = (d ^ (d >> s47)) * mul
        h = np.where(full > w, (h ^ d) * mul, h)
    tail = words[np.arange(n), full.astype(np.intp)]  # the 1..7 last bytes, zero padded = load_bytes()
    h = np.where((lengths & np.uint64(7)) != 0, (h ^ tail) * mul, h)
    h = (h ^ (h >> s47)) * mul
    return h ^ (h >> s47)


def iteration_order(keys: Sequence[bytes]) -> list[int] | None:
    """The values of `m[keys[i]] = i` (i = 0, 1, ...) in the order libstdc++ iterates the map; a repeated key
    keeps its first position and its last value. None for more keys than the observed bucket counts cover.

    Rather than moving list nodes one by one, each growth stage is one sort. Within a stage (from one rehash to
    the next) every event, the rehash re-linking the old list in order and then each new insert, puts its node
    at the front of its bucket's run, and a bucket whose run is new goes to the front of the list. So the list
    is ordered by the time its bucket was first filled (latest first), then by the node's own time (latest
    first), times counted from the start of the stage.
    """
    if len(set(keys)) == len(keys):
        distinct, values = list(keys), np.arange(len(keys))
    else:
        first: dict[bytes, int] = {}
        last: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
            last[k] = i
        distinct = sorted(first, key=first.__getitem__)  # nodes in insertion order
        values = np.array([last[k] for k in distinct], dtype=np.intp)
    n = len(distinct)
    if n > _BUCKETS[-1]:
        return None
    codes = std_hashes(distinct)
    order = np.zeros(0, dtype=np.intp)
    lo = 0
    for n_buckets in _BUCKETS:
        if lo >= n:
            break
        hi = min(n_buckets, n)  # nodes lo..hi-1 are inserted while there are n_buckets buckets
        seq = np.concatenate([order, np.arange(lo, hi, dtype=np.intp)])  # events in time order
        bucket = codes[seq] % np.uint64(n_buckets)
        _, first_event, inverse = np.unique(bucket, return_index=True, return_inverse=True)
        t = np.arange(len(seq))
        order = seq[np.lexsort((-t, -first_event[inverse]))]
        lo = hi
    return values[order].tolist()
