"""Dequantization of every block format: hand-built blocks with known values, and equality with the
`gguf` package (llama.cpp's own Python library, used here only as an oracle) on the reference files."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from llamakit.gguf import GGMLType, GGUFReader
from llamakit.quants import as_tensor, get_codec

from .conftest import TINY_GGUF

gguf = pytest.importorskip("gguf")


def _f16(v: float) -> bytes:
    return struct.pack("<e", v)


def _deq(t: GGMLType, block: bytes) -> list[float]:
    out = get_codec(t).dequantize(torch.frombuffer(bytearray(block), dtype=torch.uint8))
    return out.tolist()


# -- hand-built blocks ---------------------------------------------------------------------------

def test_q4_0_block() -> None:
    # d = 0.5; weight j < 16 from the low nibble of qs[j], weight j+16 from the high nibble
    qs = bytes((j | (15 - j) << 4) for j in range(16))
    y = _deq(GGMLType.Q4_0, _f16(0.5) + qs)
    assert y == [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]


def test_q4_1_block() -> None:
    qs = bytes((j | (15 - j) << 4) for j in range(16))
    y = _deq(GGMLType.Q4_1, _f16(0.25) + _f16(-1.0) + qs)
    assert y == [j * 0.25 - 1 for j in range(16)] + [(15 - j) * 0.25 - 1 for j in range(16)]


def test_q5_0_block() -> None:
    qh = struct.pack("<I", 0x8000_0001)  # bit 4 set for weights 0 and 31
    qs = bytes([0x21] * 16)  # low nibble 1, high nibble 2
    y = _deq(GGMLType.Q5_0, _f16(2.0) + qh + qs)
    want = [(1 - 16) * 2.0] * 16 + [(2 - 16) * 2.0] * 16
    want[0] = (17 - 16) * 2.0
    want[31] = (18 - 16) * 2.0
    assert y == want


def test_q5_1_block() -> None:
    qh = struct.pack("<I", 0xFFFF_0000)  # bit 4 set for weights 16..31
    qs = bytes([0xF0] * 16)  # low 0, high 15
    y = _deq(GGMLType.Q5_1, _f16(1.0) + _f16(0.5) + qh + qs)
    assert y == [0.5] * 16 + [31.5] * 16


def test_q8_0_block() -> None:
    qs = bytes(np.arange(-16, 16, dtype=np.int8).view(np.uint8))
    assert _deq(GGMLType.Q8_0, _f16(0.125) + qs) == [i * 0.125 for i in range(-16, 16)]


def test_q2_k_block() -> None:
    # sub-block j (16 weights) has scale j % 16 and min 1; weight e = 128h + 32k + l reads qs[32h+l] >> 2k
    scales = bytes((j & 15) | (1 << 4) for j in range(16))
    qs = bytes(0b11_10_01_00 for _ in range(64))  # 2-bit value k at shift 2k
    y = _deq(GGMLType.Q2_K, scales + qs + _f16(1.0) + _f16(0.5))
    want = [(e // 16) * ((e % 128) // 32) - 0.5 for e in range(256)]
    assert y == want


def test_q3_k_block() -> None:
    # all 6-bit scales = 33 (-> 1): low nibbles 1, high 2 bits 2; hmask all set -> no -4 offset
    scales = bytes([0x11] * 8) + bytes([0b10_10_10_10] * 4)
    qs = bytes(0b11_10_01_00 for _ in range(64))
    hm = bytes([0xFF] * 32)
    y = _deq(GGMLType.Q3_K, hm + qs + scales + _f16(0.5))
    assert y == [((e % 128) // 32) * 0.5 for e in range(256)]
    # clear the high bit of weight e = 32*b + m (bit b of hmask[m]) for b = 3, m = 5 -> q - 4
    hm2 = bytearray(hm)
    hm2[5] &= ~(1 << 3)
    y2 = _deq(GGMLType.Q3_K, bytes(hm2) + qs + scales + _f16(0.5))
    e = 32 * 3 + 5
    assert y2[e] == (((e % 128) // 32) - 4) * 0.5 and y2[:e] == y[:e] and y2[e + 1:] == y[e + 1:]


def _k4_scales(sc: list[int], mn: list[int]) -> bytes:
    b = bytearray(12)
    for j in range(8):
        if j < 4:
            b[j], b[j + 4] = sc[j], mn[j]
        else:
            b[j + 4] = (sc[j] & 15) | (mn[j] & 15) << 4
            b[j - 4] |= (sc[j] >> 4) << 6
            b[j] |= (mn[j] >> 4) << 6
    return bytes(b)


def test_q4_k_block() -> None:
    sc = [1, 2, 3, 63, 17, 33, 48, 62]
    mn = [0, 5, 63, 7, 16, 31, 32, 1]
    qs = bytes((l % 16) | ((15 - l % 16) << 4) for _ in range(4) for l in range(32))
    y = _deq(GGMLType.Q4_K, _f16(0.5) + _f16(0.25) + _k4_scales(sc, mn) + qs)
    want = []
    for e in range(256):
        j, l = e // 32, e % 32
        q = (l % 16) if j % 2 == 0 else 15 - l % 16
        want.append(0.5 * sc[j] * q - 0.25 * mn[j])
    assert y == pytest.approx(want, rel=0, abs=0)


def test_q5_k_block() -> None:
    sc = [63, 1, 2, 3, 40, 41, 42, 43]
    mn = [1, 0, 0, 0, 20, 0, 63, 2]
    qs = bytes([0x5A] * 128)  # low 10, high 5
    qh = bytes([0b0101_0101] * 32)  # even sub-blocks (low nibbles) get +16
    y = _deq(GGMLType.Q5_K, _f16(1.0) + _f16(1.0) + _k4_scales(sc, mn) + qh + qs)
    want = [sc[e // 32] * (26 if (e // 32) % 2 == 0 else 5) - mn[e // 32] for e in range(256)]
    assert y == want


def test_q6_k_block() -> None:
    # every 6-bit value is 32 + (e // 64) - 2 style pattern built from explicit fields
    ql = bytearray(128)
    qh = bytearray(64)
    vals = [(e * 7) % 64 for e in range(256)]
    for e, v in enumerate(vals):
        h, k, l = e // 128, (e % 128) // 32, e % 32
        ql[64 * h + 32 * (k % 2) + l] |= (v & 15) << (4 * (k // 2))
        qh[32 * h + l] |= (v >> 4) << (2 * k)
    scales = bytes(np.array([-128, -3, 0, 1, 2, 5, 7, 11, 13, 17, 19, 23, 29, 31, 64, 127], dtype=np.int8).view(np.uint8))
    y = _deq(GGMLType.Q6_K, bytes(ql) + bytes(qh) + scales + _f16(0.125))
    sc = np.frombuffer(scales, dtype=np.int8)
    assert y == [0.125 * int(sc[e // 16]) * (vals[e] - 32) for e in range(256)]


def test_q8_k_block() -> None:
    q = np.arange(-128, 128, dtype=np.int8)
    bsums = q.astype(np.int16).reshape(16, 16).sum(1).astype("<i2")
    block = struct.pack("<f", 0.1) + bytes(q.view(np.uint8)) + bsums.tobytes()
    want = (np.float32(0.1) * q.astype(np.float32)).tolist()
    assert _deq(GGMLType.Q8_K, block) == want


def test_leading_dims_and_rows() -> None:
    c = get_codec(GGMLType.Q4_K)
    data = torch.randint(0, 256, (3, 2, 144 * 2), dtype=torch.uint8)
    data.view(3, 2, 2, 144)[..., :4] = torch.tensor([0, 0x3C, 0, 0x38], dtype=torch.uint8)  # d=1, dmin=.5
    y = c.dequantize(data)
    assert y.shape == (3, 2, 512) and y.dtype == torch.float32
    assert torch.equal(y[1, 1], c.dequantize(data[1, 1]))


# -- equality with the gguf package on llama.cpp's files -----------------------------------------

def _check_file(path) -> int:
    n = 0
    with GGUFReader(path) as r:
        for t in r.tensors:
            raw = r.tensor_data(t)
            rows = raw.reshape(*t.shape[:-1], -1)
            ref = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(int(t.ggml_type)))
            got = get_codec(t.ggml_type).dequantize(as_tensor(rows)).numpy()
            assert got.shape == tuple(t.shape), t.name
            np.testing.assert_array_equal(got.view(np.uint32), ref.astype(np.float32).view(np.uint32), err_msg=t.name)
            n += 1
    return n


REFERENCE_FILES = sorted(p.name for p in TINY_GGUF.glob("*.gguf"))


@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_matches_gguf_package_on_reference_files(name: str) -> None:
    assert _check_file(TINY_GGUF / name) == 39


def test_reference_files_cover_every_k_and_legacy_type() -> None:
    seen = set()
    for name in REFERENCE_FILES:
        with GGUFReader(TINY_GGUF / name) as r:
            seen |= {t.ggml_type for t in r.tensors}
    want = {GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
            GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K}
    assert want <= seen


def test_matches_gguf_package_on_smollm2(smollm2_gguf) -> None:
    assert _check_file(smollm2_gguf) == 272
