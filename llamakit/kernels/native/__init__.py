"""The native CPU kernel library: build.py compiles the C sources at first use; kernel.py is the Python side."""

from .kernel import NativeKernel, NativeLibrary, load_library, native_library

__all__ = ["NativeKernel", "NativeLibrary", "load_library", "native_library"]
