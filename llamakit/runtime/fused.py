"""Whole blocks in one native call: the runtime's decision, the model only has the hook (`fused=`).

A block runs fused when every one of its seven matmul weights is served by the native kernels, it lives
on the CPU and its K and V caches have one dtype; otherwise it keeps the torch code (mixed models run
some blocks each way: both write the same cache). The FusedBlock objects point at the prepared weights,
the norms and this context's cache tensors, so the context keeps them (and they keep those tensors).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import LlamakitError
from ..kernels.fused import LINEARS, FusedBlock, FusedScratch
from ..model.layers import QuantLinear
from .kv_cache import KVCache
from .loader import LoadedModel


def _linears(blk: Any) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for name in LINEARS:
        mod: QuantLinear = getattr(blk, name)
        if not mod.kernel.name.startswith("native-") or mod.weight.device.type != "cpu":
            return None
        bias = mod.bias.contiguous() if mod.bias is not None else None
        out[name] = (int(mod.ggml_type), mod.weight, mod.out_features, mod.in_features, bias)
    out["attn_norm"] = blk.attn_norm.weight.contiguous()
    out["ffn_norm"] = blk.ffn_norm.weight.contiguous()
    return out


def fused_blocks(lm: LoadedModel, cache: KVCache, max_tokens: int = 1) -> list[FusedBlock | None] | None:
    """One FusedBlock (or None: torch) per block; None when no block can run fused."""
    cfg = lm.config
    if cache.dtype != cache.dtype_v or cache.dtype not in (torch.float16, torch.float32):
        return None
    dims = {"n_embd": cfg.n_embd, "n_head": cfg.n_head, "n_head_kv": cfg.n_head_kv, "head_dim": cfg.head_dim,
            "n_ff": cfg.n_ff, "n_rot": cfg.n_rot, "eps": cfg.norm_eps}
    out: list[FusedBlock | None] = []
    scratch = FusedScratch(lm.variant)  # the blocks run one after another: one set of work buffers
    for blk, (k, v) in zip(lm.model.blk, cache.layers):
        lin = _linears(blk)
        fb = None
        if lin is not None and k.device.type == "cpu":
            try:
                fb = FusedBlock(dims, lin, k, v, variant=lm.variant, max_tokens=max_tokens, scratch=scratch)
            except LlamakitError:
                fb = None
        out.append(fb)
    return out if any(f is not None for f in out) else None
