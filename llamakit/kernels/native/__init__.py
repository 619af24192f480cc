"""The native CPU kernel library: build.py compiles the C sources at first use; kernel.py is the Python side.

kernel.py (torch tensors) is imported on first use of its names, so that `native.build` alone (the quantizers'
path, which never needs torch) costs no torch import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kernel import NativeKernel, NativeLibrary, load_library, native_library

__all__ = ["NativeKernel", "NativeLibrary", "load_library", "native_library"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import kernel

        return getattr(kernel, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
