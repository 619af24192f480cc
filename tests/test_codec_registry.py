"""Codec registry basics and the foundation codecs (F32, F16, BF16, Q8_0) against llama.cpp's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llamakit.errors import UnsupportedError
from llamakit.gguf import GGMLType, GGUFReader
from llamakit.quants import as_tensor, get_codec
from llamakit.quants.base import nearest_int, roundf


def _rows(r: GGUFReader, name: str) -> torch.Tensor:
    t = r.tensor(name)
    return get_codec(t.ggml_type).dequantize(as_tensor(r.tensor_data(t)).reshape(*t.shape[:-1], -1))


@pytest.mark.parametrize("outtype,gtype", [("q8_0", GGMLType.Q8_0), ("f16", GGMLType.F16), ("bf16", GGMLType.BF16)])
def test_quantize_matches_llama_cpp(tiny_gguf: Path, outtype: str, gtype: GGMLType) -> None:
    """Each codec applied to the f32 weights gives the bytes llama.cpp's converter wrote."""
    n_checked = 0
    with GGUFReader(tiny_gguf / "convert-f32.gguf") as src, GGUFReader(tiny_gguf / f"convert-{outtype}.gguf") as ref:
        for t in ref.tensors:
            if t.ggml_type != gtype:
                continue
            got = get_codec(gtype).quantize(_rows(src, t.name))
            assert np.array_equal(got.numpy().reshape(-1), ref.tensor_data(t)), t.name
            n_checked += 1
    assert n_checked >= 28  # 4 layers x 7 matrices + embeddings


def test_q8_0_known_block() -> None:
    x = torch.tensor([[127.0, -63.5, 0.5, -0.5] + [0.0] * 28])  # amax 127 -> d = 1, ties away from zero
    b = get_codec(GGMLType.Q8_0).quantize(x)
    assert b.shape == (1, 34)
    assert b[0, :2].view(torch.float16).item() == 1.0
    assert b[0, 2:6].view(torch.int8).tolist() == [127, -64, 1, -1]
    assert get_codec(GGMLType.Q8_0).dequantize(b)[0, :4].tolist() == [127.0, -64.0, 1.0, -1.0]


def test_q8_0_zero_block() -> None:
    b = get_codec(GGMLType.Q8_0).quantize(torch.zeros(2, 64))
    assert b.shape == (2, 68) and not b.any()


def test_rounding_helpers() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 2.4999998])
    assert roundf(x).tolist() == [1.0, 2.0, 3.0, -1.0, -3.0, 0.0, 2.0]
    assert nearest_int(x).tolist() == [0, 2, 2, 0, -2, 0, 2]


def test_unsupported_type_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedError, match="blk.0.attn_q.weight: ggml type IQ2_XXS is not supported"):
        get_codec(GGMLType.IQ2_XXS, "blk.0.attn_q.weight")
