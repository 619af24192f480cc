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

_M64 = (1 << 64) - 1
_MUL = (0xC6A4A793 << 32) + 0x5BD1E995
_SEED = 0xC70F6907
_BUCKETS = (13, 29, 59, 127, 257, 541, 1109, 2357, 5087, 10273, 20753, 42043, 85229, 172933, 351061, 712697,
            1447153)
_BEFORE_BEGIN = -2  # a bucket whose first node is the list head


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


def iteration_order(keys: Sequence[bytes]) -> list[int] | None:
    """The values of `m[keys[i]] = i` (i = 0, 1, ...) in the order libstdc++ iterates the map; a repeated key
    keeps its first position and its last value. None for more keys than the observed bucket counts cover."""
    nxt: list[int] = []
    codes: list[int] = []
    vals: list[int] = []
    where: dict[bytes, int] = {}
    n_buckets, grown = 1, -1
    buckets: list[int | None] = [None]  # bucket -> node before its first node (or _BEFORE_BEGIN)
    head = -1
    for i, key in enumerate(keys):
        node = where.get(key)
        if node is not None:
            vals[node] = i
            continue
        if len(nxt) + 1 > (n_buckets if grown >= 0 else 0):
            grown += 1
            if grown == len(_BUCKETS):
                return None
            n_buckets = _BUCKETS[grown]
            new: list[int | None] = [None] * n_buckets
            p, head, first_bucket = head, -1, 0
            while p != -1:
                q = nxt[p]
                b = codes[p] % n_buckets
                prev = new[b]
                if prev is None:
                    nxt[p] = head
                    head = p
                    new[b] = _BEFORE_BEGIN
                    if nxt[p] != -1:
                        new[first_bucket] = p
                    first_bucket = b
                else:
                    if prev == _BEFORE_BEGIN:
                        nxt[p] = head
                        head = p
                    else:
                        nxt[p] = nxt[prev]
                        nxt[prev] = p
                p = q
            buckets = new
        node = len(nxt)
        code = std_hash(key)
        nxt.append(-1)
        codes.append(code)
        vals.append(i)
        where[key] = node
        b = code % n_buckets
        prev = buckets[b]
        if prev is None:
            nxt[node] = head
            head = node
            if nxt[node] != -1:
                buckets[codes[nxt[node]] % n_buckets] = node
            buckets[b] = _BEFORE_BEGIN
        elif prev == _BEFORE_BEGIN:
            nxt[node] = head
            head = node
        else:
            nxt[node] = nxt[prev]
            nxt[prev] = node
    out = []
    p = head
    while p != -1:
        out.append(vals[p])
        p = nxt[p]
    return out
