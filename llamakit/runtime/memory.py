"""Process memory settings for inference (called once by the commands, never on import).

Per-call dequantization allocates and frees several MB of temporaries per matmul, from the main thread and
from torch's worker threads. With glibc's defaults each thread's arena keeps its freed temporaries, and the
dynamic mmap threshold moves large blocks into those heaps: about one model size of freed memory stays
resident (peak RSS growth 2.0x the file + KV cache on SmolLM2 Q4_1, scripts/mem_run.py). Mapping every
large block instead costs 4x the decode time in page faults. One arena, all blocks from the heap, and
trimming its top beyond 8 MiB keep the speed and bring the growth to ~1.05x. A no-op outside glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_malloc(mmap_threshold: int = 256 << 20, trim_threshold: int = 8 << 20, arena_max: int = 1) -> bool:
    """mallopt M_ARENA_MAX, M_MMAP_THRESHOLD and M_TRIM_THRESHOLD; True when applied. Call it before the
    first parallel torch op (arenas of threads that already exist are not merged)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(mallopt(k, v) == 1 for k, v in ((M_ARENA_MAX, arena_max), (M_MMAP_THRESHOLD, mmap_threshold),
                                               (M_TRIM_THRESHOLD, trim_threshold)))


def trim_heap() -> bool:
    """glibc malloc_trim(0): return the free pages of the heap to the system, also those between live
    blocks (the loader's repacking leaves many); True when it ran. A no-op outside glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    fn.argtypes = (ctypes.c_size_t,)
    fn(0)
    return True
