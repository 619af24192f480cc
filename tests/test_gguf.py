"""GGUF container: byte-identical round trips, agreement with the `gguf` package, writer atomicity."""

from __future__ import annotations

import filecmp
from pathlib import Path

import gguf as gguf_py
import numpy as np
import pytest

from llamakit.gguf import GGMLType, GGUFReader, GGUFValueType, GGUFWriter
from llamakit.gguf.constants import GGML_BLOCK

from .conftest import REF

REFERENCE_FILES = sorted(REF.rglob("*.gguf"))


def test_reference_files_exist() -> None:
    assert len(REFERENCE_FILES) >= 20


def rewrite(src: Path, dst: Path) -> None:
    with GGUFReader(src) as r, GGUFWriter(dst, alignment=r.alignment) as w:
        for key, v in r.fields.items():
            w.add(key, v.value, v.type, v.elem_type)
        for t in r.tensors:
            w.add_tensor_info(t.name, t.shape, t.ggml_type)
        w.write_header()
        for t in r.tensors:
            w.write_tensor(t.name, r.tensor_data(t))


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: p.name)
def test_round_trip_is_byte_identical(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    rewrite(path, out)
    assert filecmp.cmp(path, out, shallow=False)


def test_round_trip_smollm2(smollm2_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    rewrite(smollm2_gguf, out)
    assert filecmp.cmp(smollm2_gguf, out, shallow=False)


def _oracle_value(field: "gguf_py.ReaderField"):  # the gguf package's view of one KV
    return field.contents()


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: p.name)
def test_agrees_with_gguf_package(path: Path) -> None:
    ref = gguf_py.GGUFReader(path)
    with GGUFReader(path) as r:
        keys = [k for k in ref.fields if not k.startswith("GGUF.")]
        assert list(r.fields) == keys
        for k in keys:
            f = ref.fields[k]
            mine = r.fields[k]
            assert int(mine.type) == int(f.types[0]), k
            if mine.type == GGUFValueType.ARRAY:
                assert int(mine.elem_type) == int(f.types[1]), k
            want = _oracle_value(f)
            got = mine.value.tolist() if isinstance(mine.value, np.ndarray) else mine.value
            if isinstance(want, float):
                assert got == pytest.approx(want, rel=1e-7), k
            elif isinstance(want, list) and want and isinstance(want[0], float):
                assert np.allclose(got, want), k
            else:
                assert got == want, k
        assert [t.name for t in r.tensors] == [t.name for t in ref.tensors]
        for mine, t in zip(r.tensors, ref.tensors):
            assert int(mine.ggml_type) == int(t.tensor_type)
            assert mine.shape == tuple(reversed([int(d) for d in t.shape]))
            assert mine.offset == t.data_offset
            assert mine.nbytes == t.n_bytes
            assert np.array_equal(r.tensor_data(mine), np.asarray(t.data).view(np.uint8).reshape(-1))


def test_block_table_matches_gguf_package() -> None:
    for t, (block, size) in GGML_BLOCK.items():
        assert gguf_py.GGML_QUANT_SIZES[gguf_py.GGMLQuantizationType(int(t))] == (block, size), t.name


def test_tensor_view_is_zero_copy(tiny_gguf: Path) -> None:
    with GGUFReader(tiny_gguf / "convert-f32.gguf") as r:
        v = r.tensor_data("token_embd.weight")
        assert not v.flags.owndata and not v.flags.writeable
        assert v.nbytes == 1000 * 256 * 4


def _small_writer(path: Path) -> GGUFWriter:
    w = GGUFWriter(path)
    w.add("general.architecture", "llama")
    w.add("llama.block_count", 2, GGUFValueType.UINT32)
    w.add_tensor_info("a", (4, 32), GGMLType.F32)
    w.add_tensor_info("b", (32,), GGMLType.F32)
    return w


def test_writer_refuses_calls_out_of_order(tmp_path: Path) -> None:
    w = _small_writer(tmp_path / "x.gguf")
    with pytest.raises(RuntimeError):
        w.write_tensor("a", np.zeros(128, np.float32))  # before the header
    w.write_header()
    with pytest.raises(RuntimeError):
        w.add("late.key", 1)
    with pytest.raises(RuntimeError):
        w.write_tensor("b", np.zeros(32, np.float32))  # wrong order
    with pytest.raises(RuntimeError):
        w.write_tensor("a", np.zeros(3, np.float32))  # wrong size
    w.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_writer_failure_leaves_nothing(tmp_path: Path, exc: BaseException) -> None:
    target = tmp_path / "model.gguf"
    with pytest.raises(type(exc)):
        with _small_writer(target) as w:
            w.write_header()
            w.write_tensor("a", np.zeros(128, np.float32))
            raise exc
    assert list(tmp_path.iterdir()) == []


def test_writer_missing_tensor_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    with pytest.raises(RuntimeError, match="before tensor 'b'"):
        with _small_writer(target) as w:
            w.write_header()
            w.write_tensor("a", np.zeros(128, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_writer_keeps_existing_target_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        with _small_writer(target) as w:
            w.write_header()
            raise ValueError
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_written_file_reads_back(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    a = np.arange(128, dtype=np.float32)
    with _small_writer(target) as w:
        w.write_header()
        w.write_tensor("a", a)
        w.write_tensor("b", np.ones(32, np.float32))
    with GGUFReader(target) as r:
        assert r.metadata == {"general.architecture": "llama", "llama.block_count": 2}
        assert r.tensor("a").shape == (4, 32)
        assert np.array_equal(r.tensor_data("a").view(np.float32), a)
        assert r.tensor("b").offset % 32 == 0
    ref = gguf_py.GGUFReader(target)
    assert [int(x) for x in ref.tensors[0].shape] == [32, 4]
