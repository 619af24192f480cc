"""Truncated, malformed and hostile GGUF files: always a GGUFFormatError naming the file, quickly."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamakit.errors import GGUFFormatError, LlamakitError
from llamakit.gguf import GGUFReader

from . import gguf_bytes as gb

BIG = 1 << 63


def read(tmp_path: Path, data: bytes) -> GGUFReader:
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    return GGUFReader(p)


def expect_error(tmp_path: Path, data: bytes, match: str) -> None:
    t = time.perf_counter()
    with pytest.raises(GGUFFormatError, match=match) as ei:
        read(tmp_path, data)
    assert time.perf_counter() - t < 1.0
    assert "bad.gguf" in str(ei.value)


def test_valid_builder_reads(tmp_path: Path) -> None:
    r = read(tmp_path, gb.valid())
    assert [t.name for t in r.tensors] == ["a.weight", "b.weight"]
    assert r.tensor("b.weight").shape == (4, 8)
    assert r.metadata["tokenizer.ggml.tokens"] == ["a", "b", "c"]
    assert r.metadata["tokenizer.ggml.token_type"].tolist() == [1, 1, 3]


def test_truncation_at_every_offset(tmp_path: Path) -> None:
    data = gb.valid()
    r = read(tmp_path, data)
    end_of_data = max(t.offset + t.nbytes for t in r.tensors)
    r.close()
    for cut in range(0, end_of_data):
        with pytest.raises(GGUFFormatError):
            read(tmp_path, data[:cut])


def test_wrong_magic(tmp_path: Path) -> None:
    expect_error(tmp_path, gb.gguf([], [], b"", magic=0x46554748), "not a GGUF file")
    expect_error(tmp_path, b"PK\x03\x04" + bytes(60), "not a GGUF file")


def test_unknown_version(tmp_path: Path) -> None:
    expect_error(tmp_path, gb.gguf([], [], b"", version=7), "unsupported GGUF version 7")


def test_gguf_v2_is_readable(tmp_path: Path) -> None:
    r = read(tmp_path, gb.gguf([gb.kv_u32("x", 1)], [], b"", version=2))
    assert r.version == 2 and r.metadata == {"x": 1}


@pytest.mark.parametrize("field", ["n_kv", "n_tensors"])
def test_absurd_counts(tmp_path: Path, field: str) -> None:
    expect_error(tmp_path, gb.gguf([], [], b"", **{field: BIG}), "count")


def test_absurd_string_length(tmp_path: Path) -> None:
    key = struct.pack("<Q", BIG) + b"abc" + bytes(32)
    expect_error(tmp_path, gb.gguf([key], [], b"", n_kv=1), "truncated")


def test_absurd_array_length(tmp_path: Path) -> None:
    kv = gb.s("arr") + struct.pack("<IIQ", 9, 5, BIG) + bytes(16)
    expect_error(tmp_path, gb.gguf([kv], [], b""), "truncated")
    kv = gb.s("arr") + struct.pack("<IIQ", 9, 8, BIG) + bytes(16)  # strings
    expect_error(tmp_path, gb.gguf([kv], [], b""), "truncated")


def test_invalid_utf8(tmp_path: Path) -> None:
    expect_error(tmp_path, gb.gguf([gb.kv_str("k", b"\xff\xfe")], [], b""), "UTF-8")


def test_unknown_value_and_array_types(tmp_path: Path) -> None:
    expect_error(tmp_path, gb.gguf([gb.s("k") + struct.pack("<I", 99)], [], b""), "unknown value type 99")
    kv = gb.s("k") + struct.pack("<IIQ", 9, 42, 1) + bytes(8)
    expect_error(tmp_path, gb.gguf([kv], [], b""), "unknown value type 42")


def test_deeply_nested_arrays(tmp_path: Path) -> None:
    kv = gb.s("k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 10 + struct.pack("<IQ", 5, 0)
    expect_error(tmp_path, gb.gguf([kv], [], b""), "nested")


def test_tensor_data_past_end(tmp_path: Path) -> None:
    data = gb.gguf([], [gb.tinfo("t", [64], 0, 0)], bytes(128))
    expect_error(tmp_path, data, "runs past the end")


def test_overlapping_tensors(tmp_path: Path) -> None:
    data = gb.gguf([], [gb.tinfo("t", [16], 0, 0), gb.tinfo("u", [16], 0, 32)], bytes(128))
    expect_error(tmp_path, data, "overlap")


def test_unknown_ggml_type(tmp_path: Path) -> None:
    expect_error(tmp_path, gb.gguf([], [gb.tinfo("t", [32], 77, 0)], bytes(128)), "unknown ggml type 77")


def test_dims_overflow(tmp_path: Path) -> None:
    data = gb.gguf([], [gb.tinfo("t", [1 << 40, 1 << 40, 1 << 40], 0, 0)], bytes(64))
    expect_error(tmp_path, data, "absurd dimensions")


def test_too_many_dims(tmp_path: Path) -> None:
    expect_error(tmp_path, gb.gguf([], [gb.tinfo("t", [1] * 5, 0, 0)], bytes(32)), "dimensions")


def test_row_not_multiple_of_block(tmp_path: Path) -> None:
    expect_error(tmp_path, gb.gguf([], [gb.tinfo("t", [31], 8, 0)], bytes(64)), "block size")


def test_misaligned_offset(tmp_path: Path) -> None:
    expect_error(tmp_path, gb.gguf([], [gb.tinfo("t", [4], 0, 4)], bytes(64)), "aligned")


def test_bad_alignment_key(tmp_path: Path) -> None:
    expect_error(tmp_path, gb.gguf([gb.kv_u32("general.alignment", 3)], [], b""), "alignment")


def test_duplicate_keys_and_tensors(tmp_path: Path) -> None:
    expect_error(tmp_path, gb.gguf([gb.kv_u32("k", 1), gb.kv_u32("k", 2)], [], b""), "duplicate metadata key")
    data = gb.gguf([], [gb.tinfo("t", [8], 0, 0), gb.tinfo("t", [8], 0, 32)], bytes(64))
    expect_error(tmp_path, data, "duplicate tensor name")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    expect_error(tmp_path, b"", "empty")
    with pytest.raises(LlamakitError, match="no such file"):
        GGUFReader(tmp_path / "missing.gguf")
    with pytest.raises(LlamakitError, match="directory"):
        GGUFReader(tmp_path)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_mutations_only_raise_gguf_errors(tmp_path: Path, data: st.DataObject) -> None:
    raw = bytearray(gb.valid())
    n = data.draw(st.integers(1, 8))
    for _ in range(n):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    p = tmp_path / "fuzz.gguf"
    p.write_bytes(bytes(raw))
    try:
        with GGUFReader(p) as r:
            for t in r.tensors:
                assert r.tensor_data(t).nbytes == t.nbytes
    except LlamakitError:
        pass
