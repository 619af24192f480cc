"""`llamakit quantize convert-f16.gguf OUT T` against llama-quantize's own output, for all 14 file types in
the reference folder: the whole file must be byte-identical (header, metadata order, tensor order and
types, data, padding). Tensor and metadata checks first, so a failure says what differs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llamakit.cli import app
from llamakit.gguf import GGMLType, GGUFReader
from llamakit.quantize import quantize_file

from .conftest import TINY_GGUF

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
         "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]
SRC = TINY_GGUF / "convert-f16.gguf"


def _run(*args: str) -> str:
    res = CliRunner().invoke(app, ["quantize", *args])
    assert res.exit_code == 0, res.output
    return res.output


def _same_tensors(got: Path, want: Path) -> None:
    with GGUFReader(got) as a, GGUFReader(want) as b:
        assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
        for ta, tb in zip(a.tensors, b.tensors):
            assert (ta.ggml_type, ta.shape) == (tb.ggml_type, tb.shape), ta.name
            assert np.array_equal(a.tensor_data(ta), b.tensor_data(tb)), f"{ta.name} ({ta.ggml_type.name}) bytes differ"
        assert list(a.fields) == list(b.fields)
        for k in a.fields:
            va, vb = a.fields[k], b.fields[k]
            assert (va.type, va.elem_type) == (vb.type, vb.elem_type), k
            assert np.array_equal(np.asarray(va.value), np.asarray(vb.value)), k


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("ftype", TYPES)
def test_byte_identical_to_llama_quantize(ftype: str, native: bool, tmp_path: Path) -> None:
    """Through the CLI (native quantizers where they build), and through the API with the torch codecs only."""
    out = tmp_path / f"{ftype}.gguf"
    if native:
        _run(str(SRC), str(out), ftype, "--threads", "2")
    else:
        notes: list[str] = []
        quantize_file(SRC, out, ftype, threads=2, native=False, notify=notes.append)
        assert notes == []  # native=False is a choice, not a failure to report
    want = TINY_GGUF / f"quantize-{ftype}.gguf"
    _same_tensors(out, want)
    assert out.read_bytes() == want.read_bytes()


def test_metadata_is_the_input_plus_file_type_and_quantization_version(tmp_path: Path) -> None:
    out = tmp_path / "q.gguf"
    _run(str(SRC), str(out), "q4_k_m")  # names are case-insensitive
    with GGUFReader(SRC) as a, GGUFReader(out) as b:
        keys = [k for k in a.fields if k not in ("general.file_type", "general.quantization_version")]
        assert list(b.fields) == keys + ["general.quantization_version", "general.file_type"]
        assert b.metadata["general.file_type"] == 15 and b.metadata["general.quantization_version"] == 2


@pytest.mark.parametrize("target,reference", [("F32", "convert-f32.gguf"), ("BF16", "convert-bf16.gguf"),
                                              ("Q8_0", "quantize-Q8_0.gguf")])
def test_float_targets_match_the_converter(target: str, reference: str, tmp_path: Path) -> None:
    """The reference weights are exact in f16 and bf16, so F16 -> F32/BF16 must give convert's tensors."""
    out = tmp_path / "t.gguf"
    _run(str(SRC), str(out), target)
    with GGUFReader(out) as a, GGUFReader(TINY_GGUF / reference) as b:
        by_name = {t.name: t for t in b.tensors}
        for t in a.tensors:
            r = by_name[t.name]
            assert t.ggml_type == r.ggml_type, t.name
            assert np.array_equal(a.tensor_data(t), b.tensor_data(r)), t.name


def test_numeric_type_and_default_output_name(tmp_path: Path) -> None:
    src = tmp_path / "model-f16.gguf"
    src.write_bytes(SRC.read_bytes())
    _run(str(src), "15")  # 15 = MOSTLY_Q4_K_M, listed first under its alias Q4_K
    out = tmp_path / "ggml-model-Q4_K.gguf"
    assert out.read_bytes() == (TINY_GGUF / "quantize-Q4_K_M.gguf").read_bytes()


def test_threads_do_not_change_the_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    _run(str(SRC), str(a), "Q3_K_M", "--threads", "1")
    _run(str(SRC), str(b), "Q3_K_M", "--threads", "3")
    assert a.read_bytes() == b.read_bytes()


def test_copy_keeps_tensors_and_file_type(tmp_path: Path) -> None:
    out = tmp_path / "copy.gguf"
    _run(str(SRC), str(out), "COPY")
    with GGUFReader(SRC) as a, GGUFReader(out) as b:
        assert b.metadata["general.file_type"] == a.metadata["general.file_type"] == 1
        for t in b.tensors:
            assert np.array_equal(b.tensor_data(t), a.tensor_data(a.tensor(t.name)))


def test_pure_leave_output_and_forced_types(tmp_path: Path) -> None:
    pure = tmp_path / "pure.gguf"
    _run(str(SRC), str(pure), "Q4_K_M", "--pure")
    with GGUFReader(pure) as r:
        types = {t.name: t.ggml_type for t in r.tensors}
    assert {t for n, t in types.items() if n.endswith("norm.weight")} == {GGMLType.F32}
    assert {t for n, t in types.items() if not n.endswith("norm.weight")} == {GGMLType.Q4_K}

    keep = tmp_path / "keep.gguf"
    _run(str(SRC), str(keep), "Q4_K_M", "--leave-output-tensor")
    with GGUFReader(keep) as r, GGUFReader(SRC) as s:
        assert r.tensor("output.weight").ggml_type == GGMLType.F16
        assert np.array_equal(r.tensor_data("output.weight"), s.tensor_data("output.weight"))

    forced = tmp_path / "forced.gguf"
    _run(str(SRC), str(forced), "Q4_K_M", "--output-tensor-type", "q8_0", "--token-embedding-type", "Q6_K")
    with GGUFReader(forced) as r, GGUFReader(TINY_GGUF / "quantize-Q8_0.gguf") as q8, \
            GGUFReader(TINY_GGUF / "quantize-Q6_K.gguf") as q6, GGUFReader(TINY_GGUF / "quantize-Q4_K_M.gguf") as km:
        assert np.array_equal(r.tensor_data("output.weight"), q8.tensor_data("output.weight"))
        assert np.array_equal(r.tensor_data("token_embd.weight"), q6.tensor_data("token_embd.weight"))
        t = r.tensor("blk.0.ffn_down.weight")
        assert np.array_equal(r.tensor_data(t), km.tensor_data(t.name))


def test_requantize_is_allowed_with_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "re.gguf"
    res = CliRunner().invoke(app, ["quantize", str(TINY_GGUF / "convert-q8_0.gguf"), str(out), "Q4_0",
                                   "--allow-requantize"])
    assert res.exit_code == 0, res.output
    assert "requantizing" in res.output and "quality" in res.output
    with GGUFReader(out) as r:
        assert {t.ggml_type for t in r.tensors} == {GGMLType.F32, GGMLType.Q4_0, GGMLType.Q6_K}


@pytest.mark.parametrize("ftype", ["Q4_0", "Q4_K_M", "Q2_K"])
def test_requantizing_natively_gives_the_torch_codecs_bytes(ftype: str, tmp_path: Path) -> None:
    """A quantized source: torch dequantizes, then the native quantizers (from float32) or the torch codecs."""
    src = TINY_GGUF / "convert-q8_0.gguf"
    quantize_file(src, tmp_path / "n.gguf", ftype, allow_requantize=True, threads=2)
    quantize_file(src, tmp_path / "t.gguf", ftype, allow_requantize=True, threads=2, native=False)
    assert (tmp_path / "n.gguf").read_bytes() == (tmp_path / "t.gguf").read_bytes()


@pytest.mark.parametrize("ttype", ["Q8_0", "Q4_K_M"])
def test_progress_counts_each_input_byte_once(tmp_path: Path, ttype: str) -> None:
    """The progress callback reports input bytes: over a whole run they add up to the input's tensor bytes."""
    from llamakit.quantize import plan_quantize, run_quantize

    seen: list[int] = []
    with plan_quantize(TINY_GGUF / "convert-f16.gguf", ttype) as plan:
        run_quantize(plan, tmp_path / "out.gguf", threads=1, progress=lambda tp, n: seen.append(n))
        assert sum(seen) == plan.input_bytes == sum(t.nbytes for t in plan.reader.tensors)
