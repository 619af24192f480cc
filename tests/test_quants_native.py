"""The native quantizers (library "lkq", llamakit/kernels/native/q_*.c) against the torch codecs, byte for
byte, for every type they cover and every variant this CPU runs (each forced by name): seeded random
blocks, hand-made edge blocks and hypothesis-drawn blocks, from F32, F16 and BF16 sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from llamakit.gguf.constants import GGML_BLOCK, GGMLType
from llamakit.kernels.native.build import NativeBuildError, cpu_variants
from llamakit.kernels.quantizers import TYPES, load_quantizer
from llamakit.quants import get_codec

try:
    load_quantizer()
except NativeBuildError as e:  # no compiler here: the torch codecs do the work and are tested elsewhere
    pytest.skip(f"native quantizers unavailable: {e}", allow_module_level=True)

VARIANTS = cpu_variants()
ALL = sorted(TYPES, key=int)
K_QUANTS = {GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K}


def _ref(t: GGMLType, x: np.ndarray) -> np.ndarray:
    return get_codec(t).quantize(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _same(t: GGMLType, x: np.ndarray, variants: list[str] = VARIANTS) -> None:
    """Every variant's bytes equal the torch codec's (computed once)."""
    want = _ref(t, x)
    for variant in variants:
        _check(t, x, variant, load_quantizer(variant).quantize_f32(t, x), want)


def _check(t: GGMLType, x: np.ndarray, variant: str, got: np.ndarray, want: np.ndarray) -> None:
    if not np.array_equal(got, want):
        row = int(np.nonzero((got != want).any(axis=-1))[0][0])
        blk = GGML_BLOCK[t]
        byte = int(np.nonzero(got[row] != want[row])[0][0])
        raise AssertionError(f"{variant} {t.name}: row {row}, block {byte // blk.type_size} (byte {byte}) differs: "
                             f"x = {x[row, byte // blk.type_size * blk.block_size:][:blk.block_size].tolist()}")


def _edge_rows(width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    base = (rng.standard_normal((4, width)) * 0.02).astype(np.float32)
    zeros = np.zeros((3, width), np.float32)
    zeros[1, ::3] = -0.0  # the sign of zeros decides some f16 bytes (Q4_0's d = -0.0 / -8)
    outlier = base.copy()
    outlier[:, 5] = 7.5
    outlier[2, width // 2] = -90.0
    tie = base.copy()
    tie[:, 3], tie[:, 9] = 0.5, -0.5  # +a and -a in one block: the first one decides
    subnormal = (rng.standard_normal((3, width)) * 1e-39).astype(np.float32)
    subnormal[1] *= 1e-5  # a few denormal units: scales overflow to inf
    tiny = (rng.standard_normal((2, width)) * 1e-16).astype(np.float32)  # below GROUP_MAX_EPS
    huge = (rng.standard_normal((3, width)) * 3e4).astype(np.float32)  # f16-range magnitudes
    grid = (np.round(rng.standard_normal((3, width)) * 6) / 4).astype(np.float32)  # exact halves: rounding ties
    flat = np.full((2, width), -0.25, np.float32)
    flat[1] = 3.0
    # |x| >= 2^64 (F32/BF16 only): x*x overflows, sums and scales are inf/NaN; C never picks a NaN as the max
    overflow = (rng.standard_normal((3, width)) * np.array([[1e13], [1e20], [1e36]])).astype(np.float32)
    overflow[0, 1::2] *= 1e-12  # big and small weights in one block
    return {"random": base, "zeros": zeros, "outlier": outlier, "tie": tie, "subnormal": subnormal, "tiny": tiny,
            "huge": huge, "grid": grid, "flat": flat, "overflow": overflow}


def test_variants() -> None:
    assert VARIANTS[-1] == "scalar" and all(load_quantizer(v).variant == v for v in VARIANTS)


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_random_rows(t: GGMLType) -> None:
    rng = np.random.default_rng(int(t))
    x = (rng.standard_normal((24, 1024)) * rng.uniform(0.001, 0.1, (24, 1))).astype(np.float32)
    x[::7] += 0.05  # blocks with a positive minimum (the asymmetric searches clamp it to 0)
    _same(t, x)


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_edge_blocks(t: GGMLType) -> None:
    # K-quants need rows of 256; the 32-weight formats also get rows that are not a multiple of 256
    for width in (256, 512) if t in K_QUANTS else (96, 256, 544):
        for name, x in _edge_rows(width).items():
            try:
                _same(t, x)
            except AssertionError as e:
                raise AssertionError(f"{name} rows of {width}: {e}") from None


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_odd_super_block_count(t: GGMLType) -> None:
    """Q4_K/Q5_K search two super-blocks at once and IQ4_NL sixteen blocks: a tail is searched beside zeros."""
    blk = GGML_BLOCK[t].block_size
    rng = np.random.default_rng(3)
    for n_blocks in (1, 3, 17):
        _same(t, (rng.standard_normal((1, blk * n_blocks)) * 0.03).astype(np.float32))


def test_iq4_nl_grid_equals_the_bisection() -> None:
    """IQ4_NL's level (ggml's best_index_int8: the nearest grid value, ties up) as the native search and final
    levels compute it (the AVX-512 path through a bucket table), against the literal bisection of the torch codec:
    every float within 40 ulps of each midpoint (k[i] + k[i+1])/2 and of each AVX-512 bucket edge
    (k - 11.8)/0.0875, a sweep in steps of 1/64, the ends, huge values, signed zeros, subnormals, NaN (level 15)."""
    from llamakit.quants.iq4nl import KVALUES, best_index

    mids = [(a + b) / 2 for a, b in zip(KVALUES, KVALUES[1:])]
    edges = [(k - np.float32(11.8)) / np.float32(0.0875) for k in range(33)]
    around = []
    for c in np.float32(mids + edges + [0.0, -127.0, 113.0, 127.0, -134.0, 134.0]):
        up, down = [c], [c]
        for _ in range(40):
            up.append(np.nextafter(up[-1], np.float32(np.inf)))
            down.append(np.nextafter(down[-1], np.float32(-np.inf)))
        around += up + down
    v = np.concatenate([np.float32(around), np.arange(-140 * 64, 140 * 64, dtype=np.float32) / 64,
                        np.float32([-0.0, 1e-45, -1e-45, 1e-39, -1e30, 1e30, -np.inf, np.inf, np.nan])])
    grid = torch.tensor(KVALUES, dtype=torch.float32)
    finite = np.isfinite(v)
    want = np.full(v.size, 15, np.int64)  # NaN: 15, as C's bisection (best_index's searchsorted orders NaN last)
    want[finite | np.isinf(v)] = best_index(torch.from_numpy(v[finite | np.isinf(v)]), grid).numpy()
    search = np.abs(v) < 134.001
    for variant in VARIANTS:
        level, value = load_quantizer(variant).iq4_nl_levels(v)
        bad = np.nonzero(level != want)[0]
        assert bad.size == 0, f"{variant}: level of {v[bad[:5]].tolist()} is {level[bad[:5]].tolist()}"
        bad = np.nonzero(search & (value != np.float32(KVALUES)[want]))[0]
        assert bad.size == 0, f"{variant}: grid value of {v[bad[:5]].tolist()} is {value[bad[:5]].tolist()}"


def test_iq4_nl_overflowing_block_is_ggml_s() -> None:
    """x*x = inf: every candidate's sums are NaN, so d is NaN (f16 0xfe00) and, as in ggml's best_index_int8
    (whose compares are all false for a NaN), every level is 15 (bytes checked against ggml_quantize_chunk of
    llama.cpp's libggml-base)."""
    x = np.full((1, 32), 1e20, np.float32)
    x[0, 1], x[0, 5] = -3e20, 0.0
    want = np.array([[0x00, 0xFE] + [0xFF] * 16], np.uint8)
    assert np.array_equal(_ref(GGMLType.IQ4_NL, x), want)
    _same(GGMLType.IQ4_NL, x)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.sampled_from(ALL), scale=st.sampled_from([1e-30, 1e-3, 1.0, 100.0]),
       x=arrays(np.float32, (2, 256), elements=st.floats(-1, 1, width=32)))
def test_hypothesis_blocks(t: GGMLType, scale: float, x: np.ndarray) -> None:
    _same(t, (x * np.float32(scale)).astype(np.float32), VARIANTS[:1])


@pytest.mark.parametrize("src", [GGMLType.F16, GGMLType.BF16, GGMLType.F32], ids=lambda t: t.name)
@pytest.mark.parametrize("t", [GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K], ids=lambda t: t.name)
def test_sources_widen_exactly(t: GGMLType, src: GGMLType) -> None:
    """F16/BF16 bytes quantized natively = the torch codec on the exactly widened float32 weights."""
    rng = np.random.default_rng(5)
    x32 = (rng.standard_normal((8, 4096 + 512)) * 0.02).astype(np.float32)  # crosses the C side's 4096 pieces
    x32[0, :64] = np.float32(6e-8)  # f16 subnormals
    xt = torch.from_numpy(x32).to({GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16,
                                   GGMLType.F32: torch.float32}[src])
    raw = xt.contiguous().view(torch.uint8).numpy()
    out = np.empty((8, (4096 + 512) // GGML_BLOCK[t].block_size * GGML_BLOCK[t].type_size), np.uint8)
    for variant in VARIANTS:
        assert load_quantizer(variant).quantize(t, src, raw, out) == -1
        assert np.array_equal(out, _ref(t, xt.float().numpy())), variant


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_first_non_finite_is_reported(bad: float) -> None:
    x = np.zeros((3, 8192), np.float32)
    x[2, 5000] = bad
    x[2, 7000] = np.nan
    out = np.empty((3, 8192 // 32 * 18), np.uint8)
    for variant in VARIANTS:
        assert load_quantizer(variant).quantize(GGMLType.Q4_0, GGMLType.F32, x, out) == 2 * 8192 + 5000


def test_refuses_partial_blocks_and_unknown_types() -> None:
    q = load_quantizer()
    with pytest.raises(ValueError, match="whole Q4_K blocks"):
        q.quantize(GGMLType.Q4_K, GGMLType.F32, np.zeros(300, np.float32), np.empty(144, np.uint8))
    with pytest.raises(ValueError, match="no native"):
        q.quantize(GGMLType.Q8_K, GGMLType.F32, np.zeros(256, np.float32), np.empty(292, np.uint8))
    assert not q.supports(GGMLType.Q4_0, GGMLType.Q8_0)  # quantized sources go through the torch codecs
