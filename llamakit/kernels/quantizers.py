"""Native block quantizers: library "lkq" (native/q_*.c), byte for byte the torch codecs of llamakit/quants/.

    q = load_quantizer()                                  # the best variant this CPU runs; NativeBuildError if none
    q.supports(GGMLType.Q4_K, GGMLType.F16)               # True
    bad = q.quantize(GGMLType.Q4_K, GGMLType.F16, src, out)   # -1, or the index of the first NaN/inf weight

Sources are F32, F16 or BF16 (widened exactly in C, so no float32 copy of a tensor is ever made in Python);
`src` and `out` are numpy arrays (any dtype, C-contiguous, `src` may be a read-only memory map) holding
whole blocks. The C call runs without the GIL (ctypes releases it), so a thread pool scales with cores.
The torch codecs stay the reference and the fallback where the library cannot be built.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

from ..gguf.constants import GGML_BLOCK, GGMLType
from .native.build import HERE, NativeBuildError, load

# Bit-exactness with the torch codecs (and ggml): no FMA contraction, whatever the variant's -mfma.
# -fno-trapping-math changes no value (only FP exception flags, which nothing reads); it lets the compiler
# turn the searches' per-lane selects into SIMD blends.
EXTRA_FLAGS = ("-ffp-contract=off", "-fno-trapping-math")
TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K,
                   GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_NL})
SOURCES = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16})


def sources() -> list[Path]:
    return sorted(HERE.glob("q_*.c"))


class NativeQuantizer:
    def __init__(self, lib: ctypes.CDLL, variant: str) -> None:
        self.variant = variant
        self._fn = lib.lkq_quantize
        self._fn.restype = ctypes.c_int64
        self._fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        lib.lkq_supports.restype = ctypes.c_int
        self._types = frozenset(t for t in TYPES if lib.lkq_supports(int(t)))
        self._iq4_levels = lib.lkq_iq4_nl_levels
        self._iq4_levels.restype = None
        self._iq4_levels.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]

    def supports(self, dst: GGMLType, src: GGMLType = GGMLType.F32) -> bool:
        return dst in self._types and src in SOURCES

    def quantize(self, dst: GGMLType, src_type: GGMLType, src: np.ndarray, out: np.ndarray) -> int:
        """Quantize all of `src` (weights of `src_type`) into `out`; -1, or the flat index of the first
        non-finite weight (then `out` is only partly written)."""
        if not self.supports(dst, src_type):
            raise ValueError(f"no native {src_type.name} -> {dst.name} quantizer")
        n = src.nbytes // GGML_BLOCK[src_type].type_size
        blk = GGML_BLOCK[dst]
        if n % blk.block_size or out.nbytes != n // blk.block_size * blk.type_size:
            raise ValueError(f"{n} weights are not whole {dst.name} blocks filling {out.nbytes} bytes")
        if not (src.flags.c_contiguous and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError("src and out must be C-contiguous, out writeable")
        r = self._fn(int(dst), int(src_type), src.ctypes.data, out.ctypes.data, n)
        if r < -1:
            raise ValueError(f"lkq_quantize refused {src_type.name} -> {dst.name} ({n} weights)")
        return int(r)

    def iq4_nl_levels(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IQ4_NL's grid on its own (for the tests): best_index_int8 of each float32 v as the final levels compute
        it, and the grid value as the scale search computes it (meaningful for |v| < 134 only)."""
        v = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
        level, value = np.empty(v.size, np.int32), np.empty(v.size, np.float32)
        self._iq4_levels(v.ctypes.data, level.ctypes.data, value.ctypes.data, v.size)
        return level, value

    def quantize_f32(self, dst: GGMLType, x: np.ndarray) -> np.ndarray:
        """float32 (..., n) -> uint8 (..., n // block_size * type_size), like Codec.quantize."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        blk = GGML_BLOCK[dst]
        if x.shape[-1] % blk.block_size:
            raise ValueError(f"row length {x.shape[-1]} is not a multiple of {blk.block_size}")
        out = np.empty(x.shape[:-1] + (x.shape[-1] // blk.block_size * blk.type_size,), dtype=np.uint8)
        bad = self.quantize(dst, GGMLType.F32, x, out)
        if bad >= 0:
            raise ValueError(f"non-finite weight at flat index {bad}")
        return out


@functools.lru_cache(maxsize=None)
def load_quantizer(variant: str | None = None) -> NativeQuantizer:
    """The native quantizers for `variant` (None: the best this CPU runs), built once and cached on disk;
    raises NativeBuildError when there is no compiler or the build fails."""
    lib, v = load("lkq", sources(), variant, extra_flags=EXTRA_FLAGS)
    return NativeQuantizer(lib, v)


__all__ = ["EXTRA_FLAGS", "NativeBuildError", "NativeQuantizer", "SOURCES", "TYPES", "load_quantizer"]
