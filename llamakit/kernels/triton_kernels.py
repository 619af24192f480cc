"""Triton kernels for packed ggml weights on CUDA: registered as (ggml type, "cuda") entries.

The weights of a GPU layer are the file's bytes copied once to the device (uint8 (out, row_bytes)); these
kernels read them packed:
    linear, T <= DECODE_ROWS (generation, 1-16 rows): one fused kernel dequantizes a [BN, BK] tile of the
        weight in registers and multiplies it into a float32 accumulator (tl.dot with IEEE products): the
        weight bytes are read once and no float copy of the weight ever exists;
    linear, larger T (prompt): the weight is dequantized slab by slab into a float32 scratch and multiplied
        by cuBLAS (F.linear): the dequantization is paid once per SCRATCH_VALUES, the GEMM runs at cuBLAS
        speed;
    rows (embedding lookups): gather the packed rows, dequantize them.
Dequantization is bit-identical to the torch codecs (kernels/_triton_jit.py, launched with fp fusion off);
the fused product differs from F.linear over those values only by summation order.

Triton is optional: nothing here imports it until a kernel is built (`available()` says whether it can
be). `TRITON_INTERPRET=1` in the environment of a test process runs the same kernels on CPU tensors.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F

from ..gguf.constants import GGML_BLOCK, GGMLType

DECODE_ROWS = 16  # activations rows up to which the fused kernel runs (tl.dot needs >= 16: rows are padded)
SCRATCH_VALUES = 1 << 24  # float32 values dequantized at a time on the prompt path (64 MiB)
BN, BK, BM = 64, 64, 16
# the float dtype `wf` has per format (f16 for the scales of the block formats)
_FLOAT_VIEW = {GGMLType.F32: torch.float32, GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16}
TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1,
         GGMLType.Q8_0, GGMLType.IQ4_NL, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
         GGMLType.Q6_K)


def available() -> bool:
    """True when the triton package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def _jit() -> Any:
    from . import _triton_jit

    return _triton_jit


class TritonKernel:
    """Fused dequantize-and-multiply for one ggml type (any of TYPES), on the weight's own device."""

    name = "triton"
    identity_prepare = True  # computes from the file's bytes as they are

    def __init__(self, ggml_type: GGMLType, decode_rows: int = DECODE_ROWS,
                 scratch_values: int = SCRATCH_VALUES) -> None:
        if ggml_type not in TYPES:
            raise ValueError(f"no Triton kernel for {ggml_type.name}")
        self.ggml_type = GGMLType(ggml_type)
        self.decode_rows, self.scratch_values = decode_rows, scratch_values
        jit = _jit()
        self.fmt = getattr(jit, self.ggml_type.name)
        blk = GGML_BLOCK[self.ggml_type]
        self.qk, self.ts = blk.block_size, blk.type_size
        self._tab: dict[torch.device, torch.Tensor] = {}

    def prepare(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def _args(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """(bytes, float view, IQ4_NL table, row bytes, row stride of the float view) of a packed weight."""
        w = w.contiguous()
        fdt = _FLOAT_VIEW.get(self.ggml_type, torch.float16)
        wf = w.view(fdt)
        tab = self._tab.get(w.device)
        if tab is None:
            from ..quants.iq4nl import KVALUES

            tab = self._tab[w.device] = torch.tensor(KVALUES, dtype=torch.float32, device=w.device)
        return w, wf, tab, w.shape[1], wf.shape[1]

    def dequant(self, w: torch.Tensor) -> torch.Tensor:
        """uint8 (r, row_bytes) -> float32 (r, n_in), exactly the codec's values."""
        import triton

        w8, wf, tab, rb, rf = self._args(w)
        n = w.shape[0]
        k = rb // self.ts * self.qk
        out = torch.empty(n, k, dtype=torch.float32, device=w.device)
        grid = (triton.cdiv(n, BN), triton.cdiv(k, BK))
        _jit().dequant_kernel[grid](w8, wf, tab, out, n, k, rb, rf, FMT=self.fmt, QK=self.qk, TS=self.ts,
                                    BN=BN, BK=BK, **_no_fusion())
        return out

    def fused(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        """float32 (T, n_in) @ dequant(w)^T with the weight dequantized in registers."""
        import triton

        x = x.contiguous().to(torch.float32)
        w8, wf, tab, rb, rf = self._args(w)
        m, n = x.shape[0], w.shape[0]
        y = torch.empty(m, n, dtype=torch.float32, device=x.device)
        grid = (triton.cdiv(n, BN), triton.cdiv(m, BM))
        _jit().matmul_kernel[grid](x, w8, wf, tab, y, m, n, n_in, rb, rf, FMT=self.fmt, QK=self.qk, TS=self.ts,
                                   BM=BM, BN=BN, BK=BK, **_no_fusion())
        return y

    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        if x.shape[0] <= self.decode_rows:
            return self.fused(x, w, n_in)
        step = max(1, self.scratch_values // n_in)
        if step >= w.shape[0]:
            return F.linear(x, self.dequant(w))
        y = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32, device=x.device)
        for r in range(0, w.shape[0], step):
            y[:, r:r + step] = F.linear(x, self.dequant(w[r:r + step]))
        return y

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor:
        return self.dequant(w[ids.to(w.device)])


def _no_fusion() -> dict[str, bool]:
    """Launch options: no fp contraction (bit-exact dequantization)."""
    return {"enable_fp_fusion": False}


def lookup(ggml_type: GGMLType, use: str = "linear") -> TritonKernel | None:
    """The Triton kernel for a type on CUDA, or None (no triton installed, or a type it does not cover):
    what the kernel registry calls for (ggml type, "cuda")."""
    if GGMLType(ggml_type) not in TYPES or not available():
        return None
    return TritonKernel(GGMLType(ggml_type))


def register(add: Any) -> None:
    """`add(ggml_type, device_type, factory)` for every type covered: for a registry that keeps a table."""
    for t in TYPES:
        add(t, "cuda", lambda t=t: TritonKernel(t))
