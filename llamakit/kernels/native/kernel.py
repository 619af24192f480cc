"""The native CPU kernels (library "lk", the C sources k_*.c beside this file) behind the kernel protocol.

    kernel = NativeKernel(GGMLType.Q4_0)          # best variant this CPU runs; variant="avx2" forces one
    wp = kernel.prepare(w)                        # uint8 (rows, row_bytes) file bytes -> prepared uint8
    y = kernel.linear(x, wp, n_in)                # float32 (T, n_in) -> (T, rows)
    e = kernel.rows(wp, ids, n_in)                # dequantized rows, exactly the codec's float32 values

`prepare` repacks once (16 rows interleaved block by block, see k_internal.h); its result replaces the file
bytes in the module and is what `linear` and `rows` take. It has shape (rows, k) with k = the file's
row_bytes when rows is a multiple of 16 (the last group is padded with zero rows otherwise, k slightly
larger), so `w.shape[0]` is still the output size. It is never float.

Quantized formats quantize the activations to 8 bits per call (32-blocks as Q8_0 for the legacy formats
and IQ4_NL, 256-blocks as Q8_K for the K-quants) and use integer dot products: the result differs from
the exact float product by the activation rounding (each x_j moves by at most d_x/2 = amax of its block
/ 254), i.e. |y - W x| <= sum_j |W_ij| amax(block(j)) / 254 plus float32 summation error. F32/F16/BF16
use float32 dot products (no activation quantization).

The library is built at first use per variant (build.py); NativeBuildError when there is no compiler
or the build fails (callers fall back to the torch kernels).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from ...errors import LlamakitError, UnsupportedError
from ...gguf.constants import GGML_BLOCK, GGMLType
from . import build

HERE = Path(__file__).resolve().parent
ABI_VERSION = 3

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_ERRORS = {-1: "type not implemented", -2: "bad shape", -3: "out of memory"}


class NativeLibrary:
    """One loaded variant of the library, with its ctypes signatures declared once."""

    def __init__(self, dll: ctypes.CDLL, variant: str) -> None:
        self.dll = dll
        self._variant = variant
        sig = {
            "lk_variant": (ctypes.c_char_p, []),
            "lk_abi_version": (ctypes.c_int, []),
            "lk_supports": (ctypes.c_int, [ctypes.c_int]),
            "lk_set_threads": (ctypes.c_int, [ctypes.c_int]),
            "lk_get_threads": (ctypes.c_int, []),
            "lk_prepared_size": (ctypes.c_size_t, [ctypes.c_int, _I64, _I64]),
            "lk_prepare": (ctypes.c_int, [ctypes.c_int, _I64, _I64, _P, _P]),
            "lk_matmul": (ctypes.c_int, [ctypes.c_int, _I64, _I64, _P, _I64, _P, _P, _I64]),
            "lk_get_rows": (ctypes.c_int, [ctypes.c_int, _I64, _I64, _P, _I64, _P, _P]),
            "lk_quantize_act": (ctypes.c_int, [ctypes.c_int, _I64, _I64, _P, _P]),
            "lk_parallel_selftest": (_I64, [_I64]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(dll, name)
            fn.restype, fn.argtypes = res, args
        if dll.lk_abi_version() != ABI_VERSION:
            raise build.NativeBuildError(f"native library ABI {dll.lk_abi_version()}, expected {ABI_VERSION}")

    def variant(self) -> str:
        return self._variant

    def supports(self, ggml_type: int) -> bool:
        return bool(self.dll.lk_supports(int(ggml_type)))

    def set_threads(self, n: int) -> int:
        return int(self.dll.lk_set_threads(int(n)))

    def get_threads(self) -> int:
        return int(self.dll.lk_get_threads())

    def check(self, rc: int, what: str) -> int:
        if rc < 0:
            raise LlamakitError(f"native {what} failed: {_ERRORS.get(rc, rc)}")
        return rc


def load_library(variant: str | None = None) -> NativeLibrary:
    """Build (once, cached on disk) and load the library for `variant` (default: the best this CPU runs)."""
    dll, v = build.load("lk", sorted(HERE.glob("k_*.c")), variant)
    return NativeLibrary(dll, v)


@functools.cache
def native_library(variant: str | None = None) -> NativeLibrary:
    """load_library, once per variant per process."""
    return load_library(variant)


def _f32(x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu":
        raise ValueError("native kernels take CPU tensors")
    return x.to(torch.float32).contiguous()


class NativeKernel:
    """linear / rows / prepare for one ggml type over the native library (CPU tensors only)."""

    def __init__(self, ggml_type: GGMLType, variant: str | None = None, what: str = "tensor") -> None:
        self.lib = native_library(variant)
        self.ggml_type = GGMLType(ggml_type)
        if not self.lib.supports(self.ggml_type):
            raise UnsupportedError(f"{what}: the native kernels do not implement {self.ggml_type.name}")
        self.block_size, self.type_size = GGML_BLOCK[self.ggml_type]
        self._type = int(self.ggml_type)
        self._matmul = self.lib.dll.lk_matmul
        self._get_rows = self.lib.dll.lk_get_rows

    def variant(self) -> str:
        return self.lib.variant()

    def supports(self, ggml_type: GGMLType) -> bool:
        return self.lib.supports(ggml_type)

    def set_threads(self, n: int) -> int:
        """Threads of the library's pool (shared by every kernel of this variant); returns the count in use."""
        return self.lib.set_threads(n)

    def prepared_size(self, rows: int, n_in: int) -> int:
        return int(self.lib.dll.lk_prepared_size(int(self.ggml_type), rows, n_in))

    def prepare(self, w: torch.Tensor) -> torch.Tensor:
        """File block rows uint8 (rows, row_bytes) -> the prepared form, uint8 (rows, k), k ~ row_bytes."""
        if w.dtype != torch.uint8 or w.dim() != 2:
            raise ValueError("expected uint8 (rows, row_bytes) block rows")
        rows, row_bytes = w.shape
        if row_bytes % self.type_size:
            raise ValueError(f"row of {row_bytes} bytes is not whole {self.ggml_type.name} blocks")
        cols = row_bytes // self.type_size * self.block_size
        if rows == 0 or cols == 0:
            return torch.zeros(rows, 0 if rows else row_bytes, dtype=torch.uint8)
        size = self.prepared_size(rows, cols)
        k = -(-size // rows)
        out = torch.zeros(rows, k, dtype=torch.uint8)
        src = w.contiguous()
        self.lib.check(self.lib.dll.lk_prepare(int(self.ggml_type), rows, cols, src.data_ptr(), out.data_ptr()),
                       "prepare")
        return out

    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 (T, n_in) @ prepared W (rows, .)^T -> float32 (T, rows) (into `out` if given).

        Lean on purpose (one call per layer per token): W is trusted to be a `prepare` result."""
        if x.dtype is not torch.float32 or not x.is_contiguous() or x.device.type != "cpu":
            x = _f32(x)
        if x.shape[-1] != n_in:
            raise ValueError(f"x has {x.shape[-1]} columns, the weight {n_in}")
        n, rows = x.numel() // n_in, w.shape[0]
        if out is None:
            out = torch.empty((n, rows), dtype=torch.float32)
        elif out.dtype is not torch.float32 or out.shape != (n, rows) or out.stride(1) != 1:
            raise ValueError(f"out must be float32 ({n}, {rows}) with unit column stride")
        rc = self._matmul(self._type, rows, n_in, w.data_ptr(), n, x.data_ptr(), out.data_ptr(), out.stride(0))
        if rc:
            self.lib.check(rc, f"{self.ggml_type.name} matmul ({rows}x{n_in})")
        return out

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor:
        """dequant(W[ids]) (the codec's float32 values): int64 (T,) -> float32 (T, n_in)."""
        if ids.dtype is not torch.int64 or not ids.is_contiguous() or ids.device.type != "cpu":
            ids = ids.to("cpu", torch.int64).contiguous()
        rows, n = w.shape[0], ids.numel()
        out = torch.empty((n, n_in), dtype=torch.float32)
        rc = self._get_rows(self._type, rows, n_in, w.data_ptr(), n, ids.data_ptr(), out.data_ptr())
        if rc == -2 and n_in % self.block_size == 0:
            raise IndexError(f"row ids out of range [0, {rows})")
        if rc:
            self.lib.check(rc, f"{self.ggml_type.name} get_rows ({rows}x{n_in})")
        return out

    def quantize_act(self, x: torch.Tensor) -> torch.Tensor:
        """The 8-bit activation records lk_matmul computes from x (T, n_in): uint8 (T, bytes per row)."""
        x = _f32(x)
        n, cols = x.shape
        per_row = self.lib.check(self.lib.dll.lk_quantize_act(int(self.ggml_type), 0, cols, x.data_ptr(), None),
                                 "quantize_act")
        out = torch.empty(n, per_row, dtype=torch.uint8)
        self.lib.check(self.lib.dll.lk_quantize_act(int(self.ggml_type), n, cols, x.data_ptr(), out.data_ptr()),
                       "quantize_act")
        return out
