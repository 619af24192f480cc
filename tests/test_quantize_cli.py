"""`llamakit quantize` on bad input, through typer's CliRunner: one clear line, exit status 1, no output file
(and no temp file) left behind."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llamakit.cli import app
from llamakit.gguf import GGMLType, GGUFReader, GGUFValueType, GGUFWriter

from .conftest import TINY_GGUF

qmod = importlib.import_module("llamakit.quantize")  # the attribute llamakit.quantize is the API function

SRC = TINY_GGUF / "convert-f16.gguf"
runner = CliRunner()


def _fail(*args: str) -> str:
    res = runner.invoke(app, ["quantize", *args])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    return " ".join(res.output.split())  # rich may wrap long lines


def _nothing_written(d: Path) -> None:
    assert [p.name for p in d.iterdir() if p.suffix != ".gguf" or "tmp" in p.name] == []


def test_unknown_type_lists_the_valid_ones(tmp_path: Path) -> None:
    msg = _fail(str(SRC), str(tmp_path / "o.gguf"), "Q4_X")
    assert "unknown quantization type 'Q4_X'" in msg
    for name in ("Q4_0", "Q3_K_S", "Q4_K_M (15)", "Q6_K", "BF16", "COPY"):
        assert name in msg
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("bad", ["99", "IQ2_XXS", ""])
def test_unsupported_file_types(bad: str, tmp_path: Path) -> None:
    assert "unknown quantization type" in _fail(str(SRC), str(tmp_path / "o.gguf"), bad)


def test_unknown_tensor_type_option(tmp_path: Path) -> None:
    msg = _fail(str(SRC), str(tmp_path / "o.gguf"), "Q4_0", "--output-tensor-type", "q9_0")
    assert "--output-tensor-type" in msg and "q6_K" in msg


def test_input_equals_output(tmp_path: Path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(SRC.read_bytes())
    before = src.read_bytes()
    msg = _fail(str(src), str(tmp_path / "." / "m.gguf"), "Q4_0")
    assert "output is the input" in msg
    assert src.read_bytes() == before
    _nothing_written(tmp_path)


def test_unreadable_inputs(tmp_path: Path) -> None:
    assert "no such file" in _fail(str(tmp_path / "missing.gguf"), str(tmp_path / "o.gguf"), "Q4_0")
    assert "is a directory" in _fail(str(tmp_path), str(tmp_path / "o.gguf"), "Q4_0")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 10)
    assert "not a GGUF file" in _fail(str(junk), str(tmp_path / "o.gguf"), "Q4_0")
    assert not (tmp_path / "o.gguf").exists()


def test_wrong_number_of_arguments(tmp_path: Path) -> None:
    assert "expected IN.gguf [OUT.gguf] TYPE" in _fail(str(SRC), str(tmp_path / "a"), "b", "Q4_0")


def test_requantize_needs_the_flag(tmp_path: Path) -> None:
    msg = _fail(str(TINY_GGUF / "convert-q8_0.gguf"), str(tmp_path / "o.gguf"), "Q4_0")
    assert "already quantized (Q8_0)" in msg and "--allow-requantize" in msg
    _nothing_written(tmp_path)


def test_output_directory_missing(tmp_path: Path) -> None:
    assert "does not exist" in _fail(str(SRC), str(tmp_path / "no" / "o.gguf"), "Q4_0")


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    orig = qmod._Converter.run

    def run(self, lo, hi):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return orig(self, lo, hi)

    monkeypatch.setattr(qmod._Converter, "run", run)
    out = tmp_path / "o.gguf"
    msg = _fail(str(SRC), str(out), "Q4_K_M", "--threads", "1")
    assert "interrupted; nothing was written" in msg
    assert not out.exists()
    _nothing_written(tmp_path)


def _tiny_model(path: Path, weights: dict[str, np.ndarray]) -> None:
    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama", GGUFValueType.STRING)
        w.add("llama.block_count", 1, GGUFValueType.UINT32)
        w.add("llama.attention.head_count", 2, GGUFValueType.UINT32)
        for name, a in weights.items():
            w.add_tensor_info(name, a.shape, GGMLType.F32 if a.dtype == np.float32 else GGMLType.F16)
        w.write_header()
        for name, a in weights.items():
            w.write_tensor(name, a)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_name_the_tensor(bad: float, tmp_path: Path) -> None:
    q = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    q[2, 100] = bad
    src = tmp_path / "nan.gguf"
    _tiny_model(src, {"blk.0.attn_norm.weight": np.ones(256, np.float32), "blk.0.attn_q.weight": q})
    out = tmp_path / "o.gguf"
    msg = _fail(str(src), str(out), "Q4_K_M")
    assert "tensor 'blk.0.attn_q.weight' contains NaN or infinite values (first at row 2, column 100)" in msg
    assert not out.exists()


def test_non_finite_in_a_copied_tensor_is_refused_too(tmp_path: Path) -> None:
    norm = np.ones(256, np.float16)
    norm[3] = np.inf
    src = tmp_path / "nan.gguf"
    _tiny_model(src, {"blk.0.attn_norm.weight": norm,
                      "blk.0.attn_q.weight": np.zeros((2, 256), np.float32)})
    assert "blk.0.attn_norm.weight" in _fail(str(src), str(tmp_path / "o.gguf"), "Q8_0")


def test_pure_cannot_break_the_row_length(tmp_path: Path) -> None:
    w = np.random.default_rng(1).standard_normal((8, 96)).astype(np.float32)  # 96: not a multiple of 256
    src = tmp_path / "narrow.gguf"
    _tiny_model(src, {"blk.0.attn_q.weight": w})
    msg = _fail(str(src), str(tmp_path / "o.gguf"), "Q4_K_M", "--pure")
    assert "rows of 96 weights, not a multiple of the Q4_K block (256)" in msg
    # without --pure the fallback table applies: Q4_K -> Q5_0
    res = runner.invoke(app, ["quantize", str(src), str(tmp_path / "ok.gguf"), "Q4_K_M"])
    assert res.exit_code == 0, res.output
    assert "1 of 1 tensor(s) required fallback quantization" in " ".join(res.output.split())
    with GGUFReader(tmp_path / "ok.gguf") as r:
        assert r.tensor("blk.0.attn_q.weight").ggml_type == GGMLType.Q5_0


def test_fallback_to_f16_when_even_the_fallback_does_not_fit(tmp_path: Path) -> None:
    src = tmp_path / "odd.gguf"
    _tiny_model(src, {"blk.0.ffn_up.weight": np.ones((4, 48), np.float32)})  # 48: not a multiple of 32
    res = runner.invoke(app, ["quantize", str(src), str(tmp_path / "o.gguf"), "Q6_K"])
    assert res.exit_code == 0, res.output
    with GGUFReader(tmp_path / "o.gguf") as r:
        assert r.tensor("blk.0.ffn_up.weight").ggml_type == GGMLType.F16
