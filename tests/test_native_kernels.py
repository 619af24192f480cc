"""The native kernels (llamakit/kernels/native) against the torch codecs, for every format and every variant
this CPU runs (each forced with variant=).

Tolerances (see kernel.py): float formats compute float32 dot products: within 1e-5 of the float64 product
relative to sum |w||x|. Quantized formats quantize x to 8 bits first: against dequant(W) @ dequant(q8(x))
(q8(x) = the library's own activation records, checked separately to be llama.cpp's rounding) they match
within 1e-5 of sum (|w| + |z|) |q8(x)|, z the block's zero point (the -dmin*m / +m term, whose product is
summed separately); against the exact W @ x they are within the rounding bound sum |w| amax(block)/254.
get_rows is bit-exact.
"""

from __future__ import annotations

import pytest
import torch

from llamakit.errors import LlamakitError, UnsupportedError
from llamakit.gguf.constants import GGML_BLOCK, GGMLType
from llamakit.kernels.native import NativeKernel, build, load_library
from llamakit.quants import get_codec
from llamakit.quants.base import nearest_int

T = GGMLType
VARIANTS = ["avx512", "avx2", "scalar"]
LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL]
KQUANTS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
FLOATS = [T.F32, T.F16, T.BF16]
FORMATS = LEGACY + KQUANTS + FLOATS
# byte ranges of a block's f16 fields (d, m, dmin): random blocks get finite values there
F16_FIELDS = {T.Q4_0: (0, 2), T.Q4_1: (0, 4), T.Q5_0: (0, 2), T.Q5_1: (0, 4), T.Q8_0: (0, 2), T.IQ4_NL: (0, 2),
              T.Q2_K: (80, 84), T.Q3_K: (108, 110), T.Q4_K: (0, 4), T.Q5_K: (0, 4), T.Q6_K: (208, 210)}
# byte ranges holding the quants: zeroed, a block dequantizes to its zero point z
QUANT_FIELDS = {T.Q4_1: (4, 20), T.Q5_1: (4, 24), T.Q2_K: (16, 80), T.Q4_K: (16, 144), T.Q5_K: (16, 176)}


def kernel(t: GGMLType, variant: str) -> NativeKernel:
    if variant not in build.cpu_variants():
        pytest.skip(f"this CPU cannot run the {variant} variant (it runs {build.cpu_variants()})")
    return NativeKernel(t, variant=variant)


def random_blocks(t: GGMLType, rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """Arbitrary bytes for the quant fields, finite f16 scales (some subnormal, some zero)."""
    bs, ts = GGML_BLOCK[t]
    nb = rows * cols // bs
    b = torch.randint(0, 256, (nb, ts), dtype=torch.uint8, generator=gen)
    lo, hi = F16_FIELDS[t]
    scales = (torch.randn(nb, (hi - lo) // 2, generator=gen) * 0.05).half()
    sub = torch.randint(1, 1024, scales.shape, generator=gen, dtype=torch.int16).view(torch.float16)
    pick = torch.rand(scales.shape, generator=gen)
    scales = torch.where(pick < 0.1, sub, torch.where(pick < 0.15, torch.zeros_like(scales), scales))
    b[:, lo:hi] = scales.contiguous().view(torch.uint8)
    return b.reshape(rows, -1)


def weights(t: GGMLType, rows: int, cols: int, gen: torch.Generator, kind: str) -> torch.Tensor:
    """File bytes (rows, row_bytes) of a test weight: quantized gaussian (with an outlier), zeros or random."""
    codec = get_codec(t)
    if kind == "random" and t not in FLOATS:
        return random_blocks(t, rows, cols, gen)
    w = torch.randn(rows, cols, generator=gen)
    if kind == "zeros":
        w[:, : min(cols, 64)] = 0.0
        w[rows // 2] = 0.0
    if kind == "outlier":
        w[0, 3] = 40.0
    if t == T.IQ4_NL:  # llamakit's IQ4_NL quantizer is correct but slow-ish; random blocks are as good
        return random_blocks(t, rows, cols, gen)
    return codec.quantize(w)


def activation_dequant(k: NativeKernel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The library's q8(x) records -> (dequantized x, |d| per element) in float64."""
    rec = k.quantize_act(x)
    n, cols = x.shape
    bs = 256 if k.ggml_type in KQUANTS else 32
    head = 8 + 32 if bs == 256 else 16
    rec = rec.view(n, cols // bs, head + bs)
    d = rec[:, :, :4].contiguous().view(torch.float32).double()  # (n, nb, 1)
    q = rec[:, :, head:].contiguous().view(torch.int8).double()
    return (q * d).reshape(n, cols), d.abs().expand(n, cols // bs, bs).reshape(n, cols)


def zero_points(t: GGMLType, wb: torch.Tensor) -> torch.Tensor:
    if t not in QUANT_FIELDS:
        return torch.zeros(1, dtype=torch.float64)
    lo, hi = QUANT_FIELDS[t]
    z = wb.reshape(-1, GGML_BLOCK[t].type_size).clone()
    z[:, lo:hi] = 0
    return get_codec(t).dequantize(z.reshape(wb.shape)).double()


SHAPES_32 = [(1, 576), (7, 1056), (16, 576), (33, 1056)]
SHAPES_256 = [(1, 256), (7, 768), (16, 512), (33, 1280)]
SHAPES_F = [(1, 37), (7, 576), (17, 1056), (32, 64)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("t", FORMATS, ids=lambda t: t.name)
def test_linear_and_rows_match_the_codec(t: GGMLType, variant: str) -> None:
    k = kernel(t, variant)
    codec = get_codec(t)
    gen = torch.Generator().manual_seed(int(t) * 7 + len(variant))
    shapes = SHAPES_F if t in FLOATS else SHAPES_256 if t in KQUANTS else SHAPES_32
    for (rows, cols), kind in zip(shapes, ["gauss", "outlier", "zeros", "random"]):
        wb = weights(t, rows, cols, gen, kind)
        wd = codec.dequantize(wb).double()
        wp = k.prepare(wb)
        ids = torch.randint(0, rows, (9,), generator=gen)
        assert torch.equal(k.rows(wp, ids, cols), wd[ids].float()), (rows, cols, kind)
        for n in (1, 3, 16, 100):
            x = torch.randn(n, cols, generator=gen)
            x[0, 1] = 25.0  # an activation outlier
            if n > 2:
                x[2] = 0.0
            y = k.linear(x, wp, cols)
            assert y.shape == (n, rows) and y.dtype == torch.float32
            exact = x.double() @ wd.T
            if t in FLOATS:
                mag = x.double().abs() @ wd.abs().T
                assert ((y.double() - exact).abs() <= 1e-5 * mag + 1e-30).all(), (rows, cols, n, kind)
                continue
            xq, dx = activation_dequant(k, x)
            ref = xq @ wd.T
            mag = xq.abs() @ (wd.abs() + zero_points(t, wb).abs()).T
            assert ((y.double() - ref).abs() <= 1e-5 * mag + 1e-30).all(), (rows, cols, n, kind)
            bound = (dx / 2) @ wd.abs().T  # each x_j moved by at most d_x / 2 = amax / 254
            assert ((y.double() - exact).abs() <= bound * (1 + 1e-6) + 1e-5 * mag + 1e-30).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_activations_are_llama_cpp_q8_0_rounding(variant: str) -> None:
    k = kernel(T.Q4_0, variant)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 1056, generator=gen) * torch.logspace(-30, 3, 1056)[None, :]
    x[1, :32] = 0.0
    x[2, 40] = 1e4
    x[3, 64:96] = torch.tensor([127.0] + [k + 0.5 for k in range(-15, 16)])  # d = 1: halfway cases, away from 0
    rec = k.quantize_act(x).view(5, 33, 48)
    ref = get_codec(T.Q8_0).quantize(x).view(5, 33, 34)
    d = ref[:, :, :2].contiguous().view(torch.float16).float()
    qs = ref[:, :, 2:]
    assert torch.equal(rec[:, :, 16:], qs)
    assert torch.equal(rec[:, :, :4].contiguous().view(torch.float32), d)
    s = qs.view(torch.int8).sum(dim=2, keepdim=True, dtype=torch.int32)
    assert torch.equal(rec[:, :, 8:12].contiguous().view(torch.int32), s)


def q8_k_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_row_q8_K_ref in torch: (d (nb, 1), qs (nb, 256) int8, bsums (nb, 16) int16)."""
    xb = x.reshape(-1, 256)
    idx = xb.abs().argmax(dim=1, keepdim=True)  # the first of the largest |x|
    mx = xb.gather(1, idx)
    zero = mx == 0
    iscale = torch.div(torch.full_like(mx, -127.0), torch.where(zero, torch.ones_like(mx), mx))
    q = nearest_int(iscale * xb).clamp(max=127)
    q = torch.where(zero, torch.zeros_like(q), q)
    d = torch.where(zero, torch.zeros_like(mx), torch.div(torch.ones_like(iscale), iscale))
    return d, q.to(torch.int8), q.reshape(-1, 16, 16).sum(dim=2).to(torch.int16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_activations_are_llama_cpp_q8_k_rounding(variant: str) -> None:
    k = kernel(T.Q4_K, variant)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 1024, generator=gen) * torch.logspace(-20, 2, 1024)[None, :]
    x[1, :256] = 0.0
    x[2, 300] = -50.0
    x[2, 301] = 50.0  # a tie of |x|: the first one sets the sign of d
    rec = k.quantize_act(x).view(3, 4, 296)
    d, qs, bsums = q8_k_reference(x)
    assert torch.equal(rec[:, :, :4].contiguous().view(torch.float32).reshape(-1, 1), d)
    assert torch.equal(rec[:, :, 40:].contiguous().view(torch.int8).reshape(-1, 256), qs)
    assert torch.equal(rec[:, :, 8:40].contiguous().view(torch.int16).reshape(-1, 16), bsums)


@pytest.mark.parametrize("t", FORMATS, ids=lambda t: t.name)
def test_prepare_is_deterministic_and_about_the_file_size(t: GGMLType) -> None:
    k = kernel(t, build.cpu_variants()[0])
    cols = 768 if t in KQUANTS else 576
    gen = torch.Generator().manual_seed(5)
    wb = weights(t, 48, cols, gen, "gauss")
    a, b = k.prepare(wb), k.prepare(wb.clone())
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape[0] == 48
    extra = {T.Q3_K: 4, T.Q4_K: 4, T.Q5_K: 4}.get(t, 0)  # unpacked 6-bit scales: 4 more bytes per super-block
    assert a.numel() == wb.numel() + extra * 48 * cols // 256
    # a partial last group is padded with zero rows: 16 * row_bytes at most
    assert k.prepare(wb[:35]).numel() - wb[:35].numel() <= 13 * wb.shape[1] + 35 + extra * 48 * cols // 256


@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_K, T.Q6_K, T.F16], ids=lambda t: t.name)
def test_threads_give_identical_results(t: GGMLType) -> None:
    k = kernel(t, build.cpu_variants()[0])
    gen = torch.Generator().manual_seed(6)
    wb = weights(t, 200, 512, gen, "gauss")
    wp = k.prepare(wb)
    ys = []
    for threads in (1, 2, 3):
        assert k.set_threads(threads) == threads
        ys.append([k.linear(torch.randn(n, 512, generator=torch.Generator().manual_seed(n)), wp, 512)
                   for n in (1, 7, 130)])
    k.set_threads(1)
    for other in ys[1:]:
        assert all(torch.equal(a, b) for a, b in zip(ys[0], other))


def test_out_argument_and_row_stride() -> None:
    k = kernel(T.Q8_0, build.cpu_variants()[0])
    wb = weights(T.Q8_0, 20, 64, torch.Generator().manual_seed(7), "gauss")
    wp = k.prepare(wb)
    x = torch.randn(4, 64)
    buf = torch.full((4, 30), -1.0)
    out = k.linear(x, wp, 64, out=buf[:, 5:25])
    assert out.data_ptr() == buf[:, 5:25].data_ptr()
    assert torch.equal(buf[:, 5:25], k.linear(x, wp, 64))
    assert (buf[:, :5] == -1).all() and (buf[:, 25:] == -1).all()
    with pytest.raises(ValueError):
        k.linear(x, wp, 64, out=torch.empty(4, 21))
    with pytest.raises(IndexError):
        k.rows(wp, torch.tensor([20]), 64)


def test_unsupported_type_and_supports() -> None:
    k = kernel(T.Q4_0, build.cpu_variants()[0])
    assert k.supports(T.Q4_0) and k.supports(T.F16) and not k.supports(T.Q8_K) and not k.supports(T.IQ2_XXS)
    with pytest.raises(UnsupportedError, match="IQ2_XXS"):
        NativeKernel(T.IQ2_XXS)


def test_build_failure_raises_native_build_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(build, "_compiler", lambda: "/bin/false")
    monkeypatch.setattr(build, "cache_dir", lambda: tmp_path)
    with pytest.raises(build.NativeBuildError) as e:
        load_library("scalar")
    assert isinstance(e.value, LlamakitError) and "failed" in str(e.value)


def test_missing_compiler_raises_native_build_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(build.NativeBuildError, match="no C compiler"):
        load_library("scalar")
