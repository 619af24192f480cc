"""Q4_0 / Q4_1 linears through torch's CPU int4 matmul (`aten._weight_int4pack_mm_for_cpu`), the torch
fallback when the native library is unavailable: ~50x faster than dequantizing every call.

torch's int4 format is group-wise affine with the zero point in the float domain:
    W[n, k] = (q[n, k] - 8) * scale[k // G, n] + zero[k // G, n]       q in [0, 16), G = 32 here
which holds both ggml formats exactly (same 32-weight blocks):
    Q4_0  W = (q - 8) * d                 -> scale = d, zero = 0
    Q4_1  W = q * d + m = (q - 8) * d + (m + 8d)   -> scale = d, zero = m + 8d
The fast path takes bfloat16 activations and bfloat16 scales/zeros (float32 ones run a slow generic
loop), so x, d and m + 8d are rounded to bfloat16: relative error ~2^-9 per product, the same order as
llama.cpp's own q8 quantization of the activations. Output rows are padded to a multiple of 16 (the
packer's requirement); `QuantLinear` drops the padding columns.

Prepared form (one flat uint8 tensor, ~ the file's size: 20 bytes per 32 weights for both formats):
    [packed weights: n_pad x k/2 bytes, torch's opaque int4 layout]
    [scales and zeros: bfloat16 (k/32, n_pad, 2)]
The packer works on row slabs independently (a slab of rows packs to the same bytes as its rows of the
whole), so no int32 copy of a whole matrix is ever made.
"""

from __future__ import annotations

import torch

from ..gguf.constants import GGMLType

ROW_PAD = 16
SLAB_ROWS = 1024  # rows packed at a time (a multiple of 64: slabs pack like the whole)
TYPES = (GGMLType.Q4_0, GGMLType.Q4_1)


def available() -> bool:
    """This torch build has the CPU int4 ops."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and \
        hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


class Int4PackKernel:
    name = "torch-int4pack"

    def __init__(self, ggml_type: GGMLType) -> None:
        assert ggml_type in TYPES
        self.ggml_type = GGMLType(ggml_type)
        self.type_size = 18 if ggml_type == GGMLType.Q4_0 else 20

    def _blocks(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """file rows uint8 (r, nb * type_size) -> q int32 (r, nb * 32), d float32 (r, nb), m float32 (r, nb)|None.
            Q4_0 block: [d f16][qs 16 bytes]   Q4_1 block: [d f16][m f16][qs 16 bytes]
            qs[j] low nibble = weight j, high nibble = weight j + 16."""
        r = w.shape[0]
        b = w.contiguous().view(r, -1, self.type_size)
        head = 2 if self.ggml_type == GGMLType.Q4_0 else 4
        d = b[:, :, 0:2].contiguous().view(torch.float16).float().squeeze(-1)
        m = None if head == 2 else b[:, :, 2:4].contiguous().view(torch.float16).float().squeeze(-1)
        qs = b[:, :, head:].to(torch.int32)
        q = torch.cat((qs & 0x0F, qs >> 4), dim=-1).view(r, -1)
        return q, d, m

    def prepare(self, w: torch.Tensor) -> torch.Tensor:
        n = w.shape[0]
        k = w.shape[1] // self.type_size * 32
        n_pad = -(-n // ROW_PAD) * ROW_PAD
        nw = n_pad * k // 2
        out = torch.empty(nw + (k // 32) * n_pad * 2 * 2, dtype=torch.uint8)
        packed = out[:nw].view(n_pad, k // 2)
        sz = out[nw:].view(torch.bfloat16).view(k // 32, n_pad, 2)
        sz.zero_()
        for r in range(0, n_pad, SLAB_ROWS):
            e = min(n_pad, r + SLAB_ROWS)
            q = torch.full((e - r, k), 8, dtype=torch.int32)  # padding rows: q = 8, scale 0 -> W = 0
            have = max(0, min(n, e) - r)
            if have:
                qq, d, m = self._blocks(w[r:r + have])
                q[:have] = qq
                sz[:, r:r + have, 0] = d.T.to(torch.bfloat16)
                if m is not None:
                    sz[:, r:r + have, 1] = (m + 8 * d).T.to(torch.bfloat16)
            packed[r:e] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 8)
        return out

    @staticmethod
    def _split(w: torch.Tensor, n_in: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_pad = w.numel() * 8 // (5 * n_in)  # n_pad * (k/2 + k/8) bytes
        nw = n_pad * n_in // 2
        return w[:nw].view(n_pad, n_in // 2), w[nw:].view(torch.bfloat16).view(n_in // 32, n_pad, 2)

    def linear(self, x: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
        """float32 (T, n_in) -> float32 (T, n_pad); columns past the layer's rows are zero."""
        packed, sz = self._split(w, n_in)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), packed, 32, sz).float()

    def rows(self, w: torch.Tensor, ids: torch.Tensor, n_in: int) -> torch.Tensor:
        raise NotImplementedError("int4pack weights serve linears only; embeddings keep a row kernel")
