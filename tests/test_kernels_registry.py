"""The kernel registry: which kernel each (type, device, backend) gets, and the torch int4pack kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llamakit.errors import InputError, UnsupportedError
from llamakit.gguf.constants import GGMLType
from llamakit.kernels import registry
from llamakit.kernels.int4pack import Int4PackKernel
from llamakit.kernels.registry import NativeStatus, kernel_for
from llamakit.quants import get_codec


@pytest.mark.parametrize("ggml_type", [GGMLType.Q4_0, GGMLType.Q4_1])
@pytest.mark.parametrize("n", [1000, 1040, 48])  # padded to 16 rows; 1040 = a full slab + a 16-row tail
def test_int4pack_equals_dequantize_then_matmul_in_bfloat16(ggml_type: GGMLType, n: int) -> None:
    codec = get_codec(ggml_type)
    g = torch.Generator().manual_seed(n)
    w = codec.quantize(torch.randn(n, 256, generator=g))
    x = torch.randn(4, 256, generator=g)
    k = Int4PackKernel(ggml_type)
    p = k.prepare(w)
    assert p.dtype == torch.uint8 and p.numel() <= w.numel() * 1.13  # about the file's size
    y = k.linear(x, p, 256)
    assert y.shape == (4, -(-n // 16) * 16)
    assert torch.equal(y[:, n:], torch.zeros_like(y[:, n:]))  # padding rows are zero weights
    ref = F.linear(x.bfloat16().float(), codec.dequantize(w))
    # bfloat16 activations, scales and zeros: ~2^-9 relative per product (measured <= 0.5% of max |y|)
    assert float((y[:, :n] - ref).abs().max()) < 0.01 * float(ref.abs().max())


def test_torch_backend_choices() -> None:
    assert kernel_for(GGMLType.Q4_1, backend="torch").name == "torch-int4pack"
    assert kernel_for(GGMLType.Q4_0, backend="torch", use="rows").name == "torch-dequant"  # embeddings: rows
    assert kernel_for(GGMLType.Q4_0, "cuda", backend="torch").name == "torch-dequant"
    for t in (GGMLType.F32, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K):
        k = kernel_for(t, backend="torch")
        assert k.name == "torch-dequant"
        w = torch.zeros(2, 300, dtype=torch.uint8)
        assert k.prepare(w) is w
    assert kernel_for(GGMLType.Q4_1, backend="exact").name == "torch-dequant"
    assert kernel_for(GGMLType.Q4_K, backend="exact").name == "torch-dequant"
    with pytest.raises(InputError, match="unknown kernel backend 'fast'"):
        kernel_for(GGMLType.F32, backend="fast")
    with pytest.raises(UnsupportedError, match="blk.0.attn_q.weight.*IQ2_XXS"):
        kernel_for(GGMLType.IQ2_XXS, backend="torch", what="blk.0.attn_q.weight")


def test_auto_without_native_library_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    down = NativeStatus(None, None, "no C compiler found (cc, gcc or clang)")
    monkeypatch.setattr(registry, "native_status", lambda variant=None: down)
    assert kernel_for(GGMLType.Q4_1, backend="auto").name == "torch-int4pack"
    assert kernel_for(GGMLType.Q6_K, backend="auto").name == "torch-dequant"
    assert registry.unavailable_line() == ("llamakit: native kernels unavailable (no C compiler found (cc, gcc or "
                                           "clang)); using torch kernels (slower)")
    from llamakit.kernels.native.build import NativeBuildError

    with pytest.raises(NativeBuildError, match="no C compiler"):
        kernel_for(GGMLType.Q4_1, backend="native")
