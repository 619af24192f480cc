"""On a CUDA machine (skipped elsewhere): the split model's logits against the CPU run, VRAM use against
the packed bytes, the clean out-of-memory error, the Triton kernels on the device.

Tolerance of the logits: GPU layers use Triton's fused kernels and CUDA's attention; CPU layers the
torch kernels. Both compute float32 from the same exact dequantized values, so they differ by summation
order only: |gpu - cpu| <= 2e-3 * max|cpu| + 1e-3 (measured differences are ~1e-5 relative).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llamakit.errors import OutOfMemoryError
from llamakit.runtime.generate import Context
from llamakit.runtime.loader import load_model
from llamakit.runtime.placement import PlacementOptions

pytestmark = pytest.mark.gpu
PROMPT = [1, 504, 3458, 282, 5248, 314, 253, 1345, 28, 288, 260, 1115]


def run_logits(path: Path, ngl: int, steps: int = 4) -> tuple[list[torch.Tensor], int]:
    with load_model(path, options=PlacementOptions(gpu_layers=ngl), n_ctx=256) as lm:
        ctx = Context(lm, 256)
        outs = [ctx.decode(PROMPT, logits="all")]
        tok = int(outs[0][-1].argmax())
        for _ in range(steps):
            outs.append(ctx.decode([tok]))
            tok = int(outs[-1][-1].argmax())
        return [o.cpu() for o in outs], lm.placement.n_offloaded


@pytest.fixture(scope="module")
def cpu_logits(smollm2_gguf: Path) -> list[torch.Tensor]:
    return run_logits(smollm2_gguf, 0)[0]


@pytest.mark.parametrize("ngl", [15, 30, 31])  # half, all blocks, all + output layer (SmolLM2: 30 blocks)
def test_split_logits_equal_cpu(smollm2_gguf: Path, cpu_logits: list[torch.Tensor], ngl: int) -> None:
    got, n_off = run_logits(smollm2_gguf, ngl)
    assert n_off == ngl
    for g, c in zip(got, cpu_logits):
        assert g.device.type == "cpu"  # logits come home
        assert float((g - c).abs().max()) <= 2e-3 * float(c.abs().max()) + 1e-3


def test_vram_is_packed_bytes_plus_kv(smollm2_gguf: Path) -> None:
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    with load_model(smollm2_gguf, options=PlacementOptions(gpu_layers=31), n_ctx=1024) as lm:
        weights = torch.cuda.memory_allocated() - base
        packed = sum(t.numel() * t.element_size() for t in lm.model.state_dict().values() if t.device.type == "cuda")
        ctx = Context(lm, 1024)
        kv = torch.cuda.memory_allocated() - base - weights
        assert packed <= weights <= packed * 1.02 + (1 << 20)  # the file's bytes, not float copies
        assert kv == ctx.cache.nbytes or abs(kv - ctx.cache.nbytes) <= (1 << 20)
        predicted = lm.placement.usage[0]  # weights + KV (f16) + compute reserve
        assert weights < predicted


def test_out_of_memory_is_one_line(smollm2_gguf: Path) -> None:
    free, total = torch.cuda.mem_get_info()
    torch.cuda.set_per_process_memory_fraction(min(1.0, 64 * 2**20 / total))  # 64 MiB for this process
    try:
        with pytest.raises(OutOfMemoryError) as e:
            with load_model(smollm2_gguf, options=PlacementOptions(gpu_layers=31), n_ctx=4096) as lm:
                Context(lm, 4096).decode(PROMPT)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("out of memory on cuda:0") and "-ngl" in msg
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_auto_offloads_everything_that_fits(smollm2_gguf: Path) -> None:
    with load_model(smollm2_gguf, options=PlacementOptions(), n_ctx=512) as lm:
        assert lm.placement.n_offloaded == 31 and lm.boundary is not None
        assert {m.kernel.name for m in lm.model.blk.modules() if hasattr(m, "kernel")} == {"triton"}


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", "F16", "F32", "Q5_K", "Q3_K", "Q2_K"])
def test_triton_on_device_is_exact(name: str) -> None:
    from llamakit.gguf.constants import GGMLType
    from llamakit.kernels.triton_kernels import TritonKernel
    from llamakit.quants import get_codec

    t = GGMLType[name]
    g = torch.Generator().manual_seed(0)
    w = get_codec(t).quantize(torch.randn(300, 1024, generator=g))
    exact = get_codec(t).dequantize(w).reshape(300, 1024)
    k = TritonKernel(t)
    wd = w.cuda()
    assert torch.equal(k.dequant(wd).cpu(), exact)  # fp fusion off: bit-identical on the device too
    x = torch.randn(7, 1024, generator=g)
    y = k.linear(x.cuda(), wd, 1024).cpu()
    assert bool(((y - x @ exact.T).abs() <= 1e-5 * (x.abs() @ exact.abs().T)).all())


def test_decode_replays_cuda_graphs(smollm2_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every block on the GPU: single-token steps replay CUDA graphs (one per 256/512-slot window), with
    the logits of the eager forward fed the same tokens (tolerance as above)."""
    steps = 300  # positions 12..311: crosses from the 256-slot window to the 512-slot one
    with load_model(smollm2_gguf, options=PlacementOptions(gpu_layers=31), n_ctx=512) as lm:
        ref = Context(lm, 512, graphs=False)
        want = [ref.decode(PROMPT)]
        toks = []
        for _ in range(steps):
            toks.append(int(want[-1][-1].argmax()))
            want.append(ref.decode([toks[-1]]))
        del ref
        ctx = Context(lm, 512)
        assert [(a, s.end) for a, s in ctx.segments.items()] == [(0, 30)]
        got = [ctx.decode(PROMPT)] + [ctx.decode([t]) for t in toks]
        seg = ctx.segments[0]
        assert (seg.replays, seg.eager_steps, len(seg.graphs)) == (steps, 0, 2)
    assert "graph capture failed" not in capsys.readouterr().err
    for g, w in zip(got, want):
        assert float((g - w).abs().max()) <= 2e-3 * float(w.abs().max()) + 1e-3
