"""A real byte-level BPE model end to end: SmolLM2-135M-Instruct's GGUF is turned into the Hugging Face checkpoint it
came from (bf16 safetensors with q/k in HF's rotate-half order, config.json, tokenizer.json built with the
`tokenizers` library from the GGUF's vocabulary and merges, tokenizer_config.json with the chat template and
special tokens), then converted back with llamakit. The vocabulary metadata must equal the original GGUF's and every
weight must come back exactly (as its bf16 rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llamakit.convert import convert, plan_conversion
from llamakit.convert.export_hf import dequantize
from llamakit.gguf import GGMLType, GGUFReader

VOCAB_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
              "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
              "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.chat_template",
              "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.add_bos_token")


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llamakit.convert.export_hf import export_hf

    return export_hf(smollm2_gguf, tmp_path_factory.mktemp("hf") / "SmolLM2-135M-Instruct", torch.bfloat16)


@pytest.fixture(scope="session")
def smollm2_converted(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "smollm2-bf16.gguf"
    convert(smollm2_hf, "bf16", out)
    return out


def test_fixture_is_a_plausible_hf_checkpoint(smollm2_hf: Path) -> None:
    names = sorted(p.name for p in smollm2_hf.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    with plan_conversion(smollm2_hf, "f16", smollm2_hf / "x.gguf") as plan:
        assert plan.warnings == []  # the pre-tokenizer is found by its hash, not by the fallback
        assert plan.metadata["tokenizer.ggml.pre"].value == "smollm"
        assert plan.metadata["general.name"].value == "SmolLM2 135M Instruct"
        assert plan.metadata["general.size_label"].value == "135M"
        assert "output.weight" not in {t.name for t in plan.tensors}  # tied embeddings


def test_vocabulary_and_hyperparameters_equal_the_original(smollm2_gguf: Path, smollm2_converted: Path) -> None:
    with GGUFReader(smollm2_converted) as a, GGUFReader(smollm2_gguf) as b:
        for key in VOCAB_KEYS:
            fa, fb = a.fields[key], b.fields[key]
            assert (fa.type, fa.elem_type) == (fb.type, fb.elem_type), key
            if isinstance(fb.value, np.ndarray):
                assert np.array_equal(fa.value, fb.value), key
            else:
                assert fa.value == fb.value, key
        assert a.metadata["tokenizer.ggml.pre"] == "smollm" and len(a.metadata["tokenizer.ggml.merges"]) == 48900
        tok_keys = {k for k in b.fields if k.startswith("tokenizer.")}
        assert {k for k in a.fields if k.startswith("tokenizer.")} == tok_keys
        llama = [k for k in b.fields if k.startswith("llama.")]
        assert [k for k in a.fields if k.startswith("llama.")] == llama
        for key in llama:
            assert a.fields[key].value == b.fields[key].value and a.fields[key].type == b.fields[key].type, key
        assert a.metadata["general.file_type"] == 32  # MOSTLY_BF16


def test_weights_round_trip(smollm2_gguf: Path, smollm2_converted: Path) -> None:
    with GGUFReader(smollm2_converted) as a, GGUFReader(smollm2_gguf) as b:
        assert [t.name for t in a.tensors] != [] and sorted(t.name for t in a.tensors) == sorted(
            t.name for t in b.tensors)
        for t in b.tensors:
            u = a.tensor(t.name)
            assert u.shape == t.shape, t.name
            want = dequantize(b, t).to(torch.bfloat16)  # what the bf16 checkpoint holds, in GGUF layout
            if len(t.shape) == 1:
                assert u.ggml_type == GGMLType.F32
                got = torch.from_numpy(a.tensor_data(u).view(np.float32).copy())
                assert torch.equal(got, want.float()), t.name
            else:
                assert u.ggml_type == GGMLType.BF16
                got = torch.from_numpy(a.tensor_data(u).view(np.int16).copy()).view(torch.bfloat16)
                assert torch.equal(got.view(torch.int16), want.reshape(-1).view(torch.int16)), t.name
