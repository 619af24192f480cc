"""The llama architecture as GGUF describes it (llama.cpp's `build_llama`), in float32 torch.

Module attributes are GGUF tensor names, so `state_dict()` keys are exactly the file's names:
    token_embd.weight, blk.{i}.attn_norm.weight, blk.{i}.attn_q.weight ... blk.{i}.ffn_down.weight,
    output_norm.weight, output.weight, rope_freqs.weight (optional)
For a model with tied embeddings the loader gives `output` the bytes of `token_embd`.

No file I/O and no device choice here: each block runs where its weights are, the hidden state follows it.
The KV cache is storage the caller owns: one (k, v) pair per block, each (n_seq, n_head_kv, n_ctx,
head_dim) in float16 or float32, position p of sequence s at [s, :, p]. A forward takes a `Batch`: the
tokens' positions and sequence ids as tensors (gpt-fast's input_pos) plus the per-sequence runs worked out
once per call; each block writes the batch's K/V first, then a token at position p of sequence s attends
to slots [0, p] of s. RoPE angles come from tables for all n_ctx positions (`rope_tables`, once per
context) indexed by the positions.

`forward(..., fused=)` is the hook for a runtime that runs whole blocks natively: entry i, when not None,
is called as fused[i](x, pos32, seq32, cos_table, sin_table) and updates x (float32 (T, n_embd),
contiguous) in place instead of block i's torch code.

`forward(..., segments=)` is the hook for a runtime that replays several blocks at once (CUDA graphs):
segments[i], when present, is called as seg(x, batch) before block i and returns x after blocks
[i, seg.end), or None to decline (then block i runs as usual). `Block.step` is the form such a runtime
captures: one token of one sequence, with shapes that do not depend on the position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..gguf.constants import GGMLType
from .config import LlamaConfig
from .layers import QuantEmbedding, QuantLinear

KVPair = tuple[torch.Tensor, torch.Tensor]
FusedFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


class Segment(Protocol):
    """Blocks [start, end) run by the caller's runtime (see the module docstring)."""

    end: int

    def __call__(self, x: torch.Tensor, batch: "Batch") -> torch.Tensor | None: ...


@dataclass(frozen=True)
class Run:
    """Tokens rows [i0, i1) of a batch are sequence `seq`'s positions [p0, p1): consecutive, in order."""

    seq: int
    i0: int
    i1: int
    p0: int
    p1: int


@dataclass
class Batch:
    """Where a forward's tokens go. pos, seq: int64 (T,); runs: the same as consecutive runs (Python
    ints, so blocks decide slicing and masks without reading tensors)."""

    pos: torch.Tensor
    seq: torch.Tensor
    runs: tuple[Run, ...]
    _pos32: torch.Tensor | None = field(default=None, repr=False)
    _seq32: torch.Tensor | None = field(default=None, repr=False)
    _masks: dict = field(default_factory=dict, repr=False)

    @classmethod
    def single(cls, seq: int, start: int, n: int) -> "Batch":
        """n tokens of one sequence at positions [start, start + n)."""
        return cls(torch.arange(start, start + n), torch.full((n,), seq, dtype=torch.long),
                   (Run(seq, 0, n, start, start + n),))

    @classmethod
    def of_runs(cls, runs: Sequence[Run]) -> "Batch":
        if all(r.i1 - r.i0 == 1 for r in runs):  # a decode step of several sequences: one tensor each, not 2 per run
            return cls(torch.tensor([r.p0 for r in runs]), torch.tensor([r.seq for r in runs]), tuple(runs))
        pos = torch.cat([torch.arange(r.p0, r.p1) for r in runs])
        seq = torch.cat([torch.full((r.i1 - r.i0,), r.seq, dtype=torch.long) for r in runs])
        return cls(pos, seq, tuple(runs))

    @property
    def n_tokens(self) -> int:
        return self.runs[-1].i1

    def int32(self) -> tuple[torch.Tensor, torch.Tensor]:
        """pos, seq as int32 (the native block's argument types), made once per batch."""
        if self._pos32 is None:
            self._pos32 = self.pos.to(torch.int32)
            self._seq32 = self.seq.to(torch.int32)
        return self._pos32, self._seq32  # type: ignore[return-value]

    def mask(self, r: Run, device: torch.device) -> torch.Tensor | None:
        """bool (T_r, p1) for run r: query i (position p0 + i) sees slots <= p0 + i. None where SDPA needs
        no mask (one token sees everything written) or is_causal does it (a run from position 0)."""
        if r.i1 - r.i0 == 1 or r.p0 == 0:
            return None
        key = (r.i0, device)
        if key not in self._masks:
            qpos = torch.arange(r.p0, r.p1, device=device)[:, None]
            self._masks[key] = torch.arange(r.p1, device=device)[None, :] <= qpos
        return self._masks[key]


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


def rope_tables(cfg: LlamaConfig, n_ctx: int, freq_factors: torch.Tensor | None = None,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 (n_ctx, n_rot/2) for positions 0..n_ctx-1: computed once per context, indexed
    by position at each step (the same values as rope_cos_sin of those positions)."""
    return rope_cos_sin(cfg, torch.arange(n_ctx, device=device), freq_factors)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(T, H, D) rotated on adjacent pairs (x[2i], x[2i+1]) by cos/sin (T, D/2): GGUF's q/k layout
    (LLAMA_ROPE_TYPE_NORM)."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


def _rope_complex(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """apply_rope with the pairs as complex numbers: (x0 + i x1) (cos + i sin), one multiply.
    x float32 (T, H, D), rot complex64 (T, 1, D/2)."""
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * rot).flatten(-2)


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

    def forward(self, x: torch.Tensor, rot: torch.Tensor, kv: KVPair, batch: Batch) -> torch.Tensor:
        """x float32 (T, n_embd), rot complex64 (T, 1, n_rot/2) (the tokens' RoPE) -> (T, n_embd)."""
        cfg = self.cfg
        t = x.shape[0]
        q, k, v = self._qkv(x, rot)
        k_cache, v_cache = kv  # (n_seq, n_head_kv, n_ctx, hd)
        runs = batch.runs
        if len(runs) == 1:  # one sequence, consecutive positions: slice stores
            r = runs[0]
            k_cache[r.seq, :, r.p0:r.p1] = k.transpose(0, 1)
            v_cache[r.seq, :, r.p0:r.p1] = v.transpose(0, 1)
        else:
            pos, seq = batch.pos.to(x.device), batch.seq.to(x.device)
            k_cache[seq, :, pos] = k.to(k_cache.dtype)  # advanced indices first: (T, n_head_kv, hd)
            v_cache[seq, :, pos] = v.to(v_cache.dtype)
        outs = []
        for r in runs:
            keys = k_cache[r.seq, :, :r.p1][None].to(q.dtype)  # (1, n_head_kv, S, hd)
            vals = v_cache[r.seq, :, :r.p1][None].to(q.dtype)
            qh = q[r.i0:r.i1].transpose(0, 1)[None]  # (1, n_head, T_r, hd)
            mask = batch.mask(r, x.device)
            causal = mask is None and r.i1 - r.i0 > 1
            outs.append(F.scaled_dot_product_attention(qh, keys, vals, attn_mask=mask, is_causal=causal,
                                                       enable_gqa=True)[0].transpose(0, 1))
        a = outs[0] if len(outs) == 1 else torch.cat(outs)
        return self._finish(x, a.reshape(t, cfg.n_embd_q))

    def _qkv(self, x: torch.Tensor, rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The normed projections, q and k rotated: (T, n_head, hd), (T, n_head_kv, hd) x 2."""
        cfg, t = self.cfg, x.shape[0]
        h = self.attn_norm(x)
        q = _rope_complex(self.attn_q(h).view(t, cfg.n_head, cfg.head_dim), rot)
        k = _rope_complex(self.attn_k(h).view(t, cfg.n_head_kv, cfg.head_dim), rot)
        return q, k, self.attn_v(h).view(t, cfg.n_head_kv, cfg.head_dim)

    def _finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The attention output projection, the residual and the feed-forward: x, a (T, n_embd[_q])."""
        x = x + self.attn_output(a)
        h = self.ffn_norm(x)
        return x + self.ffn_down(F.silu(self.ffn_gate(h)) * self.ffn_up(h))

    def step(self, x: torch.Tensor, rot: torch.Tensor, kv: KVPair, seq: int, pos: torch.Tensor,
             slots: torch.Tensor) -> torch.Tensor:
        """forward for one token of sequence `seq` with no shape, index or branch that depends on its
        position, so that one CUDA graph replays every step up to len(slots) positions. x float32
        (1, n_embd); rot complex64 (1, 1, n_rot/2); pos int64 (1,) on x's device; slots = arange(L) there.
        The token attends over cache slots [0, L) masked to <= pos: slots past pos must hold finite values
        (a masked weight is 0, and 0 * NaN is NaN), so a runtime using this zeroes its cache once."""
        cfg = self.cfg
        q, k, v = self._qkv(x, rot)
        k_cache, v_cache = kv  # (n_seq, n_head_kv, n_ctx, hd)
        k_cache[seq].index_copy_(1, pos, k.transpose(0, 1).to(k_cache.dtype))  # slot pos of every head
        v_cache[seq].index_copy_(1, pos, v.transpose(0, 1).to(v_cache.dtype))
        n = slots.shape[0]
        keys = k_cache[seq, :, :n][None].to(q.dtype)  # (1, n_head_kv, L, hd)
        vals = v_cache[seq, :, :n][None].to(q.dtype)
        mask = (slots <= pos)[None, None, None, :]  # (1, 1, 1, L)
        a = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys, vals, attn_mask=mask, enable_gqa=True)
        return self._finish(x, a[0].transpose(0, 1).reshape(1, cfg.n_embd_q))


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

    def forward(self, tokens: torch.Tensor, batch: Batch, kv: Sequence[KVPair],
                rope: Mapping[torch.device, tuple[torch.Tensor, torch.Tensor]],
                logits: str | torch.Tensor | None = "last", fused: Sequence[FusedFn | None] | None = None,
                segments: Mapping[int, Segment] | None = None) -> torch.Tensor | None:
        """tokens int64 (T,) placed by `batch` -> float32 logits (n, n_vocab) for the rows `logits` picks:
        "last" (n = 1), "all" (n = T), an index tensor into [0, T), or None (no output layer at all: only
        the KV cache is filled). `rope`: per device, the context's cos/sin tables (n_ctx, n_rot/2)."""
        h = self.token_embd(tokens)
        rots: dict[torch.device, torch.Tensor] = {}
        skip_to = 0
        for i, (blk, pair) in enumerate(zip(self.blk, kv)):
            if i < skip_to:  # run by a segment
                continue
            dev = blk.attn_norm.weight.device
            fn = fused[i] if fused is not None else None
            h = self.hop(h, i, dev)
            seg = segments.get(i) if segments else None
            if seg is not None:
                out = seg(h, batch)
                if out is not None:
                    h, skip_to = out, seg.end
                    continue
            if fn is not None:
                h = h.contiguous()
                pos32, seq32 = batch.int32()
                fn(h, pos32, seq32, *rope[dev])
                continue
            if dev not in rots:
                cos, sin = rope[dev]
                p = batch.pos.to(dev)
                rots[dev] = torch.complex(cos[p], sin[p])[:, None, :]
            h = blk(h, rots[dev], pair, batch)
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
