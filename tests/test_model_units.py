"""Model pieces on their own: config from metadata, RoPE on adjacent pairs, slabbed kernels."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from llamakit.errors import GGUFFormatError, UnsupportedError
from llamakit.gguf import GGUFReader
from llamakit.gguf.constants import GGMLType
from llamakit.model import LlamaConfig, apply_rope, rope_cos_sin
from llamakit.kernels.torch_kernels import DequantKernel
from llamakit.kernels.torch_kernels import torch_kernel_for as kernel_for
from llamakit.quants import get_codec

from .conftest import TINY_GGUF


def tiny_metadata() -> tuple[dict, list[str]]:
    with GGUFReader(TINY_GGUF / "quantize-Q4_K_M.gguf") as r:
        return r.metadata, [t.name for t in r.tensors]


def test_config_from_tiny() -> None:
    md, names = tiny_metadata()
    c = LlamaConfig.from_gguf(md, names)
    assert (c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.n_ff) == (1000, 256, 4, 8, 4, 768)
    assert (c.head_dim, c.n_rot, c.n_ctx_train, c.rope_freq_base, c.rope_freq_scale) == (32, 32, 512, 10000.0, 1.0)
    assert not c.tied_output and not c.has_rope_freqs and c.biases == frozenset()
    assert c.norm_eps == pytest.approx(1e-5)
    tied = LlamaConfig.from_gguf(md, [n for n in names if n != "output.weight"])
    assert tied.tied_output
    scaled = LlamaConfig.from_gguf({**md, "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0},
                                   names)
    assert scaled.rope_freq_scale == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_layer = 3  # type: ignore[misc]


@pytest.mark.parametrize("change,error,text", [
    ({"general.architecture": "falcon"}, UnsupportedError, "unknown model architecture 'falcon'"),
    ({"llama.expert_count": 8}, UnsupportedError, "mixture-of-experts"),
    ({"llama.rope.scaling.type": "yarn"}, UnsupportedError, "rope scaling 'yarn'"),
    ({"llama.embedding_length": None}, GGUFFormatError, "llama.embedding_length is missing"),
    ({"llama.attention.head_count_kv": 3}, GGUFFormatError, "not a multiple"),
])
def test_config_errors(change: dict, error: type[Exception], text: str) -> None:
    md, names = tiny_metadata()
    md = {**md, **change}
    md = {k: v for k, v in md.items() if v is not None}
    with pytest.raises(error, match=text):
        LlamaConfig.from_gguf(md, names, what="m.gguf")


def test_rope_rotates_adjacent_pairs() -> None:
    md, names = tiny_metadata()
    cfg = LlamaConfig.from_gguf(md, names)
    x = torch.randn(3, 2, cfg.head_dim)
    pos = torch.tensor([0, 1, 7])
    cos, sin = rope_cos_sin(cfg, pos)
    y = apply_rope(x, cos, sin)
    for t, p in enumerate(pos.tolist()):
        for i in range(cfg.head_dim // 2):
            theta = p * cfg.rope_freq_base ** (-2 * i / cfg.head_dim)
            a, b = x[t, :, 2 * i], x[t, :, 2 * i + 1]
            torch.testing.assert_close(y[t, :, 2 * i], a * math.cos(theta) - b * math.sin(theta))
            torch.testing.assert_close(y[t, :, 2 * i + 1], a * math.sin(theta) + b * math.cos(theta))
    # freq factors divide theta (llama 3.1 rope_freqs)
    factors = torch.full((cfg.head_dim // 2,), 2.0)
    c2, s2 = rope_cos_sin(cfg, pos * 2, factors)
    torch.testing.assert_close(c2, cos)
    torch.testing.assert_close(s2, sin)


@pytest.mark.parametrize("ggml_type", [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q2_K,
                                       GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q4_K, GGMLType.Q6_K])
def test_kernels_equal_dequantize_then_matmul(ggml_type: GGMLType) -> None:
    codec = get_codec(ggml_type)
    g = torch.Generator().manual_seed(int(ggml_type))
    w = codec.quantize(torch.randn(300, 512, generator=g))
    x = torch.randn(5, 512, generator=g)
    ref = F.linear(x, codec.dequantize(w))
    k = kernel_for(ggml_type)
    torch.testing.assert_close(k.linear(x, w, 512), ref, atol=1e-4, rtol=1e-5)
    small = DequantKernel(codec, slab_values=512 * 7)  # 43 slabs of 7 rows, the last one shorter
    torch.testing.assert_close(small.linear(x, w, 512), ref, atol=1e-4, rtol=1e-5)
    ids = torch.tensor([3, 299, 0, 3])
    torch.testing.assert_close(k.rows(w, ids, 512), codec.dequantize(w)[ids], atol=0, rtol=0)
    if hasattr(k, "dequant"):  # word-level unpacking must give the codec's exact values, slices included
        assert torch.equal(k.dequant(w), codec.dequantize(w))
        assert torch.equal(k.dequant(w[7:19]), codec.dequantize(w[7:19]))


def test_iq_types_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedError, match="blk.0.attn_q.weight.*IQ2_XXS"):
        kernel_for(GGMLType.IQ2_XXS, what="blk.0.attn_q.weight")
