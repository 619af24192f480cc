"""The 576-wide SmolLM2-135M (30 layers, tied embeddings): llama.cpp's row-size fallbacks and the mixes.

The per-tensor types come from the plan (no data is touched); one end-to-end run requantizes the real model
to Q4_K_M, and a two-layer F16 cut of it exercises the IQ4_NL fallback of the Q2_K / Q3_K mixes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from llamakit.cli import app
from llamakit.gguf import GGMLType, GGUFReader, GGUFWriter
from llamakit.quantize import plan_quantize
from llamakit.quants import as_tensor, get_codec
from llamakit.quants.mixes import use_more_bits

T = GGMLType
MORE_BITS = [i for i in range(30) if use_more_bits(i, 30)]


def _types(smollm2: Path, ftype: str) -> tuple[dict[str, GGMLType], str | None]:
    with plan_quantize(smollm2, ftype, allow_requantize=True) as plan:
        return {t.name: t.ggml_type for t in plan.tensors}, plan.fallback_summary


def test_use_more_bits_layers() -> None:
    assert MORE_BITS == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert [i for i in range(32) if use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def test_q4_k_m_fallbacks(smollm2_gguf: Path) -> None:
    types, summary = _types(smollm2_gguf, "Q4_K_M")
    assert summary is not None and summary.startswith("180 of 211 tensor(s) required fallback quantization")
    assert "166 x Q4_K -> Q5_0 (rows of 576 not a multiple of 256)" in summary
    assert "14 x Q6_K -> Q8_0" in summary
    assert types["token_embd.weight"] == T.Q8_0  # tied: output rules, 576 % 256 -> Q8_0 directly
    assert types["output_norm.weight"] == T.F32
    for i in range(30):
        more = i in MORE_BITS
        assert types[f"blk.{i}.attn_v.weight"] == (T.Q8_0 if more else T.Q5_0)
        assert types[f"blk.{i}.ffn_down.weight"] == (T.Q6_K if more else T.Q4_K)  # 1536 wide: no fallback
        for n in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert types[f"blk.{i}.{n}.weight"] == T.Q5_0
        assert types[f"blk.{i}.attn_norm.weight"] == types[f"blk.{i}.ffn_norm.weight"] == T.F32


@pytest.mark.parametrize("ftype,body,attn_v,ffn_down,summary", [
    ("Q2_K", T.IQ4_NL, T.IQ4_NL, T.Q3_K, "180 of 211"),  # n_gqa = 3 < 4: attn_v Q3_K -> IQ4_NL
    ("Q3_K_S", T.IQ4_NL, T.IQ4_NL, T.Q3_K, "180 of 211"),
    ("Q5_K_S", T.Q5_1, T.Q5_1, T.Q5_K, "180 of 211"),
    ("Q6_K", T.Q8_0, T.Q8_0, T.Q6_K, "180 of 211"),
    ("Q4_0", T.Q4_0, T.Q4_0, T.Q4_0, "1 of 211"),  # only the tied embedding: Q6_K -> Q8_0
    ("Q8_0", T.Q8_0, T.Q8_0, T.Q8_0, None),
], ids=["Q2_K", "Q3_K_S", "Q5_K_S", "Q6_K", "Q4_0", "Q8_0"])
def test_other_mixes(smollm2_gguf: Path, ftype: str, body: GGMLType, attn_v: GGMLType, ffn_down: GGMLType,
                     summary: str | None) -> None:
    types, text = _types(smollm2_gguf, ftype)
    assert types["token_embd.weight"] == T.Q8_0
    assert types["blk.7.attn_q.weight"] == body
    assert types["blk.7.attn_v.weight"] == attn_v
    assert types["blk.7.ffn_down.weight"] == ffn_down
    assert (text is None) if summary is None else text.startswith(f"{summary} tensor(s) required fallback")


def test_q3_k_m_first_attn_v_and_attn_output(smollm2_gguf: Path) -> None:
    types, _ = _types(smollm2_gguf, "Q3_K_M")
    assert types["blk.0.attn_v.weight"] == types["blk.1.attn_v.weight"] == T.Q5_1  # Q5_K -> Q5_1
    assert types["blk.2.attn_v.weight"] == T.Q5_0  # Q4_K -> Q5_0
    assert types["blk.0.attn_output.weight"] == T.Q5_0  # Q4_K -> Q5_0
    assert types["blk.0.ffn_down.weight"] == T.Q5_K and types["blk.2.ffn_down.weight"] == T.Q4_K  # i < 30/16


def _snr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * torch.log10((a ** 2).sum() / ((a - b) ** 2).sum()).item()


def _weights(r: GGUFReader, name: str) -> torch.Tensor:
    t = r.tensor(name)
    return get_codec(t.ggml_type).dequantize(as_tensor(r.tensor_data(t)).reshape(*t.shape[:-1], -1))


def test_requantize_smollm2_to_q4_k_m(smollm2_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "q4km.gguf"
    res = CliRunner().invoke(app, ["quantize", str(smollm2_gguf), str(out), "Q4_K_M", "--allow-requantize"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "180 of 211 tensor(s) required fallback quantization" in text
    assert "98.87 MiB (6.17 bits per weight)" in text  # llama-quantize reports 98.87 MiB, 6.17 BPW
    types, _ = _types(smollm2_gguf, "Q4_K_M")
    with GGUFReader(out) as r, GGUFReader(smollm2_gguf) as s:
        assert {t.name: t.ggml_type for t in r.tensors} == types
        assert r.metadata["general.file_type"] == 15
        for name in ("token_embd.weight", "blk.0.attn_v.weight", "blk.3.attn_v.weight", "blk.29.ffn_down.weight",
                     "blk.4.ffn_down.weight", "blk.11.ffn_up.weight"):
            assert _snr(_weights(s, name), _weights(r, name)) > 18, name


def _cut_to_f16(src: Path, dst: Path, n_layers: int) -> None:
    """The first layers of SmolLM2 as an F16 model (the fixture the fallbacks run on)."""
    with GGUFReader(src) as r, GGUFWriter(dst) as w:
        for k, v in r.fields.items():
            w.add(k, n_layers if k == "llama.block_count" else v.value, v.type, v.elem_type)
        keep = [t for t in r.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < n_layers]
        for t in keep:
            w.add_tensor_info(t.name, t.shape, T.F32 if len(t.shape) == 1 else T.F16)
        w.write_header()
        for t in keep:
            x = _weights(r, t.name)
            w.write_tensor(t.name, (x if len(t.shape) == 1 else x.to(torch.float16)).contiguous().view(torch.uint8).numpy())


def test_iq4_nl_fallback_end_to_end(smollm2_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut-f16.gguf"
    _cut_to_f16(smollm2_gguf, cut, 2)
    out = tmp_path / "q2k.gguf"
    res = CliRunner().invoke(app, ["quantize", str(cut), str(out), "Q2_K"])
    assert res.exit_code == 0, res.output
    assert "12 of 15 tensor(s) required fallback quantization" in " ".join(res.output.split())
    with GGUFReader(out) as r, GGUFReader(cut) as s:
        got = {t.name: t.ggml_type for t in r.tensors}
        assert got["blk.1.attn_q.weight"] == got["blk.0.attn_v.weight"] == T.IQ4_NL
        assert got["blk.0.ffn_down.weight"] == T.Q3_K and got["token_embd.weight"] == T.Q8_0
        for name in ("blk.0.attn_q.weight", "blk.1.ffn_gate.weight", "blk.0.ffn_down.weight"):
            assert _snr(_weights(s, name), _weights(r, name)) > 13, name
        assert np.array_equal(r.tensor_data("output_norm.weight"), s.tensor_data("output_norm.weight"))
