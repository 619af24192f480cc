"""The llama hyper-parameters, read from GGUF metadata in one place (`LlamaConfig.from_gguf`).

Keys are those llama.cpp reads in `llama_model::load_hparams` (src/llama-model.cpp), with its defaults:
head dims default to n_embd / n_head, n_head_kv to n_head, rope.freq_base to 10000, rope.scaling.type to
linear with factor 1 (freq_scale = 1 / factor), and n_rot must equal the key head dim for llama.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import GGUFFormatError, UnsupportedError
from ..gguf.constants import Keys

SUPPORTED_ARCHITECTURES = ("llama",)
# Optional per-block tensors llama.cpp's llama graph uses when present (biases of the projections).
OPTIONAL_BIASES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class LlamaConfig:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int  # n_embd_head_k == n_embd_head_v (llama asserts n_rot == n_embd_head_k)
    n_rot: int
    norm_eps: float
    rope_freq_base: float
    rope_freq_scale: float  # 1 / rope.scaling.factor (linear scaling); 1.0 = none
    n_ctx_train: int
    tied_output: bool  # no output.weight: the logits reuse token_embd.weight
    has_rope_freqs: bool  # rope_freqs.weight: per-dimension divisors of theta (llama 3.1 style)
    biases: frozenset[str] = frozenset()  # which of OPTIONAL_BIASES carry a .bias tensor
    architecture: str = "llama"

    @property
    def n_embd_q(self) -> int:
        return self.n_head * self.head_dim

    @property
    def n_embd_kv(self) -> int:
        return self.n_head_kv * self.head_dim

    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any], tensor_names: Collection[str], what: str = "model"
                  ) -> "LlamaConfig":
        """Build the config from a GGUF's metadata and its tensor names. `what` names the file in errors."""
        arch = metadata.get(Keys.ARCHITECTURE)
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedError(
                f"{what}: unknown model architecture {arch!r}; llamakit runs {', '.join(SUPPORTED_ARCHITECTURES)}"
            )

        def key(k: str) -> str:
            return k.format(arch=arch)

        def req(k: str) -> Any:
            v = metadata.get(key(k))
            if v is None:
                raise GGUFFormatError(f"{what}: metadata key {key(k)} is missing; the file is incomplete")
            return v

        def opt(k: str, default: Any) -> Any:
            v = metadata.get(key(k))
            return default if v is None else v

        n_layer = int(req(Keys.BLOCK_COUNT))

        def per_layer(k: str, default: Any = None) -> int:
            # llama.cpp accepts a scalar or one value per layer (get_key_or_arr); llamakit needs them equal
            v = opt(k, default) if default is not None else req(k)
            if isinstance(v, (np.ndarray, list, tuple)):
                vals = {int(x) for x in v}
                if len(v) != n_layer or len(vals) != 1:
                    raise UnsupportedError(f"{what}: {key(k)} differs between layers; llamakit needs one value")
                return vals.pop()
            return int(v)

        if int(opt(Keys.EXPERT_COUNT, 0)) > 0:
            raise UnsupportedError(f"{what}: mixture-of-experts llama models are not supported by llamakit")
        n_embd = int(req(Keys.EMBEDDING_LENGTH))
        n_head = per_layer(Keys.HEAD_COUNT)
        n_head_kv = per_layer(Keys.HEAD_COUNT_KV, n_head)
        head_k = int(opt(Keys.KEY_LENGTH, n_embd // n_head))
        head_v = int(opt(Keys.VALUE_LENGTH, n_embd // n_head))
        n_rot = int(opt(Keys.ROPE_DIM, head_k))
        if n_rot != head_k or head_v != head_k:
            raise UnsupportedError(f"{what}: rope dims {n_rot} / key {head_k} / value {head_v} differ; "
                                   f"llama needs them equal")
        if n_head % n_head_kv:
            raise GGUFFormatError(f"{what}: {n_head} heads is not a multiple of {n_head_kv} kv heads")
        scaling = str(opt(Keys.ROPE_SCALING_TYPE, "linear"))
        factor = float(opt(Keys.ROPE_SCALING_FACTOR, 0.0) or metadata.get(key("{arch}.rope.scale_linear"), 0.0))
        if scaling not in ("none", "linear"):
            raise UnsupportedError(f"{what}: rope scaling {scaling!r} is not supported (llamakit: none, linear)")
        names = set(tensor_names)
        n_vocab = int(opt(Keys.VOCAB_SIZE, 0)) or len(metadata.get(Keys.TOK_TOKENS, ()))
        if not n_vocab:
            raise GGUFFormatError(f"{what}: neither {key(Keys.VOCAB_SIZE)} nor a token list gives the vocab size")
        return cls(
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=n_head_kv,
            n_ff=per_layer(Keys.FEED_FORWARD_LENGTH),
            head_dim=head_k,
            n_rot=n_rot,
            norm_eps=float(req(Keys.RMS_EPS)),
            rope_freq_base=float(opt(Keys.ROPE_FREQ_BASE, 10000.0)),
            rope_freq_scale=1.0 if factor == 0.0 or scaling == "none" else 1.0 / factor,
            n_ctx_train=int(req(Keys.CONTEXT_LENGTH)),
            tied_output="output.weight" not in names,
            has_rope_freqs="rope_freqs.weight" in names,
            biases=frozenset(b for b in OPTIONAL_BIASES if f"blk.0.{b}.bias" in names),
            architecture=arch,
        )
