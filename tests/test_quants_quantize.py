"""Quantizers of every block format: known blocks, the gguf package's bit-exact numpy quantizers (legacy
formats), llama.cpp's own files (every K-quant tensor of the reference model), quality floors, edge blocks.

The whole-file comparison with llama-quantize's output lives in test_quantize_reference.py.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from llamakit.gguf import GGMLType, GGUFReader
from llamakit.quants import as_tensor, get_codec
from llamakit.quants.base import nearest_int
from llamakit.quants.iq4nl import KVALUES, _level_table, best_index, nearest_level
from llamakit.quants.search import seq_sum

from .conftest import TINY_GGUF

gguf = pytest.importorskip("gguf")

T = GGMLType


@pytest.fixture(autouse=True)
def one_torch_thread():  # type: ignore[no-untyped-def]
    """The scale searches run thousands of small ops; OpenMP's barriers make them crawl on a busy 2-core
    machine. quantize.py runs them on one intra-op thread per worker, and so do these tests."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _name(t: GGMLType) -> str:
    return t.name


BLOCK_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL]
K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


def _roundtrip(t: GGMLType, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = get_codec(t)
    q = c.quantize(x)
    assert q.dtype == torch.uint8 and q.shape == (*x.shape[:-1], x.shape[-1] // c.block_size * c.type_size)
    return q, c.dequantize(q)


# -- hand-built blocks ---------------------------------------------------------------------------

def test_q4_0_known_block() -> None:
    # max |x| is -8 (first), so d = -8/-8 = 1 and q = trunc(x/1 + 8.5) clamped to 15
    x = torch.tensor([-8.0, 7.0, 0.0, 0.5, 1.49, -0.5] + [0.0] * 26)
    q, y = _roundtrip(T.Q4_0, x)
    assert struct.unpack("<e", bytes(q[:2].tolist()))[0] == 1.0
    nib = [int(b) & 15 for b in q[2:]] + [int(b) >> 4 for b in q[2:]]
    assert nib[:6] == [0, 15, 8, 9, 9, 8]  # 0.5 + 8.5 = 9 (half up), -0.5 + 8.5 = 8
    assert y[:6].tolist() == [-8.0, 7.0, 0.0, 1.0, 1.0, 0.0]


def test_q8_0_rounds_half_away_from_zero() -> None:
    x = torch.tensor([127.0, 0.5, -0.5, 1.5, -2.5] + [0.0] * 27)
    q, _ = _roundtrip(T.Q8_0, x)
    assert q[2:7].view(torch.int8).tolist() == [127, 1, -1, 2, -3]


def test_q6_k_uses_the_sign_of_the_largest_scale() -> None:
    x = torch.zeros(256)
    x[0] = -3.0
    x[17] = 2.0  # another sub-block, smaller magnitude
    q, y = _roundtrip(T.Q6_K, x)
    d = struct.unpack("<e", bytes(q[208:210].tolist()))[0]
    scales = q[192:208].view(torch.int8)
    assert d * scales[0].item() * (q[0].item() & 15 | ((q[128].item() & 3) << 4)) - 32 * d * scales[0].item() == -3.0
    assert scales[0].item() == -128  # iscale = -128/max_scale
    assert torch.allclose(y, x, atol=2e-2)


def test_nearest_int_is_ggml_bit_trick() -> None:
    x = torch.tensor([0.5, 1.5, -0.5, -1.5, 2.5, 4194303.0, float("nan"), float("inf"), 1e10])
    assert nearest_int(x).tolist() == [0, 2, 0, -2, 2, 4194303, 0, -4194304, -2804999]


def test_seq_sum_is_sequential_float32() -> None:
    t = torch.tensor([[1e8], [1.0], [-1e8], [1.0]], dtype=torch.float32)
    assert seq_sum(t).item() == 1.0  # ((1e8 + 1) - 1e8) + 1 in float32; pairwise would give 0 or 2
    assert str(seq_sum(torch.tensor([[-0.0], [-0.0]]))[0].item()) == "0.0"  # C starts from +0.0f
    assert str(seq_sum(torch.tensor([[-0.0], [-0.0]]), first=True)[0].item()) == "-0.0"


def test_iq4_nl_level_table_equals_the_bisection() -> None:
    grid = torch.tensor(KVALUES, dtype=torch.float32)
    index, _ = _level_table(torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    mids = torch.tensor([(a + b) / 2 for a, b in zip(KVALUES, KVALUES[1:])])
    v = torch.cat([torch.randn(200_000, generator=g) * 70, torch.arange(-1200, 1200) / 8.0, mids,
                   mids.nextafter(torch.full_like(mids, 1e9)), mids.nextafter(torch.full_like(mids, -1e9)),
                   torch.tensor([-1e6, 1e6, -127.0, 113.0, 0.0, -0.0])])
    assert torch.equal(nearest_level(v, index).long(), best_index(v, grid))


# -- independent oracles -------------------------------------------------------------------------

def _cases(n: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {
        "normal": rng.standard_normal((16, n)),
        "tails": rng.standard_normal((16, n)) ** 3,
        "zeros": np.zeros((2, n)),
        "all equal": np.full((2, n), 0.37),
        "negative only": -np.abs(rng.standard_normal((4, n))),
        "f16 grid": rng.standard_normal((8, n)).astype(np.float16).astype(np.float64) * 0.02,
        "integers": rng.integers(-8, 8, (4, n)).astype(np.float64),
    }
    o = rng.standard_normal((4, n)) * 0.01
    o[:, 5] = 1000.0
    out["outlier"] = o
    return {k: v.astype(np.float32) for k, v in out.items()}


@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], ids=_name)
def test_legacy_quantize_equals_gguf_package(t: GGMLType) -> None:
    qt = gguf.GGMLQuantizationType(int(t))
    for name, x in _cases().items():
        ref = gguf.quants.quantize(x, qt)
        got = get_codec(t).quantize(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(got, ref, err_msg=f"{t.name} {name}")


@pytest.mark.parametrize("t", K_TYPES, ids=_name)
def test_k_quants_equal_llama_cpp_on_the_reference_model(t: GGMLType) -> None:
    """Every tensor of type t in llama-quantize's outputs, requantized here from convert-f16.gguf."""
    names = {T.Q2_K: ["Q2_K"], T.Q3_K: ["Q3_K_S"], T.Q4_K: ["Q4_K_S"], T.Q5_K: ["Q5_K_S"], T.Q6_K: ["Q6_K"]}[t]
    n = 0
    with GGUFReader(TINY_GGUF / "convert-f16.gguf") as src:
        for name in names:
            with GGUFReader(TINY_GGUF / f"quantize-{name}.gguf") as ref:
                for ti in ref.tensors:
                    if ti.ggml_type != t:
                        continue
                    s = src.tensor(ti.name)
                    x = get_codec(s.ggml_type).dequantize(as_tensor(src.tensor_data(s)).reshape(*s.shape[:-1], -1))
                    want = as_tensor(ref.tensor_data(ti)).reshape(*ti.shape[:-1], -1)
                    assert torch.equal(get_codec(t).quantize(x), want), ti.name
                    n += 1
    assert n >= 4


# -- quality floors ------------------------------------------------------------------------------

SNR_FLOOR_DB = {T.Q4_0: 20.5, T.Q4_1: 21.5, T.Q5_0: 26.5, T.Q5_1: 27.5, T.Q8_0: 44.5, T.Q2_K: 10.0,
                T.Q3_K: 16.0, T.Q4_K: 22.5, T.Q5_K: 28.3, T.Q6_K: 34.5, T.IQ4_NL: 22.0, T.F16: 73.0, T.BF16: 55.0}


@pytest.mark.parametrize("t", list(SNR_FLOOR_DB), ids=_name)
def test_snr_floor(t: GGMLType) -> None:
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0))
    _, y = _roundtrip(t, x)
    snr = 10 * torch.log10((x ** 2).sum() / ((x - y) ** 2).sum()).item()
    assert snr >= SNR_FLOOR_DB[t], f"{t.name}: {snr:.2f} dB"


def test_more_bits_means_less_error() -> None:
    x = torch.randn(32, 1024, generator=torch.Generator().manual_seed(2))
    err = {t: ((x - _roundtrip(t, x)[1]) ** 2).mean().item() for t in K_TYPES}
    assert err[T.Q2_K] > err[T.Q3_K] > err[T.Q4_K] > err[T.Q5_K] > err[T.Q6_K]


# -- edge blocks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("t", BLOCK_TYPES, ids=_name)
def test_all_zero_blocks(t: GGMLType) -> None:
    x = torch.zeros(2, 256)
    x[1, ::3] = -0.0
    _, y = _roundtrip(t, x)
    assert not y.abs().any()


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=_name)
@pytest.mark.parametrize("value", [0.37, -0.37, 1e4])
def test_all_equal_blocks(t: GGMLType, value: float) -> None:
    x = torch.full((2, 256), value)
    _, y = _roundtrip(t, x)
    rel = {T.Q2_K: 0.1, T.Q3_K: 0.1}.get(t, 0.02)
    assert torch.allclose(y, x, rtol=rel), (t.name, y[0, :4])


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=_name)
def test_one_huge_outlier_survives(t: GGMLType) -> None:
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(3)) * 0.01
    x[:, 7] = 1000.0
    _, y = _roundtrip(t, x)
    assert torch.allclose(y[:, 7], x[:, 7], rtol=0.07)
    assert y.isfinite().all()


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=_name)
def test_negative_only_blocks(t: GGMLType) -> None:
    x = -torch.rand(8, 256, generator=torch.Generator().manual_seed(4)) - 0.5
    _, y = _roundtrip(t, x)
    assert (y <= 0).all()
    assert ((x - y).abs().max() / x.abs().max()).item() < 0.35


@pytest.mark.parametrize("t", BLOCK_TYPES + [T.F16, T.BF16], ids=_name)
def test_subnormal_blocks_quantize_to_about_zero(t: GGMLType) -> None:
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(5)) * 1e-40  # float32 subnormals
    assert (x != 0).any() and (x.abs() < 1.2e-38).all()
    _, y = _roundtrip(t, x)
    assert y.isfinite().all() and y.abs().max().item() < 1e-30


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=_name)
def test_row_length_must_be_whole_blocks(t: GGMLType) -> None:
    c = get_codec(t)
    with pytest.raises(ValueError, match="multiple"):
        c.quantize(torch.zeros(1, c.block_size + 16))


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=_name)
def test_quantize_is_row_independent(t: GGMLType) -> None:
    x = torch.randn(6, 512, generator=torch.Generator().manual_seed(6))
    c = get_codec(t)
    whole = c.quantize(x)
    assert torch.equal(torch.cat([c.quantize(x[i:i + 1]) for i in range(6)]), whole)


@pytest.mark.gpu
@pytest.mark.parametrize("t", BLOCK_TYPES, ids=_name)
def test_cuda_gives_the_same_bytes(t: GGMLType) -> None:
    """Every op is a separate IEEE float32 kernel (no contraction across ops), so the device does not matter."""
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(7)) * 0.05
    x[3] = 0.0
    x[5, 17] = 40.0
    c = get_codec(t)
    q = c.quantize(x)
    qc = c.quantize(x.cuda())
    assert qc.device.type == "cuda" and torch.equal(qc.cpu(), q)
    assert torch.equal(c.dequantize(qc).cpu(), c.dequantize(q))
