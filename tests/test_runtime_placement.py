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


# ---- -ngl N and auto over sizes (placement.place), table-driven ----------------------------------

import pytest  # noqa: E402

from llamakit.errors import InputError, OutOfMemoryError  # noqa: E402
from llamakit.runtime.placement import (  # noqa: E402
    AUTO, HOST, MiB, ModelSizes, PlacementOptions, assign_slots, model_sizes, place, usage_of)

BLOCK, KV, COMPUTE, OUT, INP = 100 * MiB, 10 * MiB, 50 * MiB, 200 * MiB, 150 * MiB


def sizes(n_layer: int) -> ModelSizes:
    return ModelSizes(input=INP, blocks=(BLOCK,) * n_layer, output=OUT, kv_block=KV, compute=COMPUTE)


@pytest.mark.parametrize("n_layer", [30, 32, 80])
@pytest.mark.parametrize("ngl", ["0", "1", "n-1", "n", "n+1", "999"])
def test_ngl_n_places_the_last_n_layers(n_layer: int, ngl: str) -> None:
    n = {"0": 0, "1": 1, "n-1": n_layer - 1, "n": n_layer, "n+1": n_layer + 1, "999": 999}[ngl]
    p = place(sizes(n_layer), PlacementOptions(gpu_layers=n), [G0], [1 << 50])
    on_gpu = min(n, n_layer)
    assert p.blocks == (CPU,) * (n_layer - on_gpu) + (G0,) * on_gpu
    assert p.output == (G0 if n > n_layer else CPU) and p.input == CPU
    assert p.n_offloaded == min(n, n_layer + 1) == p.gpu_layers
    # predicted bytes: weights + KV of every offloaded layer, the compute reserve where anything runs
    gpu = on_gpu * (BLOCK + KV) + (OUT if n > n_layer else 0) + (COMPUTE if n else 0)
    assert p.usage == (gpu,)
    assert p.host_bytes == INP + COMPUTE + (n_layer - on_gpu) * (BLOCK + KV) + (0 if n > n_layer else OUT)


@pytest.mark.parametrize("n_layer", [30, 32, 80])
@pytest.mark.parametrize("free_layers, expect", [
    (0, 0),  # not one layer fits: everything on the CPU
    (1, 1),
    (7, 7),
    (-1, -1),  # all blocks, not the output layer
    (-2, -2),  # everything
])
def test_auto_fits_the_largest_n(n_layer: int, free_layers: int, expect: int) -> None:
    margin = 1024 * MiB
    want = {-1: n_layer, -2: n_layer + 1}.get(free_layers, free_layers)
    expect = {-1: n_layer, -2: n_layer + 1}.get(expect, expect)
    need = want * (BLOCK + KV) + (COMPUTE if want else 0) + (OUT - BLOCK - KV if want > n_layer else 0)
    free = need + margin + (BLOCK + KV) // 2  # half a block short of the next N
    p = place(sizes(n_layer), PlacementOptions(gpu_layers=AUTO), [G0], [free], ram=1 << 50)
    assert p.gpu_layers == expect == p.n_offloaded
    assert p.usage[0] <= free - margin
    assert f"{expect} of {n_layer + 1} layers fit" in p.note
    # one byte less free: one layer fewer (or none)
    q = place(sizes(n_layer), PlacementOptions(gpu_layers=AUTO), [G0], [need + margin - 1], ram=1 << 50)
    assert q.gpu_layers == max(expect - 1, 0)


def test_auto_margin_is_respected() -> None:
    s = sizes(80)
    free = 8 * 1024 * MiB
    a = place(s, PlacementOptions(), [G0], [free]).gpu_layers
    b = place(s, PlacementOptions(fit_margin=0), [G0], [free]).gpu_layers
    assert (a, b) == ((free - 1024 * MiB - COMPUTE) // (BLOCK + KV), (free - COMPUTE) // (BLOCK + KV))


def test_auto_without_accelerators_or_memory_info_is_cpu() -> None:
    assert place(sizes(32), PlacementOptions(), []).n_offloaded == 0
    assert place(sizes(32), PlacementOptions(), [G0], None).n_offloaded == 0
    assert place(sizes(32), PlacementOptions(gpu_layers=5), []).n_offloaded == 0


def test_auto_checks_ram_for_the_rest() -> None:
    s = sizes(80)  # 80 x 110 MiB + 350 MiB of input and output
    free = 2048 * MiB  # 1 GiB after the margin: 8 layers
    p = place(s, PlacementOptions(), [G0], [free], ram=10 * 1024 * MiB)
    assert p.gpu_layers == 8
    with pytest.raises(OutOfMemoryError) as e:
        place(s, PlacementOptions(), [G0], [free], ram=4 * 1024 * MiB)
    msg = str(e.value)
    assert "\n" not in msg and "RAM" in msg and "4.00 GiB" in msg and "8 of 81 layers" in msg
    host = INP + COMPUTE + OUT + 72 * (BLOCK + KV)
    assert f"{host / 2**30:.2f} GiB" in msg


def test_explicit_ngl_that_cannot_fit_is_one_line_error() -> None:
    with pytest.raises(OutOfMemoryError) as e:
        place(sizes(32), PlacementOptions(gpu_layers=32), [G0], [1024 * MiB])
    msg = str(e.value)
    assert msg.startswith("out of memory on cuda:0: 3520 MiB asked, 1024 MiB free") and "-ngl 0" in msg


def test_two_gpus_with_a_split() -> None:
    s = sizes(32)
    opts = PlacementOptions(gpu_layers=99, tensor_split=(3, 1))
    p = place(s, opts, [G0, G1], [1 << 40, 1 << 40])
    # 33 layers, cumulative splits [0.75, 1]: layer il -> G0 while il/33 < 0.75, i.e. il <= 24
    assert p.blocks[:25] == (G0,) * 25 and p.blocks[25:] == (G1,) * 7 and p.output == G1
    assert p.usage == (25 * (BLOCK + KV) + COMPUTE, 7 * (BLOCK + KV) + OUT + COMPUTE)
    # auto with the split taken from free memory: a card with twice the memory gets twice the layers
    q = place(s, PlacementOptions(), [G0, G1], [4096 * MiB, 2048 * MiB + 1024 * MiB * 0])
    runs = [q.blocks.count(G0), q.blocks.count(G1)]
    assert q.n_offloaded == sum(runs) + (q.output != CPU)
    assert all(u <= f - 1024 * MiB for u, f in zip(q.usage, (4096 * MiB, 2048 * MiB)))
    assert runs[0] >= 2 * runs[1] - 1 and runs[1] > 0
    # contiguous: CPU blocks, then G0's run, then G1's
    order = [d for i, d in enumerate(q.blocks) if i == 0 or q.blocks[i - 1] != d]
    assert order == [CPU, G0, G1]


def test_split_mode_none_uses_main_gpu() -> None:
    p = place(sizes(4), PlacementOptions(gpu_layers=99, split_mode="none", main_gpu=1), [G0, G1], [1 << 40] * 2)
    assert set(p.blocks) == {G1} and p.output == G1 and p.usage[0] == 0
    with pytest.raises(InputError):
        assign_slots(4, 2, 2, PlacementOptions(main_gpu=2))


def test_options_validate() -> None:
    for bad in (dict(gpu_layers=-2), dict(split_mode="row"), dict(cache_type="q4_0"), dict(tensor_split=(0, 0)),
                dict(tensor_split=(-1, 2)), dict(fit_margin=-1)):
        with pytest.raises(InputError):
            PlacementOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        place(sizes(4), PlacementOptions(tensor_split=(1, 1, 1)), [G0, G1], [1 << 40] * 2)


def test_model_sizes_groups_tensors_and_tied_output_copies_the_embedding() -> None:
    t = {"token_embd.weight": 1000, "blk.0.attn_q.weight": 10, "blk.0.attn_norm.weight": 4,
         "blk.1.ffn_up.weight": 7, "output_norm.weight": 3}
    s = model_sizes(t, 2, kv_block=5, compute=9, tied_output=True)
    assert (s.input, s.blocks, s.output) == (1000, (14, 7), 1003)
    dev, host = usage_of(assign_slots(2, 3, 1), s, 1)
    assert dev == [14 + 5 + 7 + 5 + 1003 + 9] and host == 1000 + 9 and HOST == -1
