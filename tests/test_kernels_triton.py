"""The Triton kernels under TRITON_INTERPRET=1 (CPU tensors, tiny shapes): dequantization equals the torch
codecs bit for bit, for codec-made blocks and for random bytes (every scale and high bit pattern); the
fused product equals F.linear over the codec's values within float32 summation-order error."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ["TRITON_INTERPRET"] = "1"  # before triton (and the kernels' jit module) is imported
pytest.importorskip("triton")

from llamakit.gguf.constants import GGML_BLOCK, GGMLType  # noqa: E402
from llamakit.kernels import triton_kernels  # noqa: E402
from llamakit.kernels.triton_kernels import TYPES, TritonKernel  # noqa: E402
from llamakit.quants import get_codec  # noqa: E402

# |fused - exact| <= TOL * (|x| @ |w|^T): float32 sums of n_in products in another order (n_in = 512
# gives at most ~n_in * 2^-24 ~ 3e-5 relative to the sum of magnitudes; measured ~1e-7)
TOL = 1e-5


def weights(t: GGMLType, rows: int, n_in: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return get_codec(t).quantize(torch.randn(rows, n_in, generator=g))


def random_bytes(t: GGMLType, rows: int, n_in: int, seed: int) -> torch.Tensor:
    """Arbitrary block bytes with finite, moderate f16 scales where a format has them (random f16 bits
    would be NaN/inf/subnormal; the integer fields stay random)."""
    blk = GGML_BLOCK[t]
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 256, (rows, n_in // blk.block_size, blk.type_size), dtype=torch.uint8, generator=g)
    if t in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        return get_codec(t).quantize(torch.randn(rows, n_in, generator=g))
    scale_at = {GGMLType.Q2_K: (80, 82), GGMLType.Q3_K: (108,), GGMLType.Q6_K: (208,),
                GGMLType.Q4_1: (0, 2), GGMLType.Q5_1: (0, 2), GGMLType.Q4_K: (0, 2), GGMLType.Q5_K: (0, 2)}
    for off in scale_at.get(t, (0,)):
        f = (torch.rand(rows, w.shape[1], generator=g) * 0.1 + 0.01).to(torch.float16)
        w[:, :, off:off + 2] = f.contiguous().view(torch.uint8).view(rows, w.shape[1], 2)
    return w.reshape(rows, -1)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequant_is_bit_identical_to_the_codec(t: GGMLType) -> None:
    n_in = 512 if GGML_BLOCK[t].block_size == 256 else 96  # 96: a row shorter than the tile (masks)
    for w in (weights(t, 70, n_in, 1), random_bytes(t, 70, n_in, 2)):  # 70 rows: a partial tile
        got = TritonKernel(t).dequant(w)
        want = get_codec(t).dequantize(w).reshape(70, n_in)
        assert got.dtype == torch.float32 and torch.equal(got, want)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 16])
def test_fused_matmul_matches_dequant_then_linear(t: GGMLType, m: int) -> None:
    n_in = 512
    w = weights(t, 72, n_in, 3)
    x = torch.randn(m, n_in, generator=torch.Generator().manual_seed(4))
    exact = get_codec(t).dequantize(w).reshape(72, n_in)
    got = TritonKernel(t).linear(x, w, n_in)
    want = F.linear(x, exact)
    bound = TOL * (x.abs() @ exact.abs().T)
    assert got.shape == (m, 72) and bool(((got - want).abs() <= bound).all())


def test_prompt_path_uses_dequantized_scratch_slabs() -> None:
    """More rows than DECODE_ROWS: dequantize to scratch (in slabs) and multiply with F.linear (cuBLAS on
    a GPU): exact values, so only the GEMM's blocking (which depends on the slab's shape) changes sums."""
    t, n_in = GGMLType.Q4_K, 256
    w = weights(t, 40, n_in, 5)
    x = torch.randn(20, n_in, generator=torch.Generator().manual_seed(6))
    k = TritonKernel(t, scratch_values=16 * n_in)  # 16 rows per slab: 3 slabs
    exact = get_codec(t).dequantize(w).reshape(40, n_in)
    got = k.linear(x, w, n_in)
    assert bool(((got - F.linear(x, exact)).abs() <= TOL * (x.abs() @ exact.abs().T)).all())
    assert torch.equal(got[:, :16], F.linear(x, exact[:16]))  # one slab = one F.linear of exact values


def test_rows_gathers_then_dequantizes() -> None:
    t = GGMLType.Q6_K
    w = weights(t, 10, 256, 7)
    ids = torch.tensor([3, 0, 9, 3])
    assert torch.equal(TritonKernel(t).rows(w, ids, 256), get_codec(t).dequantize(w[ids]).reshape(4, 256))


def test_lookup_and_register() -> None:
    assert isinstance(triton_kernels.lookup(GGMLType.Q4_0), TritonKernel)
    assert triton_kernels.lookup(GGMLType.Q8_K) is None  # not a weight format
    table: dict = {}
    triton_kernels.register(lambda t, dev, make: table.__setitem__((t, dev), make))
    assert set(table) == {(t, "cuda") for t in TYPES} and table[(GGMLType.Q6_K, "cuda")]().ggml_type == GGMLType.Q6_K
