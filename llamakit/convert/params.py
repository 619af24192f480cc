"""Hyperparameters of a llama checkpoint, whatever its source format, and the `llama.*` keys they become.

Key order and types of LlamaModel.set_gguf_parameters (convert_hf_to_gguf.py at c392e50):
    block_count, context_length?, embedding_length, feed_forward_length?, attention.head_count,
    attention.head_count_kv?, rope.freq_base?, attention.layer_norm_rms_epsilon?, attention.layer_norm_epsilon?,
    attention.key_length + value_length? (when head_dim is given), general.file_type, vocab_size,
    rope.dimension_count, rope.scaling.type + rope.scaling.factor? (linear scaling)
All integers UINT32, all floats FLOAT32, the scaling type a STRING. `?` = only when the source states it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..gguf import GGUFValue, GGUFValueType, Keys

T = GGUFValueType
ARCH = "llama"


@dataclass(frozen=True)
class Llama3Rope:
    """Llama 3.1-style frequency scaling; becomes the F32 tensor rope_freqs.weight."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_context: int


@dataclass(frozen=True)
class LlamaParams:
    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int
    n_ctx: int | None = None
    n_ff: int | None = None
    n_head_kv: int | None = None  # as stated by the source; None -> same as n_head, key not written
    rope_theta: float | None = None
    rms_eps: float | None = None
    norm_eps: float | None = None
    head_dim: int | None = None  # explicit head size -> key_length / value_length
    rope_linear_factor: float | None = None
    llama3_rope: Llama3Rope | None = None

    @property
    def n_kv(self) -> int:
        return self.n_head_kv or self.n_head

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    def kvs_before_file_type(self) -> dict[str, GGUFValue]:
        k = {key: key.format(arch=ARCH) for key in (
            Keys.BLOCK_COUNT, Keys.CONTEXT_LENGTH, Keys.EMBEDDING_LENGTH, Keys.FEED_FORWARD_LENGTH,
            Keys.HEAD_COUNT, Keys.HEAD_COUNT_KV, Keys.ROPE_FREQ_BASE, Keys.RMS_EPS, Keys.KEY_LENGTH,
            Keys.VALUE_LENGTH)}
        out = {k[Keys.BLOCK_COUNT]: GGUFValue(self.n_layer, T.UINT32)}
        if self.n_ctx is not None:
            out[k[Keys.CONTEXT_LENGTH]] = GGUFValue(self.n_ctx, T.UINT32)
        out[k[Keys.EMBEDDING_LENGTH]] = GGUFValue(self.n_embd, T.UINT32)
        if self.n_ff is not None:
            out[k[Keys.FEED_FORWARD_LENGTH]] = GGUFValue(self.n_ff, T.UINT32)
        out[k[Keys.HEAD_COUNT]] = GGUFValue(self.n_head, T.UINT32)
        if self.n_head_kv is not None:
            out[k[Keys.HEAD_COUNT_KV]] = GGUFValue(self.n_head_kv, T.UINT32)
        if self.rope_theta is not None:
            out[k[Keys.ROPE_FREQ_BASE]] = GGUFValue(float(self.rope_theta), T.FLOAT32)
        if self.rms_eps is not None:
            out[k[Keys.RMS_EPS]] = GGUFValue(float(self.rms_eps), T.FLOAT32)
        if self.norm_eps is not None:
            out[f"{ARCH}.attention.layer_norm_epsilon"] = GGUFValue(float(self.norm_eps), T.FLOAT32)
        if self.head_dim is not None:
            out[k[Keys.KEY_LENGTH]] = GGUFValue(self.head_dim, T.UINT32)
            out[k[Keys.VALUE_LENGTH]] = GGUFValue(self.head_dim, T.UINT32)
        return out

    def kvs_after_file_type(self) -> dict[str, GGUFValue]:
        out = {
            Keys.VOCAB_SIZE.format(arch=ARCH): GGUFValue(self.vocab_size, T.UINT32),
            Keys.ROPE_DIM.format(arch=ARCH): GGUFValue(self.head_size, T.UINT32),
        }
        if self.rope_linear_factor is not None:
            out[Keys.ROPE_SCALING_TYPE.format(arch=ARCH)] = GGUFValue("linear", T.STRING)
            out[Keys.ROPE_SCALING_FACTOR.format(arch=ARCH)] = GGUFValue(float(self.rope_linear_factor), T.FLOAT32)
        return out


def llama3_rope_factors(p: LlamaParams) -> torch.Tensor:
    """rope_freqs.weight: one float32 factor per rotary frequency pair (head_size / 2 values).

    Same float32 arithmetic as convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: per frequency
    wavelen = 2*pi / freq; factor 1 above the high-frequency cutoff, `factor` below the low-frequency one, and
    1 / ((1 - s) / factor + s) with s = (orig_ctx / wavelen - low) / (high - low) in between."""
    r = p.llama3_rope
    assert r is not None
    base = p.rope_theta if p.rope_theta is not None else 10000.0
    dim = p.head_size
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low_wavelen = r.original_context / r.low_freq_factor
    high_wavelen = r.original_context / r.high_freq_factor
    wavelen = 2 * torch.pi / freqs
    smooth = (r.original_context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
    mid = 1 / ((1 - smooth) / r.factor + smooth)
    out = torch.where(wavelen < high_wavelen, torch.ones_like(freqs),
                      torch.where(wavelen > low_wavelen, torch.full_like(freqs, r.factor), mid))
    return out.to(torch.float32)
