"""The KV cache: per block, keys and values of n_seq sequences for n_ctx positions, on that block's device.

    k, v: (n_seq, n_head_kv, n_ctx, head_dim), float16 (llama.cpp's default -ctk/-ctv f16) or float32;
          [s, :, p] holds position p of sequence s (keys already rotated by RoPE)
Allocated once with torch.empty, so pages become resident only as the sequences fill; contiguous, so a
native block can address it directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError
from ..model import LlamaConfig, apply_rope, rope_cos_sin

CACHE_TYPES = {"f16": torch.float16, "f32": torch.float32}


def cache_dtype(name: str, flag: str = "-ctk") -> torch.dtype:
    """-ctk / -ctv value -> dtype (llamakit supports f16 and f32)."""
    try:
        return CACHE_TYPES[name.lower()]
    except KeyError:
        raise InputError(f"{flag} {name}: unsupported KV cache type; use f16 or f32") from None


class KVCache:
    def __init__(self, cfg: LlamaConfig, n_ctx: int, devices: Sequence[torch.device],
                 dtype: torch.dtype = torch.float16, n_seq: int = 1, dtype_v: torch.dtype | None = None) -> None:
        assert len(devices) == cfg.n_layer and n_seq >= 1
        self.cfg, self.n_ctx, self.n_seq = cfg, n_ctx, n_seq
        self.dtype, self.dtype_v = dtype, dtype_v or dtype
        shape = (n_seq, cfg.n_head_kv, n_ctx, cfg.head_dim)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = [
            (torch.empty(shape, dtype=self.dtype, device=d), torch.empty(shape, dtype=self.dtype_v, device=d))
            for d in devices
        ]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    def shift(self, keep: int, discard: int, n_past: int, freq_factors: torch.Tensor | None = None,
              seq: int = 0) -> None:
        """llama.cpp's context shift: drop positions [keep, keep + discard) of `seq` and move [keep + discard,
        n_past) down by `discard`, re-rotating the moved keys by -discard (RoPE angles add up)."""
        if discard <= 0:
            return
        src, dst, n = keep + discard, keep, n_past - keep - discard
        for k, v in self.layers:
            cos, sin = rope_cos_sin(self.cfg, torch.tensor([-discard], device=k.device), freq_factors)
            moved = k[seq, :, src:src + n].to(torch.float32).transpose(0, 1)  # (n, n_head_kv, hd)
            k[seq, :, dst:dst + n] = apply_rope(moved, cos.expand(n, -1), sin.expand(n, -1)).transpose(0, 1)
            v[seq, :, dst:dst + n] = v[seq, :, src:src + n].clone()

    def export(self, seq: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of positions [0, n) of `seq`: per layer (K, V), each (n_head_kv, n, head_dim) on the CPU."""
        return [(k[seq, :, :n].to("cpu", copy=True), v[seq, :, :n].to("cpu", copy=True)) for k, v in self.layers]

    def load(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], seq: int) -> int:
        """The reverse of export; returns n. InputError when the shapes do not fit this cache."""
        if len(layers) != len(self.layers):
            raise InputError(f"KV state has {len(layers)} layers, the model {len(self.layers)}")
        n = int(layers[0][0].shape[1]) if layers else 0
        want = (self.cfg.n_head_kv, n, self.cfg.head_dim)
        if n > self.n_ctx:
            raise InputError(f"KV state holds {n} positions, the context only {self.n_ctx}; raise -c")
        for (k, v), (ks, vs) in zip(self.layers, layers):
            if tuple(ks.shape) != want or tuple(vs.shape) != want:
                raise InputError(f"KV state layer shape {tuple(ks.shape)} does not fit this model's {want}")
            k[seq, :, :n] = ks.to(device=k.device, dtype=k.dtype)
            v[seq, :, :n] = vs.to(device=v.device, dtype=v.dtype)
        return n
