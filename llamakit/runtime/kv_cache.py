"""The KV cache: per block, keys and values for n_ctx positions, on that block's device.

    k, v: float (n_head_kv, n_ctx, head_dim); slot p holds position p (keys already rotated by RoPE)
Allocated once with torch.empty, so pages become resident only as the context fills.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..model import LlamaConfig, apply_rope, rope_cos_sin


class KVCache:
    def __init__(self, cfg: LlamaConfig, n_ctx: int, devices: Sequence[torch.device],
                 dtype: torch.dtype = torch.float32) -> None:
        assert len(devices) == cfg.n_layer
        self.cfg, self.n_ctx, self.dtype = cfg, n_ctx, dtype
        shape = (cfg.n_head_kv, n_ctx, cfg.head_dim)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = [
            (torch.empty(shape, dtype=dtype, device=d), torch.empty(shape, dtype=dtype, device=d)) for d in devices
        ]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    def shift(self, keep: int, discard: int, n_past: int, freq_factors: torch.Tensor | None = None) -> None:
        """llama.cpp's context shift: drop positions [keep, keep + discard) and move [keep + discard, n_past)
        down by `discard`, re-rotating the moved keys by -discard (RoPE angles add up)."""
        if discard <= 0:
            return
        src, dst, n = keep + discard, keep, n_past - keep - discard
        for k, v in self.layers:
            cos, sin = rope_cos_sin(self.cfg, torch.tensor([-discard], device=k.device), freq_factors)
            moved = k[:, src:src + n].to(torch.float32).transpose(0, 1)  # (n, n_head_kv, hd)
            k[:, dst:dst + n] = apply_rope(moved, cos.expand(n, -1), sin.expand(n, -1)).transpose(0, 1).to(k.dtype)
            v[:, dst:dst + n] = v[:, src:src + n].clone()
