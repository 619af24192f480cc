"""Matmul kernels for packed ggml weights, one per format, swappable per layer.

A kernel computes, for a weight held as the file's block bytes (uint8 (out, row_bytes)):
    linear(x, w, n_in) : float32 (T, n_in) -> float32 (T, out)      y = x @ dequant(w)^T
    rows(w, ids, n_in) : int64 (T,)        -> float32 (T, n_in)     dequant(w[ids])
Dequantization is exact (the codecs' float32 values), so results differ from a float32 matmul over the
dequantized weights only by summation order.

`DequantKernel` works for every codec; `Nibble4Kernel` (Q4_0, Q4_1, Q4_K) and `Q6KKernel` unpack their
bits from whole 16/32-bit words, bit-identical to the codecs and faster. The cost left is the few
elementwise passes over the weights any torch-level dequantization needs, paid again for every generated
token; a fused kernel is what would remove them, and it would register here.
Weights are dequantized SLAB_VALUES at a time so no float copy of a whole matrix (the 49152 x 576 output
layer is 113 MB in float32) ever exists: memory holds the packed bytes plus one slab.
Every kernel has a `name` (what `LoadedModel.kernel_summary` counts) and `prepare(w)`, called once at
load: identity for these (they compute from the file's bytes), a repacked copy for `Int4PackKernel` and the
native kernels. The choice per (ggml type, device type, backend) is `kernels.registry.kernel_for`.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..gguf.constants import GGMLType
from ..quants import Codec, get_codec
from ..quants.layouts import LAYOUTS, BlockLayout
from ..quants.kquants import unpack_k4_scales

# floats dequantized at a time: 2^20 float32 = 4 MiB (fewer, larger slabs measured faster than 1 MiB ones)
SLAB_VALUES = 1 << 20


class Kernel(Protocol):
    name: str

    def prepare(self, w: torch.Tensor) -> torch.Tensor: ...

    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor: ...

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor: ...


class DequantKernel:
    """Any codec: dequantize a slab of rows, multiply, next slab."""

    name = "torch-dequant"
    identity_prepare = True  # the loader keeps the file's bytes (a view of the map) as the working form

    def __init__(self, codec: Codec, slab_values: int = SLAB_VALUES) -> None:
        self.codec = codec
        self.slab_values = slab_values

    def prepare(self, w: torch.Tensor) -> torch.Tensor:
        """The file's bytes are the working form: nothing to repack."""
        return w

    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        step = max(1, self.slab_values // n_in)
        if step >= w.shape[0]:
            return self._linear(x, w, n_in)
        # The output is allocated first and each slab's result copied in and freed at once: keeping the
        # small per-slab results alive between the big temporaries fragments the heap (~1 slab per slab).
        y = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32, device=x.device)
        for r in range(0, w.shape[0], step):
            y[:, r:r + step] = self._linear(x, w[r:r + step], n_in)
        return y

    def dequant(self, w: torch.Tensor) -> torch.Tensor:
        """uint8 (r, row_bytes) -> float32 (r, n_in), exactly the codec's values."""
        return self.codec.dequantize(w)

    def _linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        return F.linear(x, self.dequant(w))

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor:
        return self.dequant(w[ids])


class FloatKernel(DequantKernel):
    """F32 is used in place (a float32 view of the bytes); F16/BF16 rows are converted a slab at a time."""

    def __init__(self, codec: Codec, dtype: torch.dtype, slab_values: int = SLAB_VALUES) -> None:
        super().__init__(codec, slab_values)
        self.dtype = dtype

    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        if self.dtype == torch.float32:
            return F.linear(x, w.view(torch.float32))
        return super().linear(x, w, n_in)

    def _linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        return F.linear(x, w.view(self.dtype).float())

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor:
        return w[ids].view(self.dtype).float()


class Nibble4Kernel(DequantKernel):
    """Q4_0, Q4_1 and Q4_K dequantized from 16/32-bit words: `word & 0x0F0F...` and `(word >> 4) & 0x0F0F...`
    unpack the low and the high nibbles of 2 or 4 bytes per element and, viewed as bytes, are already in
    element order (low nibbles of qs[0..15] are weights 0..15, high ones 16..31; for Q4_K per 32 bytes of
    qs). Bit-identical to the codecs (same float32 products, same single rounding), 1.3-1.8x faster on CPU.
        Q4_0  18 bytes = 9 int16:  [d] [qs x 8]                      x = (q - 8) * d
        Q4_1  20 bytes = 5 int32:  [d m] [qs x 4]                    x = q * d + m
        Q4_K 144 bytes = 36 int32: [d dmin] [scales x 3] [qs x 32]   x = q * (d * sc) - dmin * m
    """

    def __init__(self, codec: Codec, slab_values: int = SLAB_VALUES) -> None:
        super().__init__(codec, slab_values)
        t = codec.ggml_type
        self.word = torch.int16 if t == GGMLType.Q4_0 else torch.int32
        self.word_bytes = 2 if self.word == torch.int16 else 4
        self.words = codec.type_size // self.word_bytes
        self.mask = 0x0F0F if self.word == torch.int16 else 0x0F0F0F0F

    def _nibbles(self, q: torch.Tensor, staged: bool) -> torch.Tensor:
        """int words (n, g, k) -> float32 (n, g, 2 * bytes per g): the low nibbles, then the high ones.

        staged: unpack into one contiguous int buffer and convert it in a single pass; otherwise convert
        each half straight into the float output. Measured (interleaved A/B, one thread): staged is ~1.25x
        faster for the 16-byte groups of Q4_0/Q4_1, unstaged ~1.4x faster for Q4_K's 32-byte groups."""
        n, g, k = q.shape
        if staged:
            qw = torch.empty(n, g, 2, k, dtype=q.dtype, device=q.device)
            torch.bitwise_and(q, self.mask, out=qw[:, :, 0])
            torch.bitwise_right_shift(q, 4, out=qw[:, :, 1])
            qw[:, :, 1] &= self.mask
            return qw.view(torch.uint8).view(n, g, -1).float()
        out = torch.empty(n, g, 2, k * q.element_size(), dtype=torch.float32, device=q.device)
        out[:, :, 0] = (q & self.mask).view(torch.uint8)
        out[:, :, 1] = ((q >> 4) & self.mask).view(torch.uint8)
        return out.view(n, g, -1)

    def dequant(self, w: torch.Tensor) -> torch.Tensor:
        r = w.shape[0]
        words = w.contiguous().view(self.word).view(-1, self.words)  # one row per block
        n = words.shape[0]
        t, lay, wb = self.codec.ggml_type, LAYOUTS[self.codec.ggml_type], self.word_bytes
        if t == GGMLType.Q4_0:
            d = words[:, lay["d"].words(wb)].contiguous().view(torch.float16).float()  # (n, 1)
            return self._nibbles(words[:, None, lay["qs"].words(wb)], True).view(n, 32).sub_(8).mul_(d).view(r, -1)
        # (n, 2): d, m (Q4_1) or d, dmin (Q4_K), one 32-bit word read as two f16
        dm = words[:, _span_words(lay, "d", "dmin" if t == GGMLType.Q4_K else "m", wb)].contiguous()
        dm = dm.view(torch.float16).float()
        if t == GGMLType.Q4_1:
            q = self._nibbles(words[:, None, lay["qs"].words(wb)], True).view(n, 32)
            return q.mul_(dm[:, :1]).add_(dm[:, 1:]).view(r, -1)
        # Q4_K: 4 groups of 32 qs bytes -> 8 sub-blocks of 32 weights, each with a 6-bit scale and min
        sc, m = unpack_k4_scales(words[:, lay["scales"].words(wb)].contiguous().view(torch.uint8))
        scale = dm[:, :1] * sc.to(torch.float32)  # (n, 8), exact
        mins = dm[:, 1:] * m.to(torch.float32)
        q = self._nibbles(words[:, lay["qs"].words(wb)].view(n, 4, 8), False).view(n, 8, 32)
        return q.mul_(scale[:, :, None]).sub_(mins[:, :, None]).view(r, -1)


def _span_words(lay: BlockLayout, first: str, last: str, word_bytes: int) -> slice:
    """Fields `first`..`last` as a slice of `word_bytes`-byte words."""
    span = lay.span(first, last)
    return slice(span.start // word_bytes, span.stop // word_bytes)


class Q6KKernel(DequantKernel):
    """Q6_K from 16-bit words (210-byte blocks = 105 int16; fields from quants/layouts.py), bit-identical to the
    codec, ~1.7x faster:
        [ql x 64 words: 128 bytes] [qh x 32 words: 64 bytes] [scales: 16 int8] [d: f16]
    weight e = 128h + 32k + l: low 4 bits = nibble k//2 of ql[64h + 32(k%2) + l], high 2 bits =
    qh[32h + l] >> 2k & 3; x = (q - 32) * (d * scale[e // 16]). Two bytes per word operation."""

    def dequant(self, w: torch.Tensor) -> torch.Tensor:
        r = w.shape[0]
        lay = LAYOUTS[GGMLType.Q6_K]
        words = w.contiguous().view(torch.int16).view(-1, lay.type_size // 2)
        n = words.shape[0]
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int16, device=w.device).view(1, 1, 4, 1)
        qlw = words[:, lay["ql"].words(2)].reshape(n, 2, 2, 16)  # [h, k % 2, word]
        qw = (words[:, lay["qh"].words(2)].reshape(n, 2, 1, 16) >> shifts) & 0x0303  # [h, k, word]: high 2 bits
        qw <<= 4
        qw[:, :, 0:2] |= qlw & 0x0F0F  # k = 0, 1: low nibbles
        qw[:, :, 2:4] |= (qlw >> 4) & 0x0F0F  # k = 2, 3: high nibbles
        d = words[:, lay["d"].words(2)].contiguous().view(torch.float16).float()  # (n, 1)
        scale = d * words[:, lay["scales"].words(2)].contiguous().view(torch.int8).float()  # (n, 16), exact
        y = qw.view(torch.uint8).view(n, 16, 16).float().sub_(32).mul_(scale[:, :, None])
        return y.view(r, -1)


_FLOATS = {GGMLType.F32: torch.float32, GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16}


def torch_kernel_for(ggml_type: GGMLType, what: str = "tensor") -> Kernel:
    """The exact (dequantizing) torch kernel for a format; UnsupportedError (naming `what`) for a type
    llamakit cannot compute. These run on any device."""
    codec = get_codec(ggml_type, what=what)
    t = codec.ggml_type
    if t in _FLOATS:
        return FloatKernel(codec, _FLOATS[t])
    if t in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K):
        return Nibble4Kernel(codec)
    if t == GGMLType.Q6_K:
        return Q6KKernel(codec)
    return DequantKernel(codec)
