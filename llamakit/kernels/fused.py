"""One llama block in one native call (native/k_forward.c, ABI in native/lk_forward.h).

The torch engine issues ~50 eager ops per block and token; `FusedBlock` does the whole block (norms,
q/k/v/o matmuls, rope, K/V stores, attention, SwiGLU, residuals) in one ctypes call whose argument
struct is built once: `__call__` only passes x, pos, seq (and cos/sin, cached while the same tensors come
back). Weights must already be in the library's prepared form (`NativeKernel.prepare`, same variant).

    dims     n_embd, n_head, n_head_kv, head_dim, n_ff, n_rot, eps
    linears  attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down:
                 (ggml_type, prepared uint8 tensor, rows, cols, float32 bias (rows,) or None)
             attn_norm, ffn_norm: float32 (n_embd,)
    caches   k_cache, v_cache: float16 or float32 (n_seq, n_head_kv, n_ctx, head_dim), contiguous, CPU
    call     x float32 (T, n_embd) (updated in place), pos / seq int32 (T,), cos / sin float32 (n_ctx, n_rot/2)
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import InputError, LlamakitError
from .native import native_library

LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_FIELDS = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate": "gate", "ffn_up": "up",
           "ffn_down": "down"}
_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class _Linear(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int32), ("_pad", ctypes.c_int32), ("rows", _I64), ("cols", _I64),
                ("w", _P), ("bias", _P)]


class _Scratch(ctypes.Structure):  # lk_scratch
    _fields_ = [("p", _P), ("bytes", ctypes.c_size_t)]


class _Block(ctypes.Structure):  # lk_block, field for field
    _fields_ = ([(n, _I64) for n in ("n_embd", "n_head", "n_head_kv", "head_dim", "n_ff", "n_rot")]
                + [("eps", ctypes.c_float), ("cache_f16", ctypes.c_int32), ("n_seq", _I64), ("n_ctx", _I64)]
                + [(f, _Linear) for f in _FIELDS.values()]
                + [("attn_norm", _P), ("ffn_norm", _P), ("k_cache", _P), ("v_cache", _P), ("min_parallel", _I64), ("timing", _I64),
                   ("ns_matmul", _I64), ("ns_total", _I64), ("scratch", ctypes.POINTER(_Scratch))])


class FusedBlockError(LlamakitError):
    """The native block refused its inputs (shapes, positions, or a weight type this build lacks)."""


def _library(variant: str | None) -> ctypes.CDLL:
    """The "lk" library NativeKernel uses (the same loaded object, so the same thread pool)."""
    lib = native_library(variant).dll
    if not getattr(lib, "_lk_fused_ready", False):
        lib.lk_block_forward.argtypes = [_P, _I64, _P, _P, _P, _P, _P]
        lib.lk_block_forward.restype = ctypes.c_int
        lib.lk_block_reserve.argtypes = [_P, _I64]
        lib.lk_block_reserve.restype = ctypes.c_int
        lib.lk_scratch_free.argtypes = [_P]
        lib.lk_scratch_free.restype = None
        lib._lk_fused_ready = True
    return lib


def _check(t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], what: str) -> None:
    if t.dtype != dtype or tuple(t.shape) != shape or not t.is_contiguous() or t.device.type != "cpu":
        raise InputError(f"fused block: {what} must be a contiguous CPU {dtype} tensor of shape {shape}, "
                         f"got {t.dtype} {tuple(t.shape)} on {t.device}")


class FusedScratch:
    """The work buffers of FusedBlock calls (grown on demand, freed with this object). The blocks of one
    model run one after another, so they should share one: FusedBlock(..., scratch=shared)."""

    def __init__(self, variant: str | None = None) -> None:
        self.lib = _library(variant)
        self.s = _Scratch()

    def __del__(self) -> None:
        if getattr(self, "s", None) is not None:
            self.lib.lk_scratch_free(ctypes.addressof(self.s))


class FusedBlock:
    def __init__(self, dims: Mapping[str, Any], linears: Mapping[str, Any], k_cache: torch.Tensor,
                 v_cache: torch.Tensor, variant: str | None = None, max_tokens: int = 1, min_parallel: int = 0,
                 scratch: FusedScratch | None = None) -> None:
        """max_tokens: scratch reserved up front (it grows on demand); min_parallel: elements of work below
        which a phase stays on the calling thread (0: the library's default; tests use 1); scratch: work
        buffers shared with the other blocks of the model (default: this block's own)."""
        self.lib = _library(variant)
        self.scratch = scratch if scratch is not None else FusedScratch(variant)
        if self.scratch.lib._handle != self.lib._handle:
            raise InputError("fused block: the shared scratch belongs to another native variant")
        b = _Block()
        for n in ("n_embd", "n_head", "n_head_kv", "head_dim", "n_ff", "n_rot"):
            setattr(b, n, int(dims[n]))
        b.eps = float(dims["eps"])
        b.min_parallel = int(min_parallel)
        if b.n_head % b.n_head_kv or b.n_rot > b.head_dim or b.n_rot % 2:
            raise InputError(f"fused block: bad head layout {dict(dims)}")
        self._keep: list[torch.Tensor] = []  # everything the struct points at stays alive with the block
        nq, nkv = b.n_head * b.head_dim, b.n_head_kv * b.head_dim
        shapes = {"attn_q": (nq, b.n_embd), "attn_k": (nkv, b.n_embd), "attn_v": (nkv, b.n_embd),
                  "attn_output": (b.n_embd, nq), "ffn_gate": (b.n_ff, b.n_embd), "ffn_up": (b.n_ff, b.n_embd),
                  "ffn_down": (b.n_embd, b.n_ff)}
        for name in LINEARS:
            gtype, w, rows, cols, bias = linears[name]
            if (rows, cols) != shapes[name]:
                raise InputError(f"fused block: {name} is {rows}x{cols}, expected {shapes[name][0]}x{shapes[name][1]}")
            if not self.lib.lk_supports(int(gtype)):
                raise FusedBlockError(f"fused block: {name}: ggml type {int(gtype)} has no native kernel")
            need = self.lib.lk_prepared_size(int(gtype), rows, cols)
            _check(w, torch.uint8, tuple(w.shape), f"{name} weight")
            if w.numel() < need:
                raise InputError(f"fused block: {name}: {w.numel()} prepared bytes, the library wants {need}")
            lin = getattr(b, _FIELDS[name])
            lin.type, lin.rows, lin.cols, lin.w = int(gtype), rows, cols, w.data_ptr()
            self._keep.append(w)
            if bias is not None:
                _check(bias, torch.float32, (rows,), f"{name} bias")
                lin.bias = bias.data_ptr()
                self._keep.append(bias)
        for name in ("attn_norm", "ffn_norm"):
            t = linears[name]
            _check(t, torch.float32, (b.n_embd,), name)
            setattr(b, name, t.data_ptr())
            self._keep.append(t)
        if k_cache.dtype not in (torch.float16, torch.float32) or k_cache.dim() != 4:
            raise InputError(f"fused block: caches must be float16/float32 (n_seq, n_head_kv, n_ctx, head_dim), "
                             f"got {k_cache.dtype} {tuple(k_cache.shape)}")
        n_seq, _, n_ctx, _ = k_cache.shape
        for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
            _check(c, k_cache.dtype, (n_seq, b.n_head_kv, n_ctx, b.head_dim), name)
        b.n_seq, b.n_ctx, b.cache_f16 = n_seq, n_ctx, int(k_cache.dtype == torch.float16)
        b.k_cache, b.v_cache = k_cache.data_ptr(), v_cache.data_ptr()
        self._keep += [k_cache, v_cache]
        self.k_cache, self.v_cache = k_cache, v_cache
        self.n_embd, self.n_ctx, self.half = b.n_embd, n_ctx, b.n_rot // 2
        b.scratch = ctypes.pointer(self.scratch.s)
        self._b = b
        self._bp = ctypes.addressof(b)
        self._fwd = self.lib.lk_block_forward
        self._angles: tuple[torch.Tensor | None, torch.Tensor | None, int, int] = (None, None, 0, 0)
        if self.lib.lk_block_reserve(self._bp, max_tokens) != 0:
            raise MemoryError("fused block: no memory for the scratch buffers")

    @staticmethod
    def supported(linears: Mapping[str, Any], variant: str | None = None) -> bool:
        """True when every weight's ggml type has a native kernel (and the library builds here)."""
        try:
            lib = _library(variant)
        except LlamakitError:
            return False
        return all(lib.lk_supports(int(linears[n][0])) for n in LINEARS)

    def __call__(self, x: torch.Tensor, pos: torch.Tensor, seq: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> None:
        """x float32 (T, n_embd) updated in place; pos, seq int32 (T,); cos, sin float32 (n_ctx, n_rot/2).
        x, pos and seq are checked on every call (what C would read past); cos/sin once per new pair."""
        t = x.shape[0]
        if (x.dtype != torch.float32 or x.shape[-1] != self.n_embd or not x.is_contiguous()
                or pos.dtype != torch.int32 or seq.dtype != torch.int32 or pos.shape != (t,) or seq.shape != (t,)
                or not pos.is_contiguous() or not seq.is_contiguous()):
            raise InputError(f"fused block: x must be contiguous float32 (T, {self.n_embd}) and pos, seq "
                             f"contiguous int32 (T,); got {x.dtype} {tuple(x.shape)}, {pos.dtype} "
                             f"{tuple(pos.shape)}, {seq.dtype} {tuple(seq.shape)}")
        c, s, cp, sp = self._angles
        if cos is not c or sin is not s:
            _check(cos, torch.float32, (self.n_ctx, self.half), "cos")
            _check(sin, torch.float32, (self.n_ctx, self.half), "sin")
            cp, sp = cos.data_ptr(), sin.data_ptr()
            self._angles = (cos, sin, cp, sp)
        rc = self._fwd(self._bp, t, x.data_ptr(), pos.data_ptr(), seq.data_ptr(), cp, sp)
        if rc != 0:
            self._raise(rc, x, pos, seq)

    def _raise(self, rc: int, x: torch.Tensor, pos: torch.Tensor, seq: torch.Tensor) -> None:
        if rc == -2:
            raise InputError(f"fused block: a position outside [0, {self.n_ctx}) or a sequence outside "
                             f"[0, {self._b.n_seq}) (pos {pos.tolist()}, seq {seq.tolist()})")
        if rc == -3:
            raise MemoryError("fused block: no memory for the scratch buffers")
        raise FusedBlockError(f"fused block: the native forward failed with code {rc}")
