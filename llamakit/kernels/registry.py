"""Which kernel computes a weight: (ggml type, device type, backend) -> a kernel object.

    backend "native": the native CPU library (kernels/native.py) for every type it supports, the torch
                      kernels for the rest; NativeBuildError when the library cannot be built or loaded
    backend "torch":  torch kernels only: `Int4PackKernel` for Q4_0/Q4_1 linears on the CPU, the exact
                      dequantizing kernels for everything else (and for embeddings: row lookups)
    backend "auto":   "native" where it builds, else "torch" (`native_status` says why not, once)
    backend "exact":  the exact dequantizing torch kernels only, over the file's bytes (the reference)
    device "cuda":    the Triton kernels (kernels/triton_kernels.py) unless backend is "torch"/"exact" or
                      triton is not installed; then the exact torch kernels, which run on any device

Every kernel has `name` ("native-avx512", "torch-int4pack", "torch-dequant"), `prepare(w)` (once, at
load: the working form of the file's rows; identity for torch-dequant), `linear(x, w, n_in)` and
`rows(w, ids, n_in)` over the prepared form.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..gguf.constants import GGMLType
from . import int4pack
from .torch_kernels import Kernel, torch_kernel_for

BACKENDS = ("auto", "native", "torch", "exact")
USES = ("linear", "rows")


@dataclass(frozen=True)
class NativeStatus:
    """The native library for a variant (`lib`, a NativeLibrary) or why it is unavailable (`reason`)."""

    lib: Any
    variant: str | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.lib is not None


@functools.lru_cache(maxsize=None)
def native_status(variant: str | None = None) -> NativeStatus:
    """Build/load the native library once per process and variant (the compiled object is cached on
    disk by native/build.py; this caches the answer, so a failed build is tried once)."""
    from .native.build import NativeBuildError

    try:
        from .native import native_library

        lib = native_library(variant)
        return NativeStatus(lib, lib.variant(), "")
    except NativeBuildError as e:
        return NativeStatus(None, None, str(e))
    except (ImportError, OSError, AttributeError) as e:
        return NativeStatus(None, None, f"cannot load the native kernels: {e}")


def native_kernel(ggml_type: GGMLType, variant: str | None = None, what: str = "tensor") -> Kernel | None:
    """The native kernel for a type, or None when the library does not compute it. Raises
    NativeBuildError when the library cannot be built or loaded."""
    st = native_status(variant)
    if not st.ok:
        from .native.build import NativeBuildError

        raise NativeBuildError(st.reason)
    if not st.lib.supports(ggml_type):
        return None
    from .native import NativeKernel

    k = NativeKernel(ggml_type, variant=variant, what=what)
    k.name = f"native-{st.variant}"  # type: ignore[attr-defined]  (what kernel_summary counts)
    return k


def kernel_for(ggml_type: GGMLType, device_type: str = "cpu", *, backend: str = "auto",
               variant: str | None = None, what: str = "tensor", use: str = "linear") -> Kernel:
    """The kernel for one weight. `use`: "linear" (a matmul weight) or "rows" (an embedding table).
    UnsupportedError (naming `what`) for a type llamakit cannot compute at all."""
    if backend not in BACKENDS:
        raise InputError(f"unknown kernel backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if use not in USES:
        raise ValueError(f"use must be one of {USES}, not {use!r}")
    ggml_type = GGMLType(ggml_type)
    exact = torch_kernel_for(ggml_type, what=what)  # also the type check: IQ* and unknown types raise here
    if device_type == "cuda" and backend not in ("torch", "exact"):  # Triton's fused kernels when installed
        from . import triton_kernels

        fused = triton_kernels.lookup(ggml_type, use)
        if fused is not None:
            return fused
    if device_type != "cpu" or backend == "exact":
        return exact
    if backend == "native" or (backend == "auto" and native_status(variant).ok):
        k = native_kernel(ggml_type, variant, what)
        if k is not None:
            return k
    if use == "linear" and ggml_type in int4pack.TYPES and int4pack.available():
        return int4pack.Int4PackKernel(ggml_type)
    return exact


def unavailable_line(variant: str | None = None) -> str | None:
    """The one line `auto` prints when it falls back to torch (None when native kernels load)."""
    st = native_status(variant)
    if st.ok:
        return None
    return f"llamakit: native kernels unavailable ({st.reason}); using torch kernels (slower)"
