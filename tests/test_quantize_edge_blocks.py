"""Whole files of edge blocks through `llamakit quantize`, with and without the native quantizers: zeros (signed),
one outlier, subnormals, values whose squares overflow, rows not a multiple of 256 (the IQ4_NL / Q5_0 / Q8_0
fallbacks of SmolLM2's 576-wide matrices) and rows that are. The native file must be the torch codecs' file,
byte for byte, and the types must be the fallback table's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llamakit.gguf import GGMLType, GGUFReader
from llamakit.kernels.quantizers import NativeBuildError, load_quantizer
from llamakit.quantize import quantize_file

from .test_quantize_cli import _tiny_model

try:
    load_quantizer()
except NativeBuildError as e:  # no compiler: the torch path is all there is (test_quantize_reference covers it)
    pytest.skip(f"native quantizers unavailable: {e}", allow_module_level=True)


def _edge_matrix(rows: int, width: int, seed: int, dtype: type) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, width)) * 0.02).astype(np.float32)
    x[0] = 0.0
    x[0, 1::5] = -0.0  # signed zeros
    x[1, 7] = 40.0 if dtype == np.float16 else 9e3  # one outlier in a row of small weights
    x[2] = (rng.standard_normal(width) * (6e-8 if dtype == np.float16 else 1e-41)).astype(np.float32)  # subnormals
    x[3, : width // 2] = 0.5  # a flat run
    if dtype == np.float32:
        x[4, 32:64] = (rng.standard_normal(32) * 1e20).astype(np.float32)  # x*x overflows: a NaN scale search
    return x.astype(dtype)


def _model(path: Path, dtype: type) -> None:
    weights = {  # 576: not a multiple of 256 (K-quants fall back); 512: K-quants
        "token_embd.weight": _edge_matrix(6, 576, 1, dtype),
        "blk.0.attn_q.weight": _edge_matrix(6, 576, 2, dtype),
        "blk.0.attn_v.weight": _edge_matrix(6, 576, 3, dtype),
        "blk.0.ffn_down.weight": _edge_matrix(6, 512, 4, dtype),
        "blk.0.ffn_up.weight": _edge_matrix(6, 512, 5, dtype),
    }
    _tiny_model(path, weights)  # head_count_kv defaults to head_count (2), as in llama.cpp

FALLBACKS = {  # the type of blk.0.attn_q.weight (576 wide) and of blk.0.ffn_up.weight (512 wide)
    "Q2_K": (GGMLType.IQ4_NL, GGMLType.Q2_K),
    "Q3_K_M": (GGMLType.IQ4_NL, GGMLType.Q3_K),
    "Q4_K_M": (GGMLType.Q5_0, GGMLType.Q4_K),
    "Q5_K_M": (GGMLType.Q5_1, GGMLType.Q5_K),
    "Q6_K": (GGMLType.Q8_0, GGMLType.Q6_K),
    "Q4_0": (GGMLType.Q4_0, GGMLType.Q4_0),
    "Q8_0": (GGMLType.Q8_0, GGMLType.Q8_0),
}


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("ftype", list(FALLBACKS))
def test_native_file_equals_the_torch_codecs_file(ftype: str, dtype: type, tmp_path: Path) -> None:
    src = tmp_path / "edge.gguf"
    _model(src, dtype)
    native, torch_only = tmp_path / "native.gguf", tmp_path / "torch.gguf"
    quantize_file(src, native, ftype, threads=2)
    quantize_file(src, torch_only, ftype, threads=1, native=False)
    with GGUFReader(native) as r:
        types = {t.name: t.ggml_type for t in r.tensors}
    assert (types["blk.0.attn_q.weight"], types["blk.0.ffn_up.weight"]) == FALLBACKS[ftype]
    assert native.read_bytes() == torch_only.read_bytes()
