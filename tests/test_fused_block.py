"""The native one-call block (kernels/fused.py, native/k_forward.c) against the torch Block.forward.

Each case drives one block of a tiny reference model through the same sequence of calls on both paths,
each with its own cache of layout (n_seq, n_head_kv, n_ctx, head_dim): a 7-token prompt in sequence 0,
a T=1 decode after it, a 5-token chunk at positions 8..12, a 3-token prompt in sequence 1, then one batch
of 3 tokens from sequences 0, 1, 2 at positions 13, 3, 0. Tolerances:
  - F32 / F16 weights: the native matmul is exact float arithmetic in another order: rel 1e-4.
  - quantized weights: lk_matmul rounds the activations to 8-bit blocks (Q8_0/Q8_K style), ~0.4% per dot
    product: max |diff| <= 2e-2 * rms(reference) per output, and per-element rel 1e-2 for the K/V.
The K/V an f16 cache receives are checked bit for bit against torch's .to(float16) of the float32 run.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from llamakit.kernels import fused
from llamakit.kernels.fused import FusedBlock
from llamakit.kernels.native.build import NativeBuildError, cpu_variants
from llamakit.model.llama import rope_cos_sin
from llamakit.runtime.loader import load_model

from .conftest import TINY_GGUF

N_CTX, N_SEQ = 32, 3
FILES = {"f32": "convert-f32.gguf", "f16": "convert-f16.gguf", "q4_0": "quantize-Q4_0.gguf",
         "q4_k_m": "quantize-Q4_K_M.gguf"}
EXACT = ("f32", "f16")
# (seq, positions) of each call, in order
STEPS = [(0, list(range(7))), (0, [7]), (0, list(range(8, 13))), (1, [0, 1, 2]), (None, [(0, 13), (1, 3), (2, 0)])]

_models: dict[str, object] = {}


def model(name: str):
    if name not in _models:
        _models[name] = load_model(TINY_GGUF / FILES[name])
    return _models[name]


def library(variant: str) -> ctypes.CDLL:
    try:
        return fused._library(variant)
    except NativeBuildError as e:
        pytest.skip(f"native library: {e}")


def prepare(lib: ctypes.CDLL, gtype: int, w: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    n = lib.lk_prepared_size(gtype, rows, cols)
    assert n > 0, f"type {gtype} unsupported"
    out = torch.empty(n, dtype=torch.uint8)
    lib.lk_prepare.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    assert lib.lk_prepare(gtype, rows, cols, w.contiguous().data_ptr(), out.data_ptr()) == 0
    return out


def block_inputs(lib: ctypes.CDLL, blk) -> tuple[dict, dict]:
    cfg = blk.cfg
    dims = dict(n_embd=cfg.n_embd, n_head=cfg.n_head, n_head_kv=cfg.n_head_kv, head_dim=cfg.head_dim,
                n_ff=cfg.n_ff, n_rot=cfg.n_rot, eps=cfg.norm_eps)
    linears: dict = {}
    for name in fused.LINEARS:
        lin = getattr(blk, name)
        t, rows, cols = int(lin.ggml_type), lin.out_features, lin.in_features
        linears[name] = (t, prepare(lib, t, lin.weight, rows, cols), rows, cols, lin.bias)
    linears["attn_norm"] = blk.attn_norm.weight
    linears["ffn_norm"] = blk.ffn_norm.weight
    return dims, linears


def caches(cfg, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (N_SEQ, cfg.n_head_kv, N_CTX, cfg.head_dim)
    return torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)


def torch_step(blk, x: torch.Tensor, seqs: list[int], poss: list[int], kc, vc, cos, sin) -> torch.Tensor:
    """The reference: runs of consecutive positions of one sequence go through Block.forward together."""
    out, i = [], 0
    while i < len(seqs):
        j = i + 1
        while j < len(seqs) and seqs[j] == seqs[i] and poss[j] == poss[j - 1] + 1:
            j += 1
        s, p0 = seqs[i], poss[i]
        with torch.no_grad():
            out.append(blk(x[i:j], cos[p0:p0 + j - i], sin[p0:p0 + j - i], (kc[s], vc[s]), p0))
        i = j
    return torch.cat(out)


def close(got: torch.Tensor, ref: torch.Tensor, exact: bool, what: str) -> None:
    if exact:
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item(), msg=what)
    else:
        rms = ref.pow(2).mean().sqrt().item()
        err = (got - ref).abs().max().item()
        assert err <= 2e-2 * rms, f"{what}: max |diff| {err:.3g} > 2e-2 * rms {rms:.3g}"


def run_steps(name: str, variant: str, layer: int, dtype: torch.dtype, min_parallel: int = 0
              ) -> tuple[FusedBlock, tuple]:
    lm = model(name).model
    lib = library(variant)
    blk = lm.blk[layer]
    cfg = blk.cfg
    dims, linears = block_inputs(lib, blk)
    kc, vc = caches(cfg, dtype)
    tk, tv = caches(cfg, dtype)
    fb = FusedBlock(dims, linears, kc, vc, variant=variant, min_parallel=min_parallel)
    cos, sin = rope_cos_sin(cfg, torch.arange(N_CTX))
    g = torch.Generator().manual_seed(layer)
    for seq, poss in STEPS:
        if seq is None:
            seqs, poss = [s for s, _ in poss], [p for _, p in poss]
        else:
            seqs = [seq] * len(poss)
        x = torch.randn(len(poss), cfg.n_embd, generator=g)
        ref = torch_step(blk, x, seqs, poss, tk, tv, cos, sin)
        got = x.clone()
        fb(got, torch.tensor(poss, dtype=torch.int32), torch.tensor(seqs, dtype=torch.int32), cos, sin)
        close(got, ref, name in EXACT, f"{name} {variant} layer {layer} {dtype} step seq={seq} pos={poss}")
    return fb, (kc, vc, tk, tv)


@pytest.mark.parametrize("variant", cpu_variants())
@pytest.mark.parametrize("name", list(FILES))
def test_block_matches_torch(name: str, variant: str) -> None:
    for layer, dtype in ((0, torch.float32), (3, torch.float16)):
        fb, (kc, vc, tk, tv) = run_steps(name, variant, layer, dtype)
        used = [(0, 14), (1, 4), (2, 1)]
        for s, n in used:
            for got, ref, what in ((kc, tk, "K"), (vc, tv, "V")):
                g, r = got[s, :, :n].float(), ref[s, :, :n].float()
                if name in EXACT:
                    torch.testing.assert_close(g, r, rtol=2e-4, atol=1e-4 * r.abs().max().item())
                else:
                    close(g, r, False, f"{what} cache seq {s}")
        for got in (kc, vc):  # slots never written stay untouched
            assert got[0, :, 14:].abs().max() == 0 and got[1, :, 4:].abs().max() == 0 and got[2, :, 1:].abs().max() == 0


@pytest.mark.parametrize("variant", cpu_variants())
@pytest.mark.parametrize("name", ["f32", "q4_0"])
def test_block_threaded(name: str, variant: str) -> None:
    """Every phase on the pool (min_parallel=1) with 3 threads: the same results as the torch path."""
    lib = library(variant)
    lib.lk_set_threads.argtypes = [ctypes.c_int]
    before = lib.lk_get_threads()
    lib.lk_set_threads(3)
    try:
        assert lib.lk_get_threads() == 3
        run_steps(name, variant, 2, torch.float16, min_parallel=1)
    finally:
        lib.lk_set_threads(before)


@pytest.mark.parametrize("variant", cpu_variants())
def test_f16_cache_is_rounded_float32_cache(variant: str) -> None:
    """Same inputs into an f32-cache block and an f16-cache block: the first call's K/V (written before any
    attention reads the cache) must be exactly torch's round-to-nearest-even of the f32 ones."""
    lm = model("f16").model
    lib = library(variant)
    blk = lm.blk[1]
    cfg = blk.cfg
    dims, linears = block_inputs(lib, blk)
    c32, c16 = caches(cfg, torch.float32), caches(cfg, torch.float16)
    b32 = FusedBlock(dims, linears, *c32, variant=variant)
    b16 = FusedBlock(dims, linears, *c16, variant=variant)
    cos, sin = rope_cos_sin(cfg, torch.arange(N_CTX))
    # values spread over the half range: large ones, subnormal ones, ties
    x = torch.randn(9, cfg.n_embd, generator=torch.Generator().manual_seed(5)) * 40
    pos = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8], dtype=torch.int32)
    seq = torch.zeros(9, dtype=torch.int32)
    b32(x.clone(), pos, seq, cos, sin)
    b16(x.clone(), pos, seq, cos, sin)
    for a, b in zip(c32, c16):
        assert torch.equal(a.half().view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("variant", cpu_variants())
def test_half_conversion_is_torchs(variant: str) -> None:
    lib = library(variant)
    lib.lk_f32_to_f16.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.lk_f16_to_f32.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    bits = torch.arange(-2**31, 2**31 - 1, 4099, dtype=torch.int64).to(torch.int32)
    special = torch.tensor([65504.0, 65519.99, 65520.0, 65536.0, 6.1035156e-05, 5.96e-08, 2.98e-08, 2.9802322e-08,
                            1e-10, 0.0, -0.0, float("inf"), -float("inf")])
    x = torch.cat([bits.view(torch.float32), special])
    x = x[~x.isnan()]
    h = torch.empty(x.numel(), dtype=torch.float16)
    lib.lk_f32_to_f16(x.numel(), x.data_ptr(), h.data_ptr())
    assert torch.equal(h.view(torch.int16), x.half().view(torch.int16))
    allh = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    allh = allh[~allh.isnan()]
    back = torch.empty(allh.numel(), dtype=torch.float32)
    lib.lk_f16_to_f32(allh.numel(), allh.data_ptr(), back.data_ptr())
    assert torch.equal(back, allh.float())


def test_bad_positions_are_refused() -> None:
    lm = model("f32").model
    variant = cpu_variants()[0]
    lib = library(variant)
    blk = lm.blk[0]
    dims, linears = block_inputs(lib, blk)
    kc, vc = caches(blk.cfg, torch.float32)
    fb = FusedBlock(dims, linears, kc, vc, variant=variant)
    cos, sin = rope_cos_sin(blk.cfg, torch.arange(N_CTX))
    x = torch.randn(1, blk.cfg.n_embd)
    for pos, seq in (([N_CTX], [0]), ([-1], [0]), ([0], [N_SEQ])):
        with pytest.raises(Exception, match="outside"):
            fb(x, torch.tensor(pos, dtype=torch.int32), torch.tensor(seq, dtype=torch.int32), cos, sin)
    assert kc.abs().max() == 0


@pytest.mark.parametrize("name", list(FILES))
def test_full_model_logits(name: str) -> None:
    """All 4 blocks fused (best variant, f16 cache) vs the torch model on a 12-token prompt then 4 decoded
    tokens: the same argmax at every position where torch's top-2 margin exceeds the error bound, and
    logits within rel 1e-3 (float weights) / 3e-2 of their rms (quantized)."""
    lm = model(name).model
    cfg = lm.cfg
    variant = cpu_variants()[0]
    lib = library(variant)
    n_ctx = 24
    kv_ref = [(torch.zeros(cfg.n_head_kv, n_ctx, cfg.head_dim, dtype=torch.float16),
               torch.zeros(cfg.n_head_kv, n_ctx, cfg.head_dim, dtype=torch.float16)) for _ in lm.blk]
    blocks = []
    for blk in lm.blk:
        dims, linears = block_inputs(lib, blk)
        kc = torch.zeros(1, cfg.n_head_kv, n_ctx, cfg.head_dim, dtype=torch.float16)
        blocks.append(FusedBlock(dims, linears, kc, torch.zeros_like(kc), variant=variant, max_tokens=12))
    cos, sin = rope_cos_sin(cfg, torch.arange(n_ctx))
    tokens = torch.tensor([1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889]) % cfg.n_vocab
    bound = 1e-3 if name in EXACT else 3e-2
    start, agree, checked = 0, 0, 0
    for step in range(5):
        with torch.no_grad():
            ref = lm(tokens, start, kv_ref, logits="all")
            h = lm.token_embd(tokens).contiguous()
            pos = torch.arange(start, start + len(tokens), dtype=torch.int32)
            for fb in blocks:
                fb(h, pos, torch.zeros_like(pos), cos, sin)
            got = lm.output(lm.output_norm(h))
        rms = ref.pow(2).mean().sqrt().item()
        assert (got - ref).abs().max().item() <= bound * rms, f"step {step}"
        top2 = ref.topk(2, dim=-1).values
        sure = (top2[:, 0] - top2[:, 1]) > 2 * bound * rms
        agree += int((got.argmax(-1) == ref.argmax(-1))[sure].sum())
        checked += int(sure.sum())
        start += len(tokens)
        tokens = ref[-1:].argmax(-1)
    assert checked >= 8 and agree == checked
