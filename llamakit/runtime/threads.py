"""Thread counts: llama.cpp's defaults and the switch between prompt batches (-tb) and single tokens (-t).

The default is the number of physical cores among the CPUs this process may run on (llama.cpp's
cpu_get_num_physical_cores: distinct thread-sibling sets in sysfs), since SMT siblings share the SIMD
units the kernels saturate.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..kernels.registry import native_status
from .loader import LoadedModel


def allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores among the allowed CPUs (>= 1)."""
    cpus = allowed_cpus()
    sets = set()
    for c in cpus:
        p = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
        try:
            sets.add(p.read_text().strip())
        except OSError:
            return max(1, len(cpus))
    return max(1, len(sets))


class Threads:
    """Applies n_threads (single-token decodes) or n_threads_batch (batches) to torch and the native pool
    when the count changes; None leaves the process settings alone."""

    def __init__(self, lm: LoadedModel, n_threads: int | None, n_threads_batch: int | None = None) -> None:
        for n, flag in ((n_threads, "-t"), (n_threads_batch, "-tb")):
            if n is not None and n < 1:
                from ..errors import InputError

                raise InputError(f"{flag} {n}: give at least 1 thread")
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch or n_threads
        st = native_status(lm.variant) if lm.backend != "torch" else None
        self.lib = st.lib if st is not None and st.ok else None
        self.current: int | None = None

    def use(self, batch: bool) -> None:
        want = self.n_threads_batch if batch else self.n_threads
        if want is None or want == self.current:
            return
        torch.set_num_threads(want)
        if self.lib is not None:
            self.lib.set_threads(want)
        self.current = want
