"""Meta checkpoints: params.json + consolidated.NN.pth (model-parallel shards) + tokenizer.model.

Shards are merged one tensor at a time: tok_embeddings, attention.wo and feed_forward.w2 were split on dim 1,
every other matrix on dim 0; 1-D tensors (norms) are replicated, shard 0's copy is used. Meta's wq/wk are already
in GGUF's interleaved rotary layout, so nothing is permuted. Tensor order: shard 0's state-dict order.

params.json has no context length. llamakit uses, in this order: --ctx, params.json `max_seq_len`, then the
context each Llama generation was trained with: 131072 with `use_scaled_rope` (Llama 3.1/3.2), 8192 for a
128k vocabulary (Llama 3), 16384 for rope_theta 1e6 (Code Llama), 4096 for norm_eps 1e-5 (Llama 2), else 2048
(LLaMA 1). The same rules as llama.cpp's legacy converter, plus the two Llama 3 ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .hf import check_complete
from .params import Llama3Rope, LlamaParams
from .source import SourceTensor, read_json, torch_load, torch_tensor

_GLOBAL = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
           "output.weight": "output.weight"}
_LAYER = {
    "attention_norm": "attn_norm",
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
}
_LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)\.weight")
_DROPPED = ("rope.freqs",)  # LLaMA 1 stores its RoPE frequencies; they are recomputed at run time


def split_axis(name: str) -> int:
    """The dimension a model-parallel shard split this (2-D) tensor on."""
    if name.startswith("tok_embeddings.") or name.endswith((".attention.wo.weight", ".feed_forward.w2.weight")):
        return 1
    return 0


def default_context(params: dict[str, Any], vocab_size: int) -> int:
    if isinstance(params.get("max_seq_len"), int):
        return params["max_seq_len"]
    if params.get("use_scaled_rope"):
        return 131072
    if vocab_size >= 128000:
        return 8192
    if params.get("rope_theta") == 1e6:
        return 16384
    if params.get("norm_eps") == 1e-5:
        return 4096
    return 2048


def map_name(name: str, n_layer: int, where: Path) -> str | None:
    if name in _DROPPED:
        return None
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER and int(m.group(1)) < n_layer:
        return f"blk.{int(m.group(1))}.{_LAYER[m.group(2)]}.weight"
    raise InputError(f"{where}: unexpected tensor {name!r} in a Meta llama checkpoint")


class MetaCheckpoint:
    kind = "meta"

    def __init__(self, directory: Path, warnings: list[str], *, need_weights: bool = True,
                 n_ctx: int | None = None) -> None:
        self.directory = directory
        pj = directory / "params.json"
        if not pj.is_file():
            raise InputError(f"{directory}: no params.json; a Meta checkpoint needs one (a Hugging Face checkpoint "
                             "needs config.json)")
        raw = read_json(pj)
        if not isinstance(raw, dict):
            raise InputError(f"{pj}: expected a JSON object")
        if raw.get("moe") or raw.get("n_experts"):
            raise InputError(f"{pj}: mixture-of-experts checkpoints are not supported")
        self.raw_params = raw
        self.tensors: list[SourceTensor] = []
        shards = self._shards()
        merged = self._merge(shards, [torch_load(s) for s in shards])  # memory-mapped: nothing is read yet
        self.params = self._params(raw, pj, merged, n_ctx, warnings)
        p = self.params
        for name, t in merged.items():
            gname = map_name(name, p.n_layer, shards[0])
            if gname is not None:
                self.tensors.append(SourceTensor(gname, t.shape, t.dtype, t.load, t.file))
        if need_weights:
            check_complete(self.tensors, p, directory)

    def _shards(self) -> list[Path]:
        found = sorted(self.directory.glob("consolidated.*.pth"))
        if not found:
            raise InputError(f"{self.directory}: no consolidated.00.pth weights found")
        nums = []
        for f in found:
            m = re.fullmatch(r"consolidated\.(\d+)\.pth", f.name)
            if not m:
                raise InputError(f"{f}: unexpected shard name; expected consolidated.NN.pth")
            nums.append(int(m.group(1)))
        absent = [f"consolidated.{i:02d}.pth" for i in range(max(nums) + 1) if i not in nums]
        if absent:
            raise InputError(f"{self.directory}: missing shard {', '.join(absent)}; download it")
        return [self.directory / f"consolidated.{i:02d}.pth" for i in sorted(nums)]

    def _merge(self, shards: list[Path], sds: list[dict[str, torch.Tensor]]) -> dict[str, SourceTensor]:
        names = list(sds[0])
        for path, sd in zip(shards[1:], sds[1:]):
            if set(sd) != set(names):
                diff = sorted(set(sd) ^ set(names))
                raise InputError(f"{path}: its tensors differ from consolidated.00.pth ({', '.join(diff[:5])}); "
                                 "the shards are not from one checkpoint")
        out: dict[str, SourceTensor] = {}
        for name in names:
            parts = [sd[name] for sd in sds]
            first = torch_tensor(shards[0], name, parts[0])
            if any(p.dtype != parts[0].dtype for p in parts):
                raise InputError(f"{shards[0].parent}: {name} has different dtypes in different shards")
            if len(parts) == 1 or parts[0].dim() == 1:
                if any(p.shape != parts[0].shape for p in parts):
                    raise InputError(f"{shards[0].parent}: {name} is 1-D but its shards differ in length")
                out[name] = first
                continue
            axis = split_axis(name)
            shape = list(parts[0].shape)
            for p in parts[1:]:
                if p.dim() != len(shape) or any(p.shape[d] != shape[d] for d in range(len(shape)) if d != axis):
                    raise InputError(f"{shards[0].parent}: the shards of {name} do not fit together "
                                     f"({[list(x.shape) for x in parts]})")
            shape[axis] = sum(p.shape[axis] for p in parts)
            out[name] = SourceTensor(name, tuple(shape), parts[0].dtype,
                                     lambda ps=parts, a=axis: torch.cat(ps, dim=a), shards[0])
        return out

    def _params(self, raw: dict[str, Any], pj: Path, merged: dict[str, SourceTensor], n_ctx: int | None,
                warnings: list[str]) -> LlamaParams:
        def need(key: str) -> Any:
            v = raw.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise InputError(f"{pj}: missing or invalid {key!r}")
            return v

        n_embd, n_layer, n_head = need("dim"), need("n_layers"), need("n_heads")
        vocab = raw.get("vocab_size")
        if not isinstance(vocab, int) or vocab <= 0:  # LLaMA 1/2 write -1: the embedding's row count says it
            emb = merged.get("tok_embeddings.weight")
            if emb is None:
                raise InputError(f"{pj}: vocab_size is {vocab} and there is no tok_embeddings.weight to count")
            vocab = emb.shape[0]
        w1 = merged.get("layers.0.feed_forward.w1.weight")
        if w1 is None:
            raise InputError(f"{pj.parent}: no layers.0.feed_forward.w1.weight to take the feed-forward size from")
        n_ff = w1.shape[0]
        llama3 = None
        if raw.get("use_scaled_rope"):
            llama3 = Llama3Rope(factor=float(raw.get("rope_scaling_factor", 8.0)), low_freq_factor=1.0,
                                high_freq_factor=float(raw.get("high_freq_factor", 4.0)), original_context=8192)
        return LlamaParams(
            n_layer=int(n_layer), n_embd=int(n_embd), n_head=int(n_head), vocab_size=int(vocab),
            n_ctx=n_ctx if n_ctx is not None else default_context(raw, int(vocab)),
            n_ff=int(n_ff),
            n_head_kv=int(raw.get("n_kv_heads") or n_head),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rms_eps=float(raw.get("norm_eps", 1e-5)),
            head_dim=int(n_embd) // int(n_head),
            llama3_rope=llama3,
        )

    def tokenizer_stand_ins(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Stand-ins for the config.json / tokenizer_config.json a Meta checkpoint lacks: what transformers'
        convert_llama_weights_to_hf writes (bos/eos ids of the SentencePiece model, add_bos on, add_eos off)."""
        from sentencepiece import SentencePieceProcessor

        from .vocab import is_tiktoken_file

        config: dict[str, Any] = {}
        path = self.directory / "tokenizer.model"
        if path.is_file() and not is_tiktoken_file(path):
            sp = SentencePieceProcessor()
            try:
                sp.LoadFromFile(str(path))
            except (OSError, RuntimeError) as e:
                raise InputError(f"{path}: not a SentencePiece model ({str(e).strip()[:120]})") from None
            config = {"bos_token_id": sp.bos_id() if sp.bos_id() >= 0 else None,
                      "eos_token_id": sp.eos_id() if sp.eos_id() >= 0 else None}
        return config, {"add_bos_token": True, "add_eos_token": False}

    def close(self) -> None:
        pass
