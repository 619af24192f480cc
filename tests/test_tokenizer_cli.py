"""`llamakit tokenize`: llama-tokenize's output format and options."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from llamakit.cli import app
from llamakit.tokenizer.escapes import process_escapes

from .conftest import VOCAB

runner = CliRunner()
SPM = str(VOCAB / "ggml-vocab-llama-spm.gguf")


def test_pieces_and_count() -> None:
    res = runner.invoke(app, ["tokenize", "-m", SPM, "-p", "Hello world", "--show-count"])
    assert res.exit_code == 0, res.output
    assert res.stdout_bytes == (b"     1 -> '<s>'\n 15043 -> ' Hello'\n  3186 -> ' world'\n"
                                b"Total number of tokens: 3\n")


def test_ids_no_bos_and_special(smollm2_gguf: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["tokenize", "-m", SPM, "-p", "Hello world", "--ids", "--no-bos"])
    assert res.exit_code == 0 and res.stdout == "[15043, 3186]\n"
    f = tmp_path / "p.txt"
    f.write_text("<|im_start|>user\\n12")  # escapes are processed by default, as in llama-tokenize
    res = runner.invoke(app, ["tokenize", "-m", str(smollm2_gguf), "-f", str(f), "--ids"])
    assert res.exit_code == 0 and res.stdout == "[1, 4093, 198, 33, 34]\n"
    res = runner.invoke(app, ["tokenize", "-m", str(smollm2_gguf), "-f", str(f), "--ids", "--no-parse-special",
                              "--no-escape"])
    assert res.exit_code == 0 and not res.stdout.startswith("[1,") and "198" not in res.stdout


def test_byte_pieces_are_written_raw() -> None:
    res = runner.invoke(app, ["tokenize", "-m", SPM, "-p", "🦙", "--no-bos"])
    assert res.exit_code == 0
    # U+1F999 = F0 9F A6 99 has no token: '▁' then byte tokens <0xNN> (id 3 + byte), one raw byte per line
    assert res.stdout_bytes == (b" 29871 -> ' '\n   243 -> '\xf0'\n   162 -> '\x9f'\n   169 -> '\xa6'\n"
                                b"   156 -> '\x99'\n")


def test_errors() -> None:
    res = runner.invoke(app, ["tokenize", "-m", SPM])
    assert res.exit_code == 1 and "exactly one of" in res.output
    res = runner.invoke(app, ["tokenize", "-m", SPM, "-p", "\\xff\\xfe."])
    assert res.exit_code == 1 and "UTF-8" in res.output


def test_escapes_like_llama_cpp() -> None:
    assert process_escapes(rb"a\nb\tc\\d\'\"") == b"a\nb\tc\\d'\""
    assert process_escapes(rb"\x41\x42.") == b"AB."
    assert process_escapes(rb"\x41") == b"A" and process_escapes(rb"\x4") == rb"\x4"
    assert process_escapes(rb"\x 9\x+9\x-1.") == b"\t\t\xff."  # what strtol accepts in two characters
    assert process_escapes(rb"\q\xZZ.") == rb"\q\xZZ."
    assert process_escapes(b"end\\") == b"end\\"


def test_stdin_and_default_model(smollm2_gguf: Path, monkeypatch) -> None:
    res = runner.invoke(app, ["tokenize", "-m", SPM, "--stdin", "--ids", "--no-escape"], input="a\\nb")
    assert res.exit_code == 0 and res.stdout == "[1, 263, 29905, 9877]\n"  # '▁a' '\\' 'nb': the backslash stays
    monkeypatch.setenv("LLAMAKIT_SMOLLM2", str(smollm2_gguf))
    res = runner.invoke(app, ["tokenize", "-p", "<|im_end|>", "--ids"])  # no -m: the default model (SmolLM2)
    assert res.exit_code == 0 and res.stdout == "[2]\n"
