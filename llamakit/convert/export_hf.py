"""GGUF -> Hugging Face checkpoint (the reverse of `convert`), for tests and benchmarks: it turns a llama GGUF with
a byte-level BPE vocabulary into config.json + model.safetensors + tokenizer.json + tokenizer_config.json, the way
such a model is published on the Hub.

Weights are dequantized to float32 and stored as `dtype`; q/k rows are permuted back into HF's rotate-half order
(the inverse of hf.unpermute_qk): w.reshape(n_head, head_dim // 2, 2, n_in).swapaxes(1, 2).reshape(rows, n_in).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UnsupportedError
from ..gguf import GGUFReader, TokenType
from ..quants import as_tensor, get_codec

_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """GGUF's interleaved rotary pairs -> HF rotate-half row order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(gguf_name: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL:
        return f"{_GLOBAL[base]}.{suffix}"
    blk, i, kind = base.split(".")
    return f"model.layers.{i}.{_LAYER[kind]}.{suffix}"


def dequantize(reader: GGUFReader, info: Any) -> torch.Tensor:
    """One GGUF tensor as float32 in its torch shape."""
    rows = math.prod(info.shape[:-1]) if len(info.shape) > 1 else 1
    data = as_tensor(reader.tensor_data(info)).reshape(rows, -1)
    return get_codec(info.ggml_type, info.name).dequantize(data).reshape(info.shape)


def _pre_tokenizer(pre: str) -> Any:
    from .pretok import _candidates

    table = dict(_candidates())
    if pre not in table:
        raise UnsupportedError(f"export_hf: no tokenizer.json pre-tokenizer known for tokenizer.ggml.pre={pre!r}")
    return table[pre]


def export_hf(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write an HF llama checkpoint equivalent to `gguf_path` into `out_dir` (created)."""
    from safetensors.torch import save_file
    from tokenizers import AddedToken, Tokenizer, decoders, models

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with GGUFReader(gguf_path) as r:
        md = r.metadata
        if md.get("general.architecture") != "llama" or md.get("tokenizer.ggml.model") != "gpt2":
            raise UnsupportedError(f"{gguf_path}: export_hf handles llama models with a gpt2 (BPE) vocabulary only")
        g = lambda k, d=None: md.get(f"llama.{k}", d)  # noqa: E731
        n_head, n_embd = int(g("attention.head_count")), int(g("embedding_length"))
        n_kv = int(g("attention.head_count_kv", n_head))
        tokens: list[str] = md["tokenizer.ggml.tokens"]
        names = {t.name for t in r.tensors}
        config: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": n_embd, "intermediate_size": int(g("feed_forward_length")),
            "num_attention_heads": n_head, "num_hidden_layers": int(g("block_count")),
            "num_key_value_heads": n_kv, "max_position_embeddings": int(g("context_length", 2048)),
            "rms_norm_eps": float(np.float32(g("attention.layer_norm_rms_epsilon", 1e-5))),
            "rope_theta": float(g("rope.freq_base", 10000.0)), "vocab_size": len(tokens),
            "tie_word_embeddings": "output.weight" not in names,
            "torch_dtype": str(dtype).removeprefix("torch."),
        }
        for typ, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
            if f"tokenizer.ggml.{key}" in md:
                config[f"{typ}_token_id"] = int(md[f"tokenizer.ggml.{key}"])
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

        state: dict[str, torch.Tensor] = {}
        for info in r.tensors:
            if info.name == "rope_freqs.weight":  # HF derives it from a rope_scaling block we do not write
                raise UnsupportedError(f"{gguf_path}: exporting llama3-scaled RoPE (rope_freqs.weight) to HF is "
                                       "not supported")
            w = dequantize(r, info)
            if ".attn_q." in info.name or ".attn_k." in info.name:
                w = permute_qk(w, n_head if ".attn_q." in info.name else n_kv)
            state[hf_name(info.name)] = w.to(dtype).contiguous()
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        del state

        types = md["tokenizer.ggml.token_type"]
        merges = [tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]]
        tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
        tok.pre_tokenizer = _pre_tokenizer(md.get("tokenizer.ggml.pre", "gpt-2"))
        tok.decoder = decoders.ByteLevel()
        special = [i for i, ty in enumerate(types) if ty in (TokenType.CONTROL, TokenType.USER_DEFINED)]
        tok.add_special_tokens([AddedToken(tokens[i], special=types[i] == TokenType.CONTROL, normalized=False)
                                for i in special])
        tok.save(str(out / "tokenizer.json"))

        tc: dict[str, Any] = {
            "added_tokens_decoder": {str(i): {"content": tokens[i], "lstrip": False, "normalized": False,
                                              "rstrip": False, "single_word": False,
                                              "special": bool(types[i] == TokenType.CONTROL)} for i in special},
            "clean_up_tokenization_spaces": False,
            "model_max_length": config["max_position_embeddings"],
            "tokenizer_class": "GPT2Tokenizer",
        }
        if "tokenizer.ggml.add_space_prefix" in md:
            tc["add_prefix_space"] = bool(md["tokenizer.ggml.add_space_prefix"])
        for typ, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                         ("pad", "padding_token_id")):
            if f"tokenizer.ggml.{key}" in md:
                tc[f"{typ}_token"] = tokens[int(md[f"tokenizer.ggml.{key}"])]
        if "tokenizer.chat_template" in md:
            tc["chat_template"] = md["tokenizer.chat_template"]
        (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    return out
