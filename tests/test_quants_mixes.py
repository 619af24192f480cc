"""llama_tensor_get_type for shapes the reference files do not cover: 32/80-layer GQA models (Llama 2/3 7B/70B)
and 8-expert models. Expected types read off src/llama-quant.cpp at c392e50."""

from __future__ import annotations

import pytest

from llamakit.errors import InputError, UnsupportedError
from llamakit.gguf import GGMLType, LlamaFileType
from llamakit.quants.mixes import (
    FILE_TYPES,
    ModelInfo,
    TypeChooser,
    is_quantizable,
    loader_order,
    parse_file_type,
    parse_tensor_type,
    use_more_bits,
)

T, FT = GGMLType, LlamaFileType
PER_LAYER = ("attn_k", "attn_norm", "attn_output", "attn_q", "attn_v", "ffn_down", "ffn_gate", "ffn_norm", "ffn_up")


def _names(n_layer: int, tied: bool = False) -> list[str]:
    names = ["token_embd.weight", "output_norm.weight"] + ([] if tied else ["output.weight"])
    return names + [f"blk.{i}.{n}.weight" for i in range(n_layer) for n in PER_LAYER]


def _choose(ftype: LlamaFileType, n_layer: int, n_head: int, n_head_kv: int, n_expert: int = 0,
            ne0: int = 4096, base: GGMLType | None = None) -> dict[str, GGMLType]:
    names = loader_order(_names(n_layer))
    model = ModelInfo.from_metadata({"general.architecture": "llama", "llama.block_count": n_layer,
                                     "llama.attention.head_count": n_head, "llama.attention.head_count_kv": n_head_kv,
                                     "llama.expert_count": n_expert}, names)
    spec = next(s for s in FILE_TYPES if s.ftype == ftype)
    chooser = TypeChooser(ftype, model)
    return {n: chooser.choose(n, ne0, base or spec.base).ggml_type for n in names if is_quantizable(n, 2, False)}


def test_loader_order() -> None:
    names = ["blk.10.attn_q.weight", "blk.2.ffn_up.weight", "output.weight", "token_embd.weight", "blk.2.attn_k.weight",
             "output_norm.weight", "rope_freqs.weight"]
    assert loader_order(names) == ["output.weight", "output_norm.weight", "rope_freqs.weight", "token_embd.weight",
                                   "blk.2.attn_k.weight", "blk.2.ffn_up.weight", "blk.10.attn_q.weight"]


def test_llama_7b_q4_k_m() -> None:
    types = _choose(FT.MOSTLY_Q4_K_M, 32, 32, 32)
    more = [i for i in range(32) if use_more_bits(i, 32)]
    assert types["output.weight"] == T.Q6_K and types["token_embd.weight"] == T.Q4_K
    for i in range(32):
        want = T.Q6_K if i in more else T.Q4_K
        assert types[f"blk.{i}.attn_v.weight"] == types[f"blk.{i}.ffn_down.weight"] == want
        assert types[f"blk.{i}.attn_q.weight"] == types[f"blk.{i}.ffn_up.weight"] == T.Q4_K


def test_llama_70b_gets_more_bits_in_attn_v() -> None:
    q4 = _choose(FT.MOSTLY_Q4_K_M, 80, 64, 8)
    assert q4["blk.0.attn_v.weight"] == T.Q6_K  # use_more_bits
    assert q4["blk.11.attn_v.weight"] == T.Q5_K  # Q4_K bumped for 70B
    assert q4["blk.11.ffn_down.weight"] == T.Q4_K
    q2 = _choose(FT.MOSTLY_Q2_K, 80, 64, 8)
    assert q2["blk.5.attn_v.weight"] == T.Q5_K  # n_gqa 8 >= 4 -> Q4_K -> 70B -> Q5_K
    assert q2["blk.5.ffn_down.weight"] == q2["blk.5.attn_output.weight"] == T.Q3_K
    # 80 layers without GQA is the 65B: no bump
    assert _choose(FT.MOSTLY_Q4_K_M, 80, 64, 64)["blk.11.attn_v.weight"] == T.Q4_K


@pytest.mark.parametrize("ftype,v0,v5,down0,down5,out_proj", [
    (FT.MOSTLY_Q3_K_S, T.Q3_K, T.Q3_K, T.Q3_K, T.Q3_K, T.Q3_K),
    (FT.MOSTLY_Q3_K_M, T.Q5_K, T.Q4_K, T.Q5_K, T.Q4_K, T.Q4_K),
    (FT.MOSTLY_Q3_K_L, T.Q5_K, T.Q5_K, T.Q5_K, T.Q5_K, T.Q5_K),
    (FT.MOSTLY_Q4_K_S, T.Q5_K, T.Q4_K, T.Q5_K, T.Q4_K, T.Q4_K),
    (FT.MOSTLY_Q5_K_S, T.Q5_K, T.Q5_K, T.Q5_K, T.Q5_K, T.Q5_K),
    (FT.MOSTLY_Q5_K_M, T.Q6_K, T.Q5_K, T.Q6_K, T.Q5_K, T.Q5_K),  # layer 5 of 32 is not a use_more_bits layer
    (FT.MOSTLY_Q6_K, T.Q6_K, T.Q6_K, T.Q6_K, T.Q6_K, T.Q6_K),
    (FT.MOSTLY_Q4_0, T.Q4_0, T.Q4_0, T.Q4_0, T.Q4_0, T.Q4_0),
])
def test_mixes_on_a_32_layer_gqa_model(ftype: LlamaFileType, v0: GGMLType, v5: GGMLType, down0: GGMLType,
                                       down5: GGMLType, out_proj: GGMLType) -> None:
    types = _choose(ftype, 32, 32, 8)
    got = (types["blk.0.attn_v.weight"], types["blk.5.attn_v.weight"], types["blk.0.ffn_down.weight"],
           types["blk.5.ffn_down.weight"], types["blk.5.attn_output.weight"])
    assert got == (v0, v5, down0, down5, out_proj)


def test_eight_experts() -> None:
    names = loader_order(["output.weight", "token_embd.weight"] + [
        f"blk.{i}.{n}.weight" for i in range(32) for n in ("attn_v", "attn_k", "attn_output", "ffn_down_exps")])
    model = ModelInfo.from_metadata({"general.architecture": "llama", "llama.block_count": 32,
                                     "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8,
                                     "llama.expert_count": 8}, names)
    chooser = TypeChooser(FT.MOSTLY_Q4_K_M, model)
    types = {n: chooser.choose(n, 4096, T.Q4_K).ggml_type for n in names}
    assert types["blk.3.attn_v.weight"] == types["blk.3.attn_k.weight"] == T.Q8_0
    assert types["blk.3.attn_output.weight"] == T.Q5_K
    assert types["blk.0.ffn_down_exps.weight"] == T.Q6_K and types["blk.4.ffn_down_exps.weight"] == T.Q4_K
    with pytest.raises(UnsupportedError, match="cannot determine the layer"):
        chooser.choose("ffn_down_exps.weight", 4096, T.Q4_K)


def test_fallbacks_and_summary() -> None:
    types = _choose(FT.MOSTLY_Q4_K_M, 4, 8, 8, ne0=576)
    assert types["output.weight"] == T.Q8_0  # output rule: 576 % 256 -> Q8_0 directly, not a fallback
    assert types["blk.0.attn_q.weight"] == T.Q5_0
    assert types["blk.0.attn_v.weight"] == T.Q5_0 and types["blk.2.attn_v.weight"] == T.Q8_0  # use_more_bits(2, 4)
    assert _choose(FT.MOSTLY_Q5_K_M, 4, 8, 8, ne0=576)["blk.1.attn_q.weight"] == T.Q5_1
    assert _choose(FT.MOSTLY_Q3_K_M, 4, 8, 8, ne0=576)["blk.1.attn_q.weight"] == T.IQ4_NL
    model = ModelInfo("llama", 4, 8, 8, 0, True, 4)
    chooser = TypeChooser(FT.MOSTLY_Q6_K, model)
    assert chooser.choose("blk.1.attn_q.weight", 80, T.Q6_K).ggml_type == T.F16  # Q8_0 does not fit 80 either
    assert chooser.fallback_summary() == ("1 of 1 tensor(s) required fallback quantization: "
                                          "1 x Q6_K -> F16 (rows of 80 not a multiple of 256)")
    with pytest.raises(UnsupportedError, match="no fallback type for Q4_0"):
        TypeChooser(FT.MOSTLY_Q4_0, model).choose("blk.1.attn_q.weight", 80, T.Q4_0)
    with pytest.raises(UnsupportedError, match="no fallback type for Q8_0"):  # llama.cpp throws here too
        TypeChooser(FT.MOSTLY_Q4_0, model).choose("output.weight", 80, T.Q4_0)


def test_which_tensors_are_quantized() -> None:
    assert is_quantizable("blk.0.attn_q.weight", 2, False)
    assert not is_quantizable("blk.0.attn_norm.weight", 1, False)
    assert not is_quantizable("blk.0.attn_q.bias", 2, False)
    assert not is_quantizable("rope_freqs.weight", 1, False)
    assert not is_quantizable("blk.0.ffn_gate_inp.weight", 2, False)
    assert is_quantizable("output.weight", 2, False) and not is_quantizable("output.weight", 2, True)


def test_parse_file_type() -> None:
    assert parse_file_type("q4_k_m").name == "Q4_K_M"
    assert parse_file_type("Q4_K").ftype == FT.MOSTLY_Q4_K_M
    assert parse_file_type("15").name == "Q4_K"  # the alias comes first in llama-quantize's table
    assert parse_file_type("0").name == "F32" and parse_file_type("copy").base is None
    assert parse_file_type(" 7 ").name == "Q8_0"
    with pytest.raises(InputError, match="valid types: Q4_0 \\(2\\), Q4_1 \\(3\\)"):
        parse_file_type("Q4_K_XL")


def test_parse_tensor_type() -> None:
    assert parse_tensor_type("q6_k", "--x") == T.Q6_K and parse_tensor_type("IQ4_NL", "--x") == T.IQ4_NL
    with pytest.raises(InputError, match="--x: unknown or unsupported tensor type 'iq2_xxs'"):
        parse_tensor_type("iq2_xxs", "--x")
