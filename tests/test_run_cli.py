"""`llamakit run / perplexity / bench` through typer's CliRunner, on the tiny llama (and bad input)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamakit.cli import app
from llamakit.gguf import GGUFReader, GGUFWriter
from llamakit.gguf.constants import GGMLType, tensor_nbytes

from .conftest import TINY, TINY_GGUF

F32 = str(TINY_GGUF / "convert-f32.gguf")
PROMPT = json.loads((TINY / "logits" / "tokens.json").read_text())["prompt"]
GREEDY = json.loads((TINY / "greedy" / "convert-f32.llama.cpp.json").read_text())
PERF = [
    r"llama_perf_sampler_print:    sampling time = +\d+\.\d\d ms / +\d+ runs   \( +\d+\.\d\d ms per token, +[\d.inf]+ tokens per second\)",
    r"llama_perf_context_print:        load time = +\d+\.\d\d ms",
    r"llama_perf_context_print: prompt eval time = +\d+\.\d\d ms / +27 tokens \( +\d+\.\d\d ms per token, +[\d.]+ tokens per second\)",
    r"llama_perf_context_print:        eval time = +\d+\.\d\d ms / +23 runs   \( +\d+\.\d\d ms per token, +[\d.]+ tokens per second\)",
    r"llama_perf_context_print:       total time = +\d+\.\d\d ms / +50 tokens",
]


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def test_run_greedy_streams_prompt_and_llama_cpp_text() -> None:
    r = invoke("run", "-m", F32, "-p", PROMPT, "-n", "24", "--temp", "0", "-c", "512")
    assert r.exit_code == 0, r.output
    # llama-cli echoes the prompt's pieces (SentencePiece: with the leading space), then the continuation
    assert r.stdout == " " + PROMPT + GREEDY["text"] + "\n"
    lines = r.stderr.splitlines()
    for pat in PERF:
        assert any(re.fullmatch(pat, line) for line in lines), pat
    assert "warning" not in r.stderr


def test_run_seed_gives_the_same_text() -> None:
    args = ("run", "-m", F32, "-p", "Hello", "-n", "12", "-c", "128", "--no-display-prompt", "--no-perf")
    a, b, c = invoke(*args, "-s", "7"), invoke(*args, "-s", "7"), invoke(*args, "-s", "8")
    assert a.exit_code == b.exit_code == c.exit_code == 0
    assert a.stdout == b.stdout and "sampler seed: 7" in a.stderr
    assert a.stdout != c.stdout  # random weights: nearly flat logits, another seed takes another path


def test_run_reverse_prompt_stops() -> None:
    full = invoke("run", "-m", F32, "-p", PROMPT, "-n", "24", "--temp", "0", "-c", "512", "--no-display-prompt")
    cut = invoke("run", "-m", F32, "-p", PROMPT, "-n", "24", "--temp", "0", "-c", "512", "--no-display-prompt",
                 "-r", "----")
    assert cut.exit_code == 0
    assert full.stdout.startswith(cut.stdout.rstrip("\n"))
    assert cut.stdout.rstrip("\n").endswith("----") and len(cut.stdout) < len(full.stdout)


def test_run_context_shift_and_stop() -> None:
    base = ("run", "-m", F32, "-p", PROMPT, "--temp", "0", "-c", "40", "--no-display-prompt", "--ignore-eos")
    shifted = invoke(*base, "-n", "30")
    assert shifted.exit_code == 0, shifted.output
    assert "context shifted" in shifted.stderr
    stopped = invoke(*base, "-n", "30", "--no-context-shift")
    assert stopped.exit_code == 0 and "context full" in stopped.stderr
    full = invoke(*base, "-n", "-2")
    assert full.stdout == stopped.stdout  # -n -2: until the context is full
    # the prompt is 27 tokens, the cache 40: 39 - 27 = 12 decodes fit, the 13th sample ends it
    assert "/    12 runs" in stopped.stderr


def test_run_gpu_layers_says_cpu() -> None:
    r = invoke("run", "-m", F32, "-p", "Hi", "-n", "2", "-c", "64", "--gpu-layers", "99")
    assert r.exit_code == 0
    assert "everything on the CPU" in r.stderr and "offloaded 0/5 layers to GPU" in r.stderr


def test_run_missing_model() -> None:
    r = invoke("run", "-m", "/nonexistent/model.gguf", "-p", "x")
    assert r.exit_code == 1
    assert "no such model file" in r.stderr and "Traceback" not in r.output


def test_run_prompt_longer_than_context() -> None:
    r = invoke("run", "-m", F32, "-p", PROMPT, "-c", "16")
    assert r.exit_code == 1
    assert "prompt is too long (27 tokens, max 12)" in r.stderr


def test_run_context_larger_than_training_warns() -> None:
    r = invoke("run", "-m", F32, "-p", "Hi", "-n", "1", "-c", "1024")
    assert r.exit_code == 0
    assert "warning: model was trained on only 512 context tokens (1024 specified)" in r.stderr


def test_run_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello, I am not a model\n" * 10)
    r = invoke("run", "-m", str(bad), "-p", "x")
    assert r.exit_code == 1 and "not a GGUF file" in r.stderr


def _rewrite(src: str, dst: Path, *, arch: str | None = None, retype: dict[str, GGMLType] | None = None) -> None:
    """Copy a GGUF, optionally renaming the architecture (and its keys) or relabelling tensor types."""
    retype = retype or {}
    with GGUFReader(src) as r, GGUFWriter(dst) as w:
        old = r.architecture
        for k, f in r.fields.items():
            if k == "general.alignment":
                continue
            key = k.replace(f"{old}.", f"{arch}.", 1) if arch and k.startswith(f"{old}.") else k
            value = arch if (arch and k == "general.architecture") else f.value
            w.add(key, value, f.type, f.elem_type)
        for t in r.tensors:
            w.add_tensor_info(t.name, t.shape, retype.get(t.name, t.ggml_type))
        w.write_header()
        for t in r.tensors:
            data = r.tensor_data(t)
            if t.name in retype:  # keep the byte count of the new type
                data = bytes(tensor_nbytes(retype[t.name], math.prod(t.shape)))
            w.write_tensor(t.name, data)


def test_run_unknown_architecture(tmp_path: Path) -> None:
    out = tmp_path / "gpt9.gguf"
    _rewrite(F32, out, arch="gpt9")
    r = invoke("run", "-m", str(out), "-p", "x")
    assert r.exit_code == 1
    assert "unknown model architecture 'gpt9'" in r.stderr


def test_run_iq_tensor_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "iq.gguf"
    _rewrite(F32, out, retype={"blk.1.ffn_up.weight": GGMLType.IQ2_XXS})
    r = invoke("run", "-m", str(out), "-p", "x")
    assert r.exit_code == 1
    assert "blk.1.ffn_up.weight" in r.stderr and "IQ2_XXS" in r.stderr


def test_run_prompt_file_and_escapes(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text(PROMPT + "\n")
    a = invoke("run", "-m", F32, "-f", str(f), "-n", "3", "--temp", "0", "-c", "64", "--no-perf")
    b = invoke("run", "-m", F32, "-p", PROMPT, "-n", "3", "--temp", "0", "-c", "64", "--no-perf")
    assert a.exit_code == 0 and a.stdout == b.stdout  # one trailing newline dropped, as llama.cpp's -f
    c = invoke("run", "-m", F32, "-p", "a\\tb", "-n", "1", "--temp", "0", "-c", "64", "--no-perf")
    assert c.stdout.startswith(" a\tb")


def test_perplexity_cli_format() -> None:
    r = invoke("perplexity", "-m", F32, "-f", str(TINY / "corpus.txt"), "-c", "128", "--chunks", "3")
    assert r.exit_code == 0, r.output
    assert re.fullmatch(r"\[1\]\d+\.\d{4},\[2\]\d+\.\d{4},\[3\]\d+\.\d{4},\n", r.stdout)
    assert re.search(r"^Final estimate: PPL = \d+\.\d{4} \+/- \d+\.\d{5}$", r.stderr, re.M)
    assert "calculating perplexity over 3 chunks, n_ctx=128" in r.stderr


def test_perplexity_needs_enough_tokens(tmp_path: Path) -> None:
    f = tmp_path / "short.txt"
    f.write_text("too short")
    r = invoke("perplexity", "-m", F32, "-f", str(f), "-c", "128")
    assert r.exit_code == 1 and "you need at least 256 tokens" in r.stderr


def test_bench_cli_table() -> None:
    r = invoke("bench", "-m", F32, "-p", "16", "-n", "4", "-r", "2")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("| model") and "t/s" in lines[0]
    assert re.search(r"\| +pp16 \| +[\d.]+ ± [\d.]+ \|$", lines[2])
    assert re.search(r"\| +tg4 \| +[\d.]+ ± [\d.]+ \|$", lines[3])
    assert "llama 3.7M F32" in lines[2]


@pytest.mark.parametrize("args,message", [(("-c", "2"), "at least 3"), (("--chunks", "0"), "--chunks 0")])
def test_perplexity_rejects_arguments_that_score_nothing(args: tuple[str, str], message: str) -> None:
    r = invoke("perplexity", "-m", F32, "-f", str(TINY / "corpus.txt"), *args)
    assert r.exit_code == 1 and message in r.stderr and "Traceback" not in r.output


def test_run_cache_types_and_threads() -> None:
    base = ("run", "-m", F32, "-p", PROMPT, "-n", "24", "--temp", "0", "-c", "512", "--no-display-prompt")
    f32 = invoke(*base, "-ctk", "f32", "-ctv", "f32", "-t", "1", "-tb", "2")
    assert f32.exit_code == 0, f32.output
    assert f32.stdout == GREEDY["text"] + "\n"  # llama.cpp's greedy text with either cache type
    bad = invoke(*base, "-ctk", "q8_0")
    assert bad.exit_code == 1 and "--cache-type-k q8_0: unsupported KV cache type; use f16 or f32" in bad.output
    bad = invoke(*base, "-tb", "0")
    assert bad.exit_code == 1 and "--threads-batch 0: give at least 1" in bad.output
    torch_only = invoke(*base, "--backend", "torch")
    assert torch_only.exit_code == 0 and torch_only.stdout == GREEDY["text"] + "\n"


def test_info_system_names_the_kernels() -> None:
    r = invoke("info", "--system", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["threads"]["default"] >= 1 and d["torch"]
    assert d["kernels"]["Q8_K"] == "torch-dequant"  # no matmul kernel: an activation format
    if d["native"]["loaded"]:
        assert d["kernels"]["Q4_1"] == d["kernels"]["Q6_K"] == f"native-{d['native']['variant']}"
    else:
        assert d["kernels"]["Q4_1"] == "torch-int4pack" and d["native"]["reason"]
    assert set(d["native_variants"]) <= {"avx512", "avx2", "scalar"}


def test_run_says_once_when_native_kernels_are_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from llamakit.kernels import registry

    down = registry.NativeStatus(None, None, "no C compiler found (cc, gcc or clang)")
    monkeypatch.setattr(registry, "native_status", lambda variant=None: down)
    r = invoke("run", "-m", str(TINY_GGUF / "quantize-Q4_1.gguf"), "-p", PROMPT, "-n", "4", "--temp", "0",
               "-c", "128", "--no-perf")
    assert r.exit_code == 0, r.output
    line = "llamakit: native kernels unavailable (no C compiler found (cc, gcc or clang)); using torch kernels (slower)"
    assert r.stderr.splitlines().count(line) == 1
