"""Moving the hidden state between the CPU part and the accelerator part of a split model.

The model calls `hop(h, layer, device)` before every block (layer = i), before the output layer
(layer = n_layer) and for the logits (layer = n_layer + 1, device = the input layer's). A Boundary knows
each layer's slot (placement.py) and copies only where the slot changes, so a step crosses each boundary
once per direction, never per layer. Host -> CUDA copies go through a pinned staging buffer (an
asynchronous DMA; before the buffer is written again the previous copy out of it is waited for), CUDA ->
host ones land in pinned memory and are cloned (the buffer is reused next step). One staging buffer per
dtype, grown to the largest batch seen.
Between two slots on the same torch device (a CPU standing in for an accelerator in tests) the copy is a
clone, so the code path and the count are those of a real split. `transfers` counts copies.
"""

from __future__ import annotations

import torch

from .placement import HOST, Placement


class Boundary:
    def __init__(self, placement: Placement) -> None:
        self.slots = (*placement.slots, HOST)  # blocks, output layer, then the logits go home
        self.transfers = 0
        self._pinned: dict[torch.dtype, torch.Tensor] = {}
        self._pending: object | None = None  # torch.cuda.Event of the last copy out of a staging buffer

    def _staging(self, like: torch.Tensor) -> torch.Tensor:
        if self._pending is not None:  # a host -> device copy may still be reading the buffer
            self._pending.synchronize()  # type: ignore[attr-defined]
            self._pending = None
        n = like.numel()
        buf = self._pinned.get(like.dtype)
        if buf is None or buf.numel() < n:
            size = max(n, 2 * buf.numel()) if buf is not None else n
            buf = self._pinned[like.dtype] = torch.empty(size, dtype=like.dtype, pin_memory=True)
        return buf[:n].view(like.shape)

    def __call__(self, h: torch.Tensor, layer: int, device: torch.device) -> torch.Tensor:
        src = HOST if layer == 0 else self.slots[layer - 1]
        if src == self.slots[layer]:
            return h if h.device == device else h.to(device)
        self.transfers += 1
        return self.move(h, device)

    def move(self, h: torch.Tensor, device: torch.device) -> torch.Tensor:
        if h.device == device:
            return h.clone()
        if h.device.type == "cpu" and device.type == "cuda":
            buf = self._staging(h)
            buf.copy_(h)
            out = buf.to(device, non_blocking=True)
            self._pending = torch.cuda.Event()
            self._pending.record(torch.cuda.current_stream(device))  # type: ignore[attr-defined]
            return out
        if h.device.type == "cuda" and device.type == "cpu":
            buf = self._staging(h)
            buf.copy_(h)  # synchronous: waits for the accelerator's part of the step
            return buf.clone()
        return h.to(device)
