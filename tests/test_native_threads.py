"""The native thread pool's job hand-off (k_threads.c): many short jobs of alternating task counts, each task
run exactly once, with its own job's context, and none still running after lk_parallel returned. A pool whose
late worker could claim a task of a finished job segfaulted `llamakit serve` after a few hundred requests; this
self-test caught that pool in 9 of 10 runs of 300k jobs (0.15 s). It runs with 2 and with 3 threads (more threads than this CI's
cores, so workers get descheduled mid-claim, the case that broke)."""

from __future__ import annotations

import pytest

from llamakit.kernels.native import build, load_library


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("variant", ["avx512", "avx2", "scalar"])
def test_parallel_hand_off_is_sound(variant: str, threads: int) -> None:
    if variant not in build.cpu_variants():
        pytest.skip(f"this CPU cannot run the {variant} variant (it runs {build.cpu_variants()})")
    lib = load_library(variant)
    before = lib.get_threads()
    try:
        assert lib.set_threads(threads) == threads
        assert lib.dll.lk_parallel_selftest(1_000_000) == 0
    finally:
        lib.set_threads(before)
