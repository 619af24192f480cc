"""Hugging Face checkpoints: config.json + model*.safetensors (single or sharded, with index) or pytorch_model*.bin.

Tensor order is llama.cpp's: part files sorted by name, tensors within a safetensors part sorted by name (what
`safe_open(...).keys()` returns), tensors within a .bin part in state-dict order.

HF stores q_proj/k_proj permuted for rotate-half RoPE; GGUF keeps Meta's interleaved-pair layout. For each head
the rows [first half | second half] of HF become pairs (row i of the first half, row i of the second half):
    w.reshape(n_head, 2, head_dim // 2, n_in).swapaxes(1, 2).reshape(rows, n_in)
with n_head = num_key_value_heads for k_proj.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, UnsupportedError
from .params import Llama3Rope, LlamaParams
from .source import SafetensorsFile, SourceTensor, read_json, torch_load, torch_tensor

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
_ALIASES = {"LLaMAForCausalLM": "LlamaForCausalLM"}

_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_DROPPED = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_SHARD_RE = re.compile(r"(?:model|pytorch_model)-(\d+)-of-(\d+)\.(?:safetensors|bin)")


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate-half row order -> GGUF's interleaved pairs (see the module docstring)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _find(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


def _require(config: dict[str, Any], keys: tuple[str, ...], path: Path) -> int:
    v = _find(config, keys)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise InputError(f"{path}: missing or invalid {keys[0]!r}; is this a llama config.json?")
    return v


def architecture(config: dict[str, Any], path: Path) -> str:
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    arch = _ALIASES.get(arch, arch)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedError(f"{path}: architecture {arch!r} is not supported (supported: "
                               f"{', '.join(SUPPORTED_ARCHITECTURES)})")
    return arch


def hf_params(config: dict[str, Any], path: Path, warnings: list[str], n_ctx: int | None = None) -> LlamaParams:
    """config.json (transformers 4.x `rope_theta`/`rope_scaling`, or 5.x `rope_parameters`) -> LlamaParams."""
    rope_params = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
    theta = config.get("rope_theta", rope_params.get("rope_theta"))
    scaling = config.get("rope_scaling")
    if not isinstance(scaling, dict):
        scaling = rope_params if rope_params.get("rope_type", "default") != "default" else None
    linear = llama3 = None
    if scaling:
        kind = str(scaling.get("rope_type", scaling.get("type", ""))).lower()
        if kind == "llama3":
            llama3 = Llama3Rope(
                factor=float(scaling.get("factor", 8.0)),
                low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
                high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
                # the value inside rope_scaling is the one transformers uses; llama.cpp reads a top-level key
                # that Llama 3.1 configs lack and defaults to 8192 (the same number for every Llama 3.x)
                original_context=int(scaling.get("original_max_position_embeddings",
                                                  config.get("original_max_position_embeddings", 8192))),
            )
            if llama3.low_freq_factor == llama3.high_freq_factor:
                raise InputError(f"{path}: rope_scaling has low_freq_factor == high_freq_factor")
        elif kind == "linear" and "factor" in scaling:
            linear = float(scaling["factor"])
        elif kind not in ("", "default"):
            warnings.append(f"{path.name}: rope scaling {kind!r} is not written to the GGUF (llama.cpp's converter "
                            "ignores it too); long-context behaviour may differ")
    head_dim = config.get("head_dim")
    vocab = config.get("vocab_size")
    if not isinstance(vocab, int) or vocab <= 0:
        raise InputError(f"{path}: missing or invalid 'vocab_size'")
    p = LlamaParams(
        n_layer=_require(config, ("n_layers", "num_hidden_layers", "n_layer", "num_layers"), path),
        n_embd=_require(config, ("hidden_size", "n_embd"), path),
        n_head=_require(config, ("num_attention_heads", "n_head"), path),
        vocab_size=vocab,
        n_ctx=n_ctx if n_ctx is not None else _find(config, ("max_position_embeddings", "n_ctx")),
        n_ff=_find(config, ("intermediate_size", "n_inner")),
        n_head_kv=config.get("num_key_value_heads"),
        rope_theta=theta,
        rms_eps=config.get("rms_norm_eps"),
        norm_eps=_find(config, ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")),
        head_dim=head_dim if isinstance(head_dim, int) else None,
        rope_linear_factor=linear,
        llama3_rope=llama3,
    )
    if p.n_embd % p.n_head and p.head_dim is None:
        raise InputError(f"{path}: hidden_size {p.n_embd} is not a multiple of num_attention_heads {p.n_head}")
    if p.n_head % p.n_kv:
        raise InputError(f"{path}: num_attention_heads {p.n_head} is not a multiple of num_key_value_heads {p.n_kv}")
    return p


def map_name(name: str, n_layer: int) -> str | None:
    """HF tensor name -> GGUF name; None for tensors llama.cpp drops; InputError for unknown ones."""
    if name.endswith(_DROPPED):
        return None
    base, _, suffix = name.rpartition(".")
    if suffix in ("weight", "bias") and base in _GLOBAL:
        return f"{_GLOBAL[base]}.{suffix}"
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER and int(m.group(1)) < n_layer:
        return f"blk.{int(m.group(1))}.{_LAYER[m.group(2)]}.{m.group(3)}"
    raise UnsupportedError(f"cannot map tensor {name!r} to a llama GGUF tensor (an architecture variant "
                           "llamakit does not know?)")


def _short(names: list[str] | set[str], n: int = 5) -> str:
    s = sorted(names)
    return ", ".join(s[:n]) + (f" and {len(s) - n} more" if len(s) > n else "")


class HFCheckpoint:
    """config.json + weights. `tensors` are GGUF-named, in output order, q/k already un-permuted on load."""

    kind = "hf"

    def __init__(self, directory: Path, warnings: list[str], *, need_weights: bool = True,
                 n_ctx: int | None = None) -> None:
        self.directory = directory
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise InputError(f"{directory}: no config.json; a Hugging Face checkpoint needs one (a Meta checkpoint "
                             "needs params.json)")
        self.config: dict[str, Any] = read_json(cfg_path)
        if not isinstance(self.config, dict):
            raise InputError(f"{cfg_path}: expected a JSON object")
        self.architecture = architecture(self.config, cfg_path)
        self.params = hf_params(self.config, cfg_path, warnings, n_ctx)
        self._files: list[SafetensorsFile] = []
        self.tensors: list[SourceTensor] = []
        if need_weights:
            try:
                self._load(warnings)
            except BaseException:
                self.close()
                raise

    def _parts(self) -> tuple[list[str], str]:
        names = os.listdir(self.directory)
        st = sorted(n for n in names if n.startswith("model") and n.endswith(".safetensors"))
        if st:
            return st, "model.safetensors.index.json"
        pt = sorted(n for n in names if n.startswith("pytorch_model") and n.endswith(".bin"))
        if pt:
            return pt, "pytorch_model.bin.index.json"
        raise InputError(f"{self.directory}: no model*.safetensors or pytorch_model*.bin weights found")

    def _load(self, warnings: list[str]) -> None:
        parts, index_name = self._parts()
        index_path = self.directory / index_name
        weight_map: dict[str, str] | None = None
        if index_path.is_file():
            index = read_json(index_path)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise InputError(f"{index_path}: no 'weight_map' object")
            missing_files = sorted(set(map(str, weight_map.values())) - set(parts))
            if missing_files:
                raise InputError(f"{self.directory}: missing or incomplete model files: {_short(missing_files)} "
                                 f"(listed in {index_name}); download them")
        else:
            for p in parts:  # without an index, 'model-0000K-of-0000N' names still say how many there must be
                m = _SHARD_RE.fullmatch(p)
                if m:
                    stem = p[: p.index("-")]
                    want = [f"{stem}-{i:0{len(m.group(1))}d}-of-{m.group(2)}{p[p.rindex('.'):]}"
                            for i in range(1, int(m.group(2)) + 1)]
                    absent = [w for w in want if w not in parts]
                    if absent:
                        raise InputError(f"{self.directory}: missing model files: {_short(absent)}")
                    break

        raw: list[SourceTensor] = []
        seen: dict[str, Path] = {}
        for part in parts:
            path = self.directory / part
            if part.endswith(".safetensors"):
                f = SafetensorsFile(path)
                self._files.append(f)
                found = [f.tensor(n) for n in f.names()]
            else:
                sd = torch_load(path)
                found = [torch_tensor(path, n, t) for n, t in sd.items()]
            for t in found:
                if t.name in seen:
                    raise InputError(f"{path}: tensor {t.name!r} is also in {seen[t.name].name}")
                seen[t.name] = path
            raw.extend(found)
        if weight_map is not None and set(weight_map) != set(seen):
            missing, extra = set(weight_map) - set(seen), set(seen) - set(weight_map)
            msg = "; ".join(s for s in (f"missing tensors: {_short(missing)}" if missing else "",
                                        f"extra tensors: {_short(extra)}" if extra else "") if s)
            raise InputError(f"{self.directory}: the weights do not match {index_name} ({msg})")

        p = self.params
        for t in raw:
            name = map_name(t.name, p.n_layer)
            if name is None:
                continue
            t = replace(t, name=name)
            if ".attn_q." in name or ".attn_k." in name:
                heads = p.n_head if ".attn_q." in name else p.n_kv
                rows = heads * p.head_size
                if t.shape[0] != rows or rows % (2 * heads):
                    raise InputError(f"{t.file}: {name} has {t.shape[0]} rows but config.json implies {heads} heads "
                                     f"x {p.head_size} = {rows}")
                t = replace(t, load=(lambda src=t.load, h=heads: unpermute_qk(src(), h)))
            self.tensors.append(t)
        check_complete(self.tensors, p, self.directory)

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


def check_complete(tensors: list[SourceTensor], p: LlamaParams, where: Path) -> None:
    """Every tensor a llama GGUF needs is there with the shape the hyperparameters imply."""
    shapes = {t.name: t.shape for t in tensors}
    need = {"token_embd.weight": (p.vocab_size, p.n_embd), "output_norm.weight": (p.n_embd,)}
    q, kv = p.n_head * p.head_size, p.n_kv * p.head_size
    for i in range(p.n_layer):
        need |= {
            f"blk.{i}.attn_norm.weight": (p.n_embd,),
            f"blk.{i}.attn_q.weight": (q, p.n_embd),
            f"blk.{i}.attn_k.weight": (kv, p.n_embd),
            f"blk.{i}.attn_v.weight": (kv, p.n_embd),
            f"blk.{i}.attn_output.weight": (p.n_embd, q),
            f"blk.{i}.ffn_norm.weight": (p.n_embd,),
            f"blk.{i}.ffn_gate.weight": None,
            f"blk.{i}.ffn_up.weight": None,
            f"blk.{i}.ffn_down.weight": None,
        }
    if "output.weight" in shapes:
        need["output.weight"] = (p.vocab_size, p.n_embd)
    missing = [n for n in need if n not in shapes]
    if missing:
        raise InputError(f"{where}: the checkpoint lacks {_short(missing)}; download the missing files")
    for n, want in need.items():
        if want is not None and shapes[n] != want:
            raise InputError(f"{where}: {n} has shape {list(shapes[n])}, the hyperparameters imply {list(want)}")
