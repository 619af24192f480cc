"""A model split over devices runs without a GPU: the CPU stands in for the accelerators (placement slots,
not device types, mark the boundaries), so the placing, the boundary copies and the KV slices run in CI.
Logits equal the single-device run exactly (same kernels, same order), and each step crosses each
boundary once per direction (the Boundary counts its copies)."""

from __future__ import annotations

import pytest
import torch

from llamakit.runtime.generate import Context
from llamakit.runtime.loader import load_model
from llamakit.runtime.placement import DeviceInfo, PlacementOptions

from .conftest import TINY_GGUF

MODEL = TINY_GGUF / "quantize-Q4_K_M.gguf"  # 4 blocks
FAKE = DeviceInfo(torch.device("cpu"), "fake accelerator", free=1 << 40, total=1 << 40)
PROMPT = [1, 415, 29, 920, 526, 366, 97, 306]


def logits_of(lm, steps: int = 3) -> tuple[list[torch.Tensor], list[int]]:  # type: ignore[no-untyped-def]
    """Prompt logits, then `steps` greedy decodes; and the transfer count of each call."""
    ctx = Context(lm, 64)
    outs, counts = [], []
    tok = PROMPT
    for _ in range(steps + 1):
        before = lm.boundary.transfers if lm.boundary else 0
        out = ctx.decode(tok, logits="all" if len(tok) > 1 else "last")
        counts.append((lm.boundary.transfers if lm.boundary else 0) - before)
        outs.append(out)
        tok = [int(out[-1].argmax())]
    return outs, counts


@pytest.fixture(scope="module")
def reference() -> list[torch.Tensor]:
    with load_model(MODEL) as lm:
        assert lm.boundary is None
        return logits_of(lm)[0]


@pytest.mark.parametrize("ngl, devices, per_step", [
    (0, 1, 0),  # nothing offloaded: no boundary at all
    (1, 1, 2),  # the last block: in before it, out before the output layer
    (3, 1, 2),
    (4, 1, 2),  # every block, output layer on the CPU
    (5, 1, 2),  # everything: in before block 0, the logits come back
    (5, 2, 3),  # two accelerators: host -> dev0 -> dev1 -> host
    (3, 2, 3),
])
def test_split_logits_equal_single_device(reference: list[torch.Tensor], ngl: int, devices: int,
                                          per_step: int) -> None:
    opts = PlacementOptions(gpu_layers=ngl)
    with load_model(MODEL, options=opts, accelerators=(FAKE,) * devices, n_ctx=64) as lm:
        p = lm.placement
        assert p.n_offloaded == ngl and (lm.boundary is not None) == (ngl > 0)
        assert [s for s in p.slots if s >= 0] == sorted(s for s in p.slots if s >= 0)  # contiguous runs
        if devices == 2:
            assert set(p.slots) - {-1} == {0, 1}
        outs, counts = logits_of(lm)
    for got, want in zip(outs, reference):
        assert torch.equal(got, want)
    assert counts == [per_step] * len(counts)  # prompt batch and single-token steps alike: never per layer


def test_kv_cache_lives_with_its_block() -> None:
    with load_model(MODEL, options=PlacementOptions(gpu_layers=2), accelerators=(FAKE,), n_ctx=32) as lm:
        ctx = Context(lm, 32)
        assert [k.device for k, _ in ctx.cache.layers] == list(lm.placement.blocks)
        assert lm.placement.slots == (-1, -1, 0, 0, -1)


def test_auto_on_a_small_fake_device_fits_what_the_sizes_allow() -> None:
    with load_model(MODEL, options=PlacementOptions(fit_margin=0)) as lm:  # this machine: no CUDA
        assert lm.placement.n_offloaded == 0
    with load_model(MODEL, options=PlacementOptions(), accelerators=(FAKE,), n_ctx=64) as lm:
        assert lm.placement.n_offloaded == 5  # 1 TiB free: all layers
    tiny = DeviceInfo(torch.device("cpu"), "tiny", free=0)
    with load_model(MODEL, options=PlacementOptions(fit_margin=0), accelerators=(tiny,), n_ctx=64) as lm:
        assert lm.placement.n_offloaded == 0 and lm.boundary is None
