"""The priority-queue merge loop shared by llama.cpp's SPM and BPE tokenizers.

Symbols form a linked list; the best adjacent pair (lowest key, then leftmost) is merged into its left symbol
until no pair has a key. A queued pair is stale when a side was merged away (its text is '') or the right side
grew since it was queued: the left side only changes by absorbing its right neighbour (emptying that one), so
comparing the merged length is enough to spot either.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable


def heap_merge(sym: list[str], key: Callable[[str, str], Any]) -> list[str]:
    """Merge `sym` in place by `key(left, right)` (None: not mergeable); returns the non-empty symbols."""
    n = len(sym)
    nxt = list(range(1, n)) + [-1]
    prv = list(range(-1, n - 1))
    heap: list[tuple[Any, int, int, int]] = []  # (key, left, right, merged length)

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            k = key(sym[left], sym[right])
            if k is not None:
                heapq.heappush(heap, (k, left, right, len(sym[left]) + len(sym[right])))

    for i in range(1, n):
        push(i - 1, i)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        a, b = sym[left], sym[right]
        if not a or not b or len(a) + len(b) != size:
            continue
        sym[left] = a + b
        sym[right] = ""
        r2 = nxt[right]
        nxt[left] = r2
        if r2 >= 0:
            prv[r2] = left
        push(prv[left], left)
        push(left, r2)
    return [s for s in sym if s]
