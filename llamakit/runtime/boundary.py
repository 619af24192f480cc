"""Moving the hidden state between the CPU part and the accelerator part of a split model.

The model calls `hop(h, layer, device)` before every block (layer = i), before the output layer
(layer = n_layer) and for the logits (layer = n_layer + 1, device = the input layer's). A Boundary knows
each layer's slot (placement.py) and copies only where the slot changes, so a step crosses each boundary
once per direction, never per layer. Host -> CUDA copies go through a pinned staging buffer (an
asynchronous DMA), CUDA -> host ones land in pinned memory and are cloned (the buffer is reused next step).
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
        self._pinned: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def _staging(self, like: torch.Tensor) -> torch.Tensor:
        key = (tuple(like.shape), like.dtype)
        buf = self._pinned.get(key)
        if buf is None:
            buf = self._pinned[key] = torch.empty(like.shape, dtype=like.dtype, pin_memory=True)
        return buf

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
            return buf.to(device, non_blocking=True)
        if h.device.type == "cuda" and device.type == "cpu":
            buf = self._staging(h)
            buf.copy_(h)  # synchronous: waits for the accelerator's part of the step
            return buf.clone()
        return h.to(device)
