"""`llamakit info --system`: what this machine gives the engine (CPU features, the native library, threads,
torch, CUDA) and which kernel each ggml type gets with the default backend."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from ..kernels.native.build import cpu_variants
from ..kernels.registry import kernel_for, native_status
from ..quants import CODECS
from .threads import allowed_cpus, physical_cores

# the /proc/cpuinfo flags the kernels care about
FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq",
            "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "neon", "asimd")


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "model name" and val.strip():
                name = val.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(val.split())
    except OSError:
        pass
    return name, flags


def system_info(backend: str = "auto") -> dict[str, Any]:
    name, flags = _cpuinfo()
    st = native_status()
    kernels = {}
    for t in CODECS:
        kernels[t.name] = kernel_for(t, backend=backend if backend != "native" or st.ok else "torch").name
    cuda = torch.cuda.is_available()
    return {
        "cpu": name,
        "machine": platform.machine(),
        "cpu_features": [f for f in FEATURES if f in flags],
        "native_variants": cpu_variants(),
        "native": ({"loaded": True, "variant": st.variant} if st.ok else {"loaded": False, "reason": st.reason}),
        "threads": {"default": physical_cores(), "allowed_cpus": len(allowed_cpus()),
                    "torch": torch.get_num_threads()},
        "torch": torch.__version__,
        "cuda": ({"available": True, "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
                 if cuda else {"available": False}),
        "backend": backend,
        "kernels": kernels,
    }
