"""Where each part of the model lives: the one place device decisions are made.

llama.cpp's -ngl semantics (src/llama-model.cpp:1315-1341): layers are the n_layer repeating blocks plus the
"output layer" (output_norm + output) counted as layer n_layer; the input layer (token_embd) always stays on
the CPU. With N = gpu_layers, i_gpu_start = max(n_layer - N, 0) and act = min(N, n_layer + 1): layer il is
offloaded iff i_gpu_start <= il < i_gpu_start + act, so the *last* N layers go to the accelerator and the
output layer only when N > n_layer. Offloaded layers are spread over the accelerators in contiguous,
near-equal runs (llama.cpp's layer split with an even --tensor-split). A block's KV cache lives with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Placement:
    input: torch.device  # token_embd
    blocks: tuple[torch.device, ...]  # blk.i (and its KV cache)
    output: torch.device  # output_norm + output

    @property
    def n_offloaded(self) -> int:
        """Layers (blocks + output layer) not on the CPU, as llama.cpp reports them (X of n_layer + 1)."""
        return sum(d.type != "cpu" for d in (*self.blocks, self.output))


def place_layers(n_layer: int, gpu_layers: int, devices: Sequence[torch.device] = ()) -> Placement:
    """Pure: the device of every layer for `-ngl gpu_layers` over the accelerators `devices`.

    gpu_layers < 0 means the library default, 0 (llama.cpp's common default -1). With no accelerators
    everything is on the CPU whatever gpu_layers says.
    """
    if gpu_layers < 0 or not devices:
        gpu_layers = 0
    start = max(n_layer - gpu_layers, 0)
    act = min(gpu_layers, n_layer + 1)

    def device_of(il: int) -> torch.device:
        if not (start <= il < start + act):
            return CPU
        # contiguous even split of the act offloaded layers over the devices
        return torch.device(devices[(il - start) * len(devices) // act])

    return Placement(input=CPU, blocks=tuple(device_of(i) for i in range(n_layer)), output=device_of(n_layer))
