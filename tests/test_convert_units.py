"""Pieces of the converter: q/k permutation, llama3 rope factors, config dialects, rounding, naming."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from llamakit.convert import convert
from llamakit.convert.export_hf import permute_qk
from llamakit.convert.general import id_to_title, size_label
from llamakit.convert.hf import unpermute_qk
from llamakit.convert.params import Llama3Rope, LlamaParams, llama3_rope_factors
from llamakit.convert.pipeline import PlannedTensor, encode_tensor
from llamakit.gguf import GGMLType, GGUFReader, GGUFValueType

from .conftest import TINY, TINY_GGUF

SRC = TINY / "source"


@pytest.mark.parametrize("heads", [1, 3, 8])
def test_qk_permutation_round_trip(heads: int) -> None:
    w = torch.arange(heads * 16 * 5, dtype=torch.float32).reshape(heads * 16, 5)
    gguf_layout = unpermute_qk(w, heads)
    assert not torch.equal(gguf_layout, w)
    assert torch.equal(permute_qk(gguf_layout, heads), w)
    # per head, HF rows [r0..r7 | r8..r15] become interleaved pairs (r0, r8), (r1, r9), ...
    assert gguf_layout[:4, 0].tolist() == [w[0, 0].item(), w[8, 0].item(), w[1, 0].item(), w[9, 0].item()]


def test_unpermute_matches_the_reference_conversion() -> None:
    from safetensors.torch import load_file

    hf = load_file(str(SRC / "hf" / "model-00001-of-00003.safetensors"))
    with GGUFReader(TINY_GGUF / "convert-f32.gguf") as r:
        for name, gname, heads in (("q_proj", "attn_q", 8), ("k_proj", "attn_k", 4)):
            t = r.tensor(f"blk.0.{gname}.weight")
            ref = torch.from_numpy(r.tensor_data(t).view(np.float32).reshape(t.shape).copy())
            w = hf[f"model.layers.0.self_attn.{name}.weight"]
            assert torch.equal(unpermute_qk(w, heads), ref) and not torch.equal(w, ref)


def _rope_factors_llama_cpp_style(p: LlamaParams) -> torch.Tensor:
    """convert_hf_to_gguf.py's loop: one 0-d float32 tensor at a time."""
    r = p.llama3_rope
    assert r is not None and p.rope_theta is not None
    dim = p.head_size
    freqs = 1.0 / (p.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    lo, hi = r.original_context / r.low_freq_factor, r.original_context / r.high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < hi:
            out.append(1)
        elif wavelen > lo:
            out.append(r.factor)
        else:
            smooth = (r.original_context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
            out.append(1 / ((1 - smooth) / r.factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("theta,factor,dim", [(500000.0, 8.0, 128), (500000.0, 32.0, 64), (10000.0, 4.0, 32)])
def test_llama3_rope_factors_bitwise(theta: float, factor: float, dim: int) -> None:
    p = LlamaParams(n_layer=1, n_embd=dim * 4, n_head=4, vocab_size=10, rope_theta=theta,
                    llama3_rope=Llama3Rope(factor, 1.0, 4.0, 8192))
    got, want = llama3_rope_factors(p), _rope_factors_llama_cpp_style(p)
    assert got.dtype == torch.float32 and got.shape == (dim // 2,)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert got[0] == 1.0 and got[-1] == factor  # high frequencies untouched, low ones scaled fully


def _tiny_hf_with(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    d = tmp_path / "hf"
    shutil.copytree(SRC / "hf", d)
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").chmod(0o644)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_transformers_5_rope_parameters_give_the_same_file(tmp_path: Path) -> None:
    def v5(cfg):  # type: ignore[no-untyped-def]
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
    d = _tiny_hf_with(tmp_path, v5)
    convert(d, "f16", tmp_path / "v5.gguf")
    assert (tmp_path / "v5.gguf").read_bytes() == (TINY_GGUF / "convert-f16.gguf").read_bytes()


@pytest.mark.parametrize("dialect", ["4.x", "5.x"])
def test_llama3_rope_scaling_adds_rope_freqs(tmp_path: Path, dialect: str) -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256}

    def edit(cfg):  # type: ignore[no-untyped-def]
        if dialect == "4.x":
            cfg["rope_scaling"] = scaling
        else:
            cfg["rope_parameters"] = {**scaling, "rope_theta": cfg.pop("rope_theta")}
    d = _tiny_hf_with(tmp_path, edit)
    convert(d, "q8_0", tmp_path / "r.gguf")
    with GGUFReader(tmp_path / "r.gguf") as a, GGUFReader(TINY_GGUF / "convert-q8_0.gguf") as b:
        first = a.tensors[0]
        assert (first.name, first.ggml_type, first.shape) == ("rope_freqs.weight", GGMLType.F32, (16,))
        p = LlamaParams(n_layer=4, n_embd=256, n_head=8, vocab_size=1000, rope_theta=10000.0, head_dim=32,
                        llama3_rope=Llama3Rope(8.0, 1.0, 4.0, 256))  # the value inside rope_scaling is used
        assert np.array_equal(a.tensor_data(first).view(np.float32), _rope_factors_llama_cpp_style(p).numpy())
        assert [t.name for t in a.tensors[1:]] == [t.name for t in b.tensors]
        assert all(np.array_equal(a.tensor_data(t), b.tensor_data(b.tensor(t.name))) for t in a.tensors[1:])
        assert a.metadata["llama.rope.freq_base"] == 10000.0
        assert "llama.rope.scaling.type" not in a.metadata


def test_linear_rope_scaling_keys(tmp_path: Path) -> None:
    d = _tiny_hf_with(tmp_path, lambda cfg: cfg.update(rope_scaling={"type": "linear", "factor": 4.0}))
    convert(d, "f16", tmp_path / "l.gguf", vocab_only=True)
    with GGUFReader(tmp_path / "l.gguf") as r:
        keys = list(r.fields)
        i = keys.index("llama.rope.dimension_count")
        assert keys[i + 1:i + 3] == ["llama.rope.scaling.type", "llama.rope.scaling.factor"]
        assert r.metadata["llama.rope.scaling.type"] == "linear" and r.metadata["llama.rope.scaling.factor"] == 4.0
        assert r.fields["llama.rope.scaling.factor"].type == GGUFValueType.FLOAT32


def _edge_floats() -> torch.Tensor:
    """Every finite bfloat16 (so every f16 rounding case reachable from bf16) plus f32 values near f16 limits."""
    bf = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    extra = torch.tensor([65504.0, 65519.99, 65520.0, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-9, 0.1, 1 / 3])
    x = torch.cat([bf, extra, -extra])
    return x[torch.isfinite(x)]


@pytest.mark.parametrize("src", [torch.float32, torch.bfloat16])
def test_float_conversions_round_like_numpy(src: torch.dtype) -> None:
    """F16: llama.cpp upcasts to f32 and numpy rounds to nearest even; llamakit's direct copy must agree bit for
    bit, subnormals and overflow included."""
    x = _edge_floats()
    if src == torch.bfloat16:
        x = x[x.abs() < 3e38].to(torch.bfloat16)
    n = x.numel() - x.numel() % 32
    x = x[:n].reshape(-1, 32)
    t = PlannedTensor("w.weight", tuple(x.shape), GGMLType.F16, x.dtype, x.numel() * 2, lambda: x)
    with np.errstate(over="ignore"):
        want = x.float().numpy().astype(np.float16)
    assert np.array_equal(encode_tensor(t).view(np.uint16), want.view(np.uint16).reshape(-1))


def test_q8_0_matches_gguf_py() -> None:
    import gguf

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 256, generator=g) * torch.logspace(-6, 3, 64).unsqueeze(1)
    x[0, :32] = 0.0
    t = PlannedTensor("w.weight", tuple(x.shape), GGMLType.Q8_0, x.dtype, 64 * 8 * 34, lambda: x)
    want = gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(encode_tensor(t), want.reshape(-1))


def test_names_and_size_labels() -> None:
    assert id_to_title("hf") == "Hf"
    assert id_to_title("SmolLM2-135M-Instruct") == "SmolLM2 135M Instruct"
    assert id_to_title("llama-2-7b-chat-v1.1") == "Llama 2 7b Chat v1.1"
    assert [size_label(n) for n in (3660032, 134515008, 8030261248, 999, 70553706496)] == \
        ["3.7M", "135M", "8.0B", "1.0K", "71B"]
