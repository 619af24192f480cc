"""place_layers follows llama.cpp's -ngl rules (src/llama-model.cpp:1315-1341)."""

from __future__ import annotations

import torch

from llamakit.runtime.placement import place_layers

CPU, G0, G1 = torch.device("cpu"), torch.device("cuda:0"), torch.device("cuda:1")


def test_no_devices_or_no_layers_means_cpu() -> None:
    for p in (place_layers(32, 99, ()), place_layers(32, 0, (G0,)), place_layers(32, -1, (G0,))):
        assert set(p.blocks) == {CPU} and p.output == CPU and p.input == CPU and p.n_offloaded == 0


def test_last_n_blocks_are_offloaded() -> None:
    p = place_layers(32, 5, (G0,))
    assert p.blocks[:27] == (CPU,) * 27 and p.blocks[27:] == (G0,) * 5
    assert p.output == CPU and p.n_offloaded == 5


def test_output_layer_needs_n_greater_than_n_layer() -> None:
    p = place_layers(32, 32, (G0,))
    assert set(p.blocks) == {G0} and p.output == CPU and p.n_offloaded == 32  # 32/33
    p = place_layers(32, 33, (G0,))
    assert p.output == G0 and p.n_offloaded == 33
    p = place_layers(32, 999, (G0,))
    assert p.output == G0 and p.n_offloaded == 33 and p.input == CPU  # token_embd stays on the CPU


def test_even_layer_split_over_two_devices() -> None:
    p = place_layers(32, 99, (G0, G1))
    # act = 33 layers; layer il goes to device floor(2 * il / 33), as upper_bound over splits [0.5, 1]
    assert p.blocks[:17] == (G0,) * 17 and p.blocks[17:] == (G1,) * 15 and p.output == G1
    p = place_layers(4, 2, (G0, G1))
    assert p.blocks == (CPU, CPU, G0, G1) and p.output == CPU
