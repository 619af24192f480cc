"""`llamakit convert` against llama.cpp's own output: the four tiny-llama checkpoint layouts, each outtype.

llama.cpp's files come from `convert_hf_to_gguf.py source/hf --outtype T`. For source/hf llamakit must write the
same file byte for byte. The other layouts hold the same values, so their tensors (name, type, shape, bytes) and
the compared metadata must be equal too; their tensor order is their checkpoint's own (a state dict's order, as
llama.cpp would keep it), which the 3-shard reference order cannot predict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llamakit.cli import app
from llamakit.convert import convert, plan_conversion
from llamakit.gguf import GGMLType, GGUFReader

from .conftest import TINY, TINY_GGUF

SRC = TINY / "source"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
COMPARED_GENERAL = ("general.architecture", "general.file_type", "general.quantization_version")
runner = CliRunner()


def compared_keys(r: GGUFReader, skip: tuple[str, ...] = ()) -> list[str]:
    return [k for k in r.fields
            if (not k.startswith("general.") or k in COMPARED_GENERAL) and k not in skip]


def assert_same_metadata(ours: GGUFReader, ref: GGUFReader, skip: tuple[str, ...] = ()) -> None:
    assert compared_keys(ours, skip) == compared_keys(ref, skip)  # same keys in the same order
    for k in compared_keys(ref, skip):
        a, b = ours.fields[k], ref.fields[k]
        assert (a.type, a.elem_type) == (b.type, b.elem_type), k
        if isinstance(b.value, np.ndarray):
            assert a.value.dtype == b.value.dtype and np.array_equal(a.value, b.value), k
        else:
            assert a.value == b.value, k


def assert_same_tensors(ours: GGUFReader, ref: GGUFReader, same_order: bool) -> None:
    if same_order:
        assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    by_name = {t.name: t for t in ref.tensors}
    assert sorted(by_name) == sorted(t.name for t in ours.tensors)
    for t in ours.tensors:
        u = by_name[t.name]
        assert (t.ggml_type, t.shape) == (u.ggml_type, u.shape), t.name
        assert np.array_equal(ours.tensor_data(t), ref.tensor_data(u)), t.name


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_hf_is_byte_identical_to_llama_cpp(tmp_path: Path, outtype: str) -> None:
    out = tmp_path / "out.gguf"
    res = convert(SRC / "hf", outtype, out)
    ref = TINY_GGUF / f"convert-{outtype}.gguf"
    assert res.file_bytes == ref.stat().st_size and res.n_tensors == 39
    with GGUFReader(out) as a, GGUFReader(ref) as b:
        assert_same_metadata(a, b)
        assert_same_tensors(a, b, same_order=True)
        assert a.metadata["general.name"] == b.metadata["general.name"] == "Hf"
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("layout", ["hf-bin", "meta", "meta-2shard"])
@pytest.mark.parametrize("outtype", OUTTYPES)
def test_other_layouts_match_llama_cpp(tmp_path: Path, layout: str, outtype: str) -> None:
    out = tmp_path / "out.gguf"
    # params.json states no context length: --ctx gives the one the HF config has
    convert(SRC / layout, outtype, out, n_ctx=512 if layout.startswith("meta") else None)
    with GGUFReader(out) as a, GGUFReader(TINY_GGUF / f"convert-{outtype}.gguf") as b:
        assert_same_metadata(a, b)
        assert_same_tensors(a, b, same_order=False)


def test_meta_context_length_default_and_tensor_order(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    convert(SRC / "meta-2shard", "f16", out)
    with GGUFReader(out) as r:
        assert r.metadata["llama.context_length"] == 4096  # norm_eps 1e-5: the Llama 2 rule
        # shard 0's state-dict order, mapped
        assert [t.name for t in r.tensors][:5] == ["token_embd.weight", "output_norm.weight", "output.weight",
                                                   "blk.0.attn_q.weight", "blk.0.attn_k.weight"]


def test_hf_bin_keeps_state_dict_order(tmp_path: Path) -> None:
    out = tmp_path / "b.gguf"
    convert(SRC / "hf-bin", "f16", out)
    with GGUFReader(out) as r:
        assert [t.name for t in r.tensors][:3] == ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight"]


def test_outtype_auto(tmp_path: Path) -> None:
    # first tensor f16 -> f16 (meta), otherwise bf16 (hf is f32, hf-bin is bf16)
    for layout, want in (("meta", "f16"), ("hf", "bf16"), ("hf-bin", "bf16")):
        with plan_conversion(SRC / layout, "auto", tmp_path / "x.gguf") as p:
            assert p.outtype == want, layout
    convert(SRC / "meta", "auto", tmp_path / "auto.gguf")
    assert (tmp_path / "auto.gguf").read_bytes()[:4] == b"GGUF"
    with GGUFReader(tmp_path / "auto.gguf") as a, GGUFReader(TINY_GGUF / "convert-f16.gguf") as b:
        assert_same_tensors(a, b, same_order=False)


def test_vocab_only(tmp_path: Path) -> None:
    out = tmp_path / "v.gguf"
    res = convert(SRC / "hf", "f16", out, vocab_only=True)
    assert res.n_tensors == 0
    with GGUFReader(out) as a, GGUFReader(TINY_GGUF / "convert-f16.gguf") as b:
        assert a.tensors == []
        assert_same_metadata(a, b)
        assert "general.size_label" not in a.fields  # no tensors, no parameter count (as llama.cpp)


def test_cli_default_outfile_progress_and_final_line(tmp_path: Path) -> None:
    model = tmp_path / "Tiny-Llama"
    shutil.copytree(SRC / "hf", model)
    res = runner.invoke(app, ["convert", str(model), "--outtype", "q8_0"])
    assert res.exit_code == 0, res.output
    out = model / "Tiny-Llama-q8_0.gguf"
    with GGUFReader(out) as a, GGUFReader(TINY_GGUF / "convert-q8_0.gguf") as b:
        assert_same_tensors(a, b, same_order=True)
        assert a.metadata["general.name"] == "Tiny Llama"
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith(f"wrote {out}: ") and "39 tensors" in last and "MiB" in last and last.endswith(" s")
    # --outfile naming a directory gets the default name inside it
    (tmp_path / "dir").mkdir()
    res = runner.invoke(app, ["convert", str(model), "--outfile", str(tmp_path / "dir"), "--vocab-only"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "dir" / "Tiny-Llama-vocab.gguf").is_file()


def test_cli_dry_run_writes_nothing(tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(SRC / "meta-2shard", model)
    before = sorted(p.name for p in model.iterdir())
    res = runner.invoke(app, ["convert", str(model), "--dry-run", "--outtype", "q8_0"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in model.iterdir()) == before
    assert "blk.3.ffn_down.weight" in res.output and "Q8_0" in res.output and "256 x 768" in res.output
    assert "39 tensors" in res.output and "nothing written" in res.output


def test_q8_0_falls_back_to_f16_for_short_rows(tmp_path: Path) -> None:
    """Rows not a multiple of 32 cannot be Q8_0: llama.cpp writes them F16 (QuantError fallback)."""
    import torch
    from safetensors.torch import save_file

    model = tmp_path / "odd"
    model.mkdir()
    cfg = json.loads((SRC / "hf" / "config.json").read_text())
    cfg.update(hidden_size=64, intermediate_size=40, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
               num_hidden_layers=1)
    (model / "config.json").write_text(json.dumps(cfg))
    shutil.copy(SRC / "hf" / "tokenizer.model", model)
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (1000, 64), "model.norm.weight": (64,), "lm_head.weight": (1000, 64),
              "model.layers.0.input_layernorm.weight": (64,), "model.layers.0.post_attention_layernorm.weight": (64,),
              "model.layers.0.self_attn.q_proj.weight": (64, 64), "model.layers.0.self_attn.k_proj.weight": (32, 64),
              "model.layers.0.self_attn.v_proj.weight": (32, 64), "model.layers.0.self_attn.o_proj.weight": (64, 64),
              "model.layers.0.mlp.gate_proj.weight": (40, 64), "model.layers.0.mlp.up_proj.weight": (40, 64),
              "model.layers.0.mlp.down_proj.weight": (64, 40)}
    save_file({k: torch.randn(s, generator=g) for k, s in shapes.items()}, str(model / "model.safetensors"))
    with plan_conversion(model, "q8_0", tmp_path / "o.gguf") as p:
        types = {t.name: t.ggml_type for t in p.tensors}
        notes = {t.name: t.note for t in p.tensors}
    assert types["blk.0.ffn_down.weight"] == GGMLType.F16 and "not a multiple of 32" in notes["blk.0.ffn_down.weight"]
    assert types["blk.0.ffn_up.weight"] == types["blk.0.attn_k.weight"] == types["token_embd.weight"] == GGMLType.Q8_0
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == GGMLType.F32
    convert(model, "q8_0", tmp_path / "o.gguf")
    with GGUFReader(tmp_path / "o.gguf") as r:
        assert r.tensor("blk.0.ffn_down.weight").ggml_type == GGMLType.F16


def test_sharded_bin_with_index(tmp_path: Path) -> None:
    import torch

    sd = torch.load(SRC / "hf-bin" / "pytorch_model.bin", weights_only=True)
    names = list(sd)
    model = tmp_path / "bins"
    model.mkdir()
    for f in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(SRC / "hf-bin" / f, model)
    files = {"pytorch_model-00001-of-00002.bin": names[:20], "pytorch_model-00002-of-00002.bin": names[20:]}
    for fname, part in files.items():
        torch.save({k: sd[k] for k in part}, model / fname)
    index = {"weight_map": {k: f for f, part in files.items() for k in part}}
    (model / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    convert(model, "q8_0", tmp_path / "o.gguf")
    with GGUFReader(tmp_path / "o.gguf") as a, GGUFReader(TINY_GGUF / "convert-q8_0.gguf") as b:
        assert_same_metadata(a, b)
        assert_same_tensors(a, b, same_order=False)
        # file order, then each file's state-dict order
        assert [t.name for t in a.tensors][18:21] == ["blk.1.ffn_norm.weight", "blk.2.attn_q.weight",
                                                      "blk.2.attn_k.weight"]
    (model / "pytorch_model-00002-of-00002.bin").unlink()
    res = runner.invoke(app, ["convert", str(model), "--outfile", str(tmp_path / "p.gguf")])
    assert res.exit_code == 1 and "pytorch_model-00002-of-00002.bin" in res.stderr
