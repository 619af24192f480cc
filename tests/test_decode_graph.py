"""Single-token decode through runtime/decode_graph.py without a GPU: `Block.step` (the code a CUDA graph
captures) runs eagerly on the CPU and must give the logits of the ordinary forward. The two attend over
different lengths (the step: a power-of-two window of the cache, masked; the forward: exactly the used
slots), so they agree to float32 summation order: |step - forward| <= 1e-5 * max|forward| + 1e-5, and the
greedy tokens are identical. The capture itself runs only on CUDA (tests/test_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from llamakit.runtime.decode_graph import DecodeGraph, slots_for
from llamakit.runtime.generate import Context
from llamakit.runtime.loader import load_model
from llamakit.runtime.placement import HOST, Placement, PlacementOptions, graph_segments

from .conftest import TINY_GGUF
from .test_runtime_split import FAKE

MODEL = TINY_GGUF / "quantize-Q4_K_M.gguf"  # 4 blocks
PROMPT = [1, 415, 29, 920, 526, 366, 97, 306]
CPU, GPU0, GPU1 = torch.device("cpu"), torch.device("cuda:0"), torch.device("cuda:1")


@pytest.mark.parametrize("pos, n_ctx, min_slots, want", [
    (0, 4096, 256, 256), (255, 4096, 256, 256), (256, 4096, 256, 512), (511, 4096, 256, 512),
    (512, 4096, 256, 1024), (4095, 4096, 256, 4096), (299, 300, 256, 300), (10, 64, 256, 64),
    (7, 64, 4, 8), (8, 64, 4, 16), (0, 64, 4, 4), (63, 64, 4, 64),
])
def test_slots_cover_the_position(pos: int, n_ctx: int, min_slots: int, want: int) -> None:
    assert slots_for(pos, n_ctx, min_slots) == want


def placement(blocks: tuple[torch.device, ...], slots: tuple[int, ...] = ()) -> Placement:
    return Placement(input=CPU, blocks=blocks, output=CPU, slots=slots)


@pytest.mark.parametrize("blocks, slots, eligible, everywhere, want", [
    ((CPU,) * 4, (), [True] * 4, False, []),  # no CUDA block: nothing
    ((CPU, CPU, GPU0, GPU0), (), [True] * 4, False, [(2, 4)]),
    ((GPU0,) * 4, (), [True, True, False, True], False, [(0, 2), (3, 4)]),  # a fused block splits the run
    ((CPU, GPU0, GPU0, GPU1, GPU1), (), [True] * 5, False, [(1, 3), (3, 5)]),  # one run per device
    ((CPU,) * 4, (HOST, HOST, 0, 0, 0), [True] * 4, True, [(0, 2), (2, 4)]),  # stand-in: one run per slot
    ((CPU,) * 4, (), [False, True, True, False], True, [(1, 3)]),
])
def test_graph_segments(blocks: tuple[torch.device, ...], slots: tuple[int, ...], eligible: list[bool],
                        everywhere: bool, want: list[tuple[int, int]]) -> None:
    assert graph_segments(placement(blocks, slots), eligible, everywhere) == want


def greedy(ctx: Context, steps: int) -> list[torch.Tensor]:
    outs = [ctx.decode(PROMPT, logits="all")]
    tok = int(outs[0][-1].argmax())
    for _ in range(steps):
        outs.append(ctx.decode([tok]))
        tok = int(outs[-1][-1].argmax())
    return outs


def close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert float((g - w).abs().max()) <= 1e-5 * float(w.abs().max()) + 1e-5
        assert int(g[-1].argmax()) == int(w[-1].argmax())


@pytest.fixture(scope="module")
def reference() -> list[torch.Tensor]:
    with load_model(MODEL, n_ctx=64) as lm:
        return greedy(Context(lm, 64, fused=False, graphs=False), 50)


def small_windows(ctx: Context) -> None:
    """Windows of 4, 8, 16, 32, 64 slots, so 50 steps cross every size change."""
    for a, seg in list(ctx.segments.items()):
        ctx.segments[a] = DecodeGraph(ctx.model, a, seg.end, ctx.cache.layers, ctx.rope[seg.device], ctx.n_ctx,
                                      min_slots=4)


def test_step_equals_the_forward(reference: list[torch.Tensor]) -> None:
    with load_model(MODEL, n_ctx=64) as lm:
        ctx = Context(lm, 64, fused=False, graphs=True)
        assert [(a, s.end) for a, s in ctx.segments.items()] == [(0, 4)]
        small_windows(ctx)
        got = greedy(ctx, 50)
        assert ctx.segments[0].eager_steps == 50  # every single-token step, not the prompt
    close(got, reference)


def test_masked_slots_are_zeroed_first(reference: list[torch.Tensor]) -> None:
    """torch.empty's bytes may be NaN patterns, and a masked NaN still poisons the attention (0 * NaN)."""
    with load_model(MODEL, n_ctx=64) as lm:
        ctx = Context(lm, 64, fused=False, graphs=False)
        for k, v in ctx.cache.layers:
            k.fill_(float("nan"))
            v.fill_(float("nan"))
        ctx.segments[0] = DecodeGraph(ctx.model, 0, 4, ctx.cache.layers, ctx.rope[CPU], 64)
        close(greedy(ctx, 10), reference[:11])


def test_on_a_stand_in_accelerator_with_the_boundary(reference: list[torch.Tensor]) -> None:
    opts = PlacementOptions(gpu_layers=3)  # blocks 1-3 on the "accelerator", the output layer on the CPU
    with load_model(MODEL, options=opts, accelerators=(FAKE,), n_ctx=64) as lm:
        ctx = Context(lm, 64, fused=False, graphs=True)
        assert [(a, s.end) for a, s in ctx.segments.items()] == [(0, 1), (1, 4)]
        before = lm.boundary.transfers
        got = greedy(ctx, 20)
        assert lm.boundary.transfers - before == 2 * 21  # in and out once per step, segments or not
        assert all(s.eager_steps == 20 for s in ctx.segments.values())
    close(got, reference[:21])


def test_batches_and_other_sequences() -> None:
    """Steps of several sequences decline (run as the forward); a single step of sequence 1 uses its own
    key; both equal a context without segments."""
    def run(graphs: bool) -> tuple[list[torch.Tensor], Context]:
        with load_model(MODEL, n_ctx=64) as lm:
            ctx = Context(lm, 32, n_seq=2, fused=False, graphs=graphs)
            outs = ctx.decode_batch([(0, PROMPT), (1, PROMPT[:5])])
            outs += ctx.decode_batch([(0, [7]), (1, [9])])
            outs.append(ctx.decode([11], seq=1))
            outs.append(ctx.decode([12], seq=0))
            return outs, ctx
    want, _ = run(False)
    got, ctx = run(True)
    assert ctx.segments[0].eager_steps == 2  # the two single-sequence steps only
    close(got, want)
