"""The llama architecture as GGUF describes it (llama.cpp's `build_llama`), in float32 torch.

Module attributes are GGUF tensor names, so `state_dict()` keys are exactly the file's names:
    token_embd.weight, blk.{i}.attn_norm.weight, blk.{i}.attn_q.weight ... blk.{i}.ffn_down.weight,
    output_norm.weight, output.weight, rope_freqs.weight (optional)
For a model with tied embeddings the loader gives `output` the bytes of `token_embd`.

No file I/O and no device choice here: each block runs where its weights are, the hidden state follows it.
The KV cache is storage the caller owns: one (k, v) pair per block, each float (n_head_kv, n_ctx, head_dim),
with position p at slot p; `forward(tokens, start, kv)` writes slots [start, start + T) and attends to
[0, start + T).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..gguf.constants import GGMLType
from .config import LlamaConfig
from .layers import QuantEmbedding, QuantLinear

KVPair = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.empty(dim))  # float32 (dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ggml_rms_norm then ggml_mul: x / sqrt(mean(x^2) + eps) * w
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cos_sin(cfg: LlamaConfig, positions: torch.Tensor, freq_factors: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """int (T,) -> float32 cos, sin (T, n_rot/2) of theta_i = p * freq_scale * base^(-2i/n_rot) / factor_i.

    Angles are computed in float64 (ggml multiplies float32 powers up one by one; transformers uses
    float32 inverse frequencies): both are within float32 rounding of these.
    """
    i = torch.arange(0, cfg.n_rot, 2, dtype=torch.float64, device=positions.device) / cfg.n_rot
    inv = cfg.rope_freq_scale * cfg.rope_freq_base ** (-i)
    if freq_factors is not None:
        inv = inv / freq_factors.to(device=positions.device, dtype=torch.float64)
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(T, H, D) rotated on adjacent pairs (x[2i], x[2i+1]) by cos/sin (T, D/2): GGUF's q/k layout
    (LLAMA_ROPE_TYPE_NORM)."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


class Block(nn.Module):
    """attention + SwiGLU feed-forward, each behind an RMSNorm and a residual."""

    def __init__(self, cfg: LlamaConfig, types: Mapping[str, GGMLType]) -> None:
        super().__init__()
        self.cfg = cfg
        e, q, kv, ff = cfg.n_embd, cfg.n_embd_q, cfg.n_embd_kv, cfg.n_ff
        b = cfg.biases
        self.attn_norm = RMSNorm(e, cfg.norm_eps)
        self.attn_q = QuantLinear(e, q, types["attn_q"], "attn_q" in b)  # (n_head*hd, e)
        self.attn_k = QuantLinear(e, kv, types["attn_k"], "attn_k" in b)  # (n_head_kv*hd, e)
        self.attn_v = QuantLinear(e, kv, types["attn_v"], "attn_v" in b)
        self.attn_output = QuantLinear(q, e, types["attn_output"], "attn_output" in b)
        self.ffn_norm = RMSNorm(e, cfg.norm_eps)
        self.ffn_gate = QuantLinear(e, ff, types["ffn_gate"], "ffn_gate" in b)
        self.ffn_up = QuantLinear(e, ff, types["ffn_up"], "ffn_up" in b)
        self.ffn_down = QuantLinear(ff, e, types["ffn_down"], "ffn_down" in b)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: KVPair, start: int
                ) -> torch.Tensor:
        """x float32 (T, n_embd) at positions [start, start+T) -> (T, n_embd)."""
        cfg = self.cfg
        t = x.shape[0]
        h = self.attn_norm(x)
        q = apply_rope(self.attn_q(h).view(t, cfg.n_head, cfg.head_dim), cos, sin)
        k = apply_rope(self.attn_k(h).view(t, cfg.n_head_kv, cfg.head_dim), cos, sin)
        v = self.attn_v(h).view(t, cfg.n_head_kv, cfg.head_dim)
        k_cache, v_cache = kv  # (n_head_kv, n_ctx, hd)
        end = start + t
        k_cache[:, start:end] = k.transpose(0, 1)
        v_cache[:, start:end] = v.transpose(0, 1)
        keys = k_cache[None, :, :end].to(q.dtype)  # (1, n_head_kv, S, hd)
        vals = v_cache[None, :, :end].to(q.dtype)
        qh = q.transpose(0, 1)[None]  # (1, n_head, T, hd)
        if t == 1:
            a = F.scaled_dot_product_attention(qh, keys, vals, enable_gqa=True)
        elif start == 0:
            a = F.scaled_dot_product_attention(qh, keys, vals, is_causal=True, enable_gqa=True)
        else:  # a batch after earlier tokens: query i sees slots <= start + i
            qpos = torch.arange(start, end, device=x.device)[:, None]
            mask = torch.arange(end, device=x.device)[None, :] <= qpos
            a = F.scaled_dot_product_attention(qh, keys, vals, attn_mask=mask, enable_gqa=True)
        x = x + self.attn_output(a[0].transpose(0, 1).reshape(t, cfg.n_embd_q))
        h = self.ffn_norm(x)
        return x + self.ffn_down(F.silu(self.ffn_gate(h)) * self.ffn_up(h))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig, types: Mapping[str, GGMLType]) -> None:
        """`types`: the ggml type of every weight, by GGUF tensor name."""
        super().__init__()
        self.cfg = cfg
        self.token_embd = QuantEmbedding(cfg.n_vocab, cfg.n_embd, types["token_embd.weight"])
        self.blk = nn.ModuleList(
            Block(cfg, {k: types[f"blk.{i}.{k}.weight"] for k in (
                "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")})
            for i in range(cfg.n_layer)
        )
        self.output_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.output = QuantLinear(cfg.n_embd, cfg.n_vocab,
                                  types["token_embd.weight" if cfg.tied_output else "output.weight"])
        self.rope_freqs = nn.Module()
        self.rope_freqs.register_buffer("weight", torch.empty(cfg.n_rot // 2) if cfg.has_rope_freqs else None)

    def forward(self, tokens: torch.Tensor, start: int, kv: Sequence[KVPair],
                logits: str | torch.Tensor | None = "last") -> torch.Tensor | None:
        """tokens int64 (T,) at positions [start, start+T) -> float32 logits (n, n_vocab) for the rows
        `logits` picks: "last" (n = 1), "all" (n = T), an index tensor into [0, T), or None (no output
        layer at all: only the KV cache is filled)."""
        t = tokens.shape[0]
        h = self.token_embd(tokens)
        positions = torch.arange(start, start + t)
        angles: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, (blk, pair) in enumerate(zip(self.blk, kv)):
            dev = blk.attn_norm.weight.device
            if dev not in angles:
                angles[dev] = rope_cos_sin(self.cfg, positions.to(dev), self.rope_freqs.weight)
            h = blk(self.hop(h, i, dev), *angles[dev], pair, start)
        if logits is None:
            return None
        if isinstance(logits, str):
            if logits == "last":
                h = h[-1:]
            elif logits != "all":
                raise ValueError(f"logits must be 'last', 'all' or an index tensor, not {logits!r}")
        else:
            h = h[logits.to(h.device)]
        h = self.hop(h, self.cfg.n_layer, self.output_norm.weight.device)
        out = self.output(self.output_norm(h))
        return self.hop(out, self.cfg.n_layer + 1, self.token_embd.weight.device)

    def hop(self, h: torch.Tensor, layer: int, device: torch.device) -> torch.Tensor:
        """Move the hidden state to `device` before layer `layer` (n_layer: the output layer; n_layer + 1:
        the logits, back to the input layer's device). The runtime may replace this per instance (a
        Boundary that copies only where the placement changes device, through pinned buffers)."""
        return h if h.device == device else h.to(device)
