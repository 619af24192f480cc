"""`Llama` on SmolLM2 (chat, streaming, prefix reuse) and bad input; the lazy top-level API."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from llamakit import Llama, LlamakitError
from llamakit.errors import InputError
from llamakit.runtime.completion import Completer, Request
from llamakit.runtime.sampling import SamplingParams

from .conftest import ROOT, TINY_GGUF

F32 = str(TINY_GGUF / "convert-f32.gguf")
Q = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol(smollm2_gguf):  # type: ignore[no-untyped-def]
    n = torch.get_num_threads()
    llm = Llama(str(smollm2_gguf), n_ctx=512, seed=3, n_threads=1, verbose=False)
    yield llm
    llm.close()
    torch.set_num_threads(n)


def test_chat_stream_concatenates_to_the_answer(smol: Llama) -> None:
    full = smol.create_chat_completion(Q, max_tokens=24, temperature=0)
    assert full["object"] == "chat.completion" and full["id"].startswith("chatcmpl-")
    choice = full["choices"][0]
    assert choice["message"]["role"] == "assistant" and "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    chunks = list(smol.create_chat_completion(Q, max_tokens=24, temperature=0, stream=True))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == \
        choice["finish_reason"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == choice["message"]["content"]
    u = full["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] > 0


def test_second_chat_turn_evaluates_only_its_new_tokens(smol: Llama) -> None:
    smol.reset()
    first = smol.create_chat_completion(Q, max_tokens=16, temperature=0)
    held = smol.input_ids
    messages = [*Q, first["choices"][0]["message"], {"role": "user", "content": "And Germany?"}]
    prompt = smol.tokenize(smol.apply_chat_template(messages), special=True)
    shared = next(i for i, (a, b) in enumerate(zip(held + [-1], prompt)) if a != b)
    assert shared > len(smol.tokenize(smol.apply_chat_template(Q), special=True))  # the first turn is reused
    before = smol.perf.n_p_eval + smol.perf.n_eval
    second = smol.create_chat_completion(messages, max_tokens=1, temperature=0)
    # one decode of the new suffix, nothing else (max_tokens=1: the sampled token is not decoded)
    assert smol.perf.n_p_eval + smol.perf.n_eval - before == len(prompt) - shared
    assert second["usage"]["prompt_tokens"] == len(prompt)


def test_completion_shape_echo_logprobs_and_stop(smol: Llama) -> None:
    base = smol("The capital of France is", max_tokens=6, temperature=0)
    text = base["choices"][0]["text"]
    assert base["object"] == "text_completion" and base["choices"][0]["finish_reason"] == "length"
    cut = text.strip().split()[1]  # a word in the middle of the answer
    stopped = smol("The capital of France is", max_tokens=6, temperature=0, stop=[cut], echo=True, logprobs=2)
    c = stopped["choices"][0]
    assert c["text"] == "The capital of France is" + text[: text.index(cut)] and c["finish_reason"] == "stop"
    lp = c["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) and all(v <= 0 for v in lp["token_logprobs"])
    assert all(len(t) <= 2 for t in lp["top_logprobs"])
    chunks = list(smol("The capital of France is", max_tokens=6, temperature=0, stream=True))
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == text


def test_tokenize_detokenize(smol: Llama) -> None:
    ids = smol.tokenize(b"Hello world")
    assert smol.detokenize(ids) == b"Hello world" and ids == smol.tokenize("Hello world")
    assert smol.tokenize("<|im_start|>", special=True) == [1] and len(smol.tokenize("<|im_start|>")) > 1
    assert smol.n_vocab() == 49152 and smol.token_bos() == 1 and smol.token_eos() == 2 and smol.n_ctx() == 512


def test_bad_input_is_typed(smol: Llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="unknown chat template 'nope'"):
        Llama(F32, chat_format="nope", verbose=False)
    with pytest.raises(InputError, match="n_ctx=-1"):
        Llama(F32, n_ctx=-1, verbose=False)
    with pytest.raises(InputError, match="no such model file"):
        Llama(tmp_path / "missing.gguf")
    with pytest.raises(InputError, match="must be a list"):
        smol.create_chat_completion("hello")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="'content' must be a string"):
        smol.create_chat_completion([{"role": "user", "content": 5}])
    with pytest.raises(InputError, match=r"prompt is too long \(\d+ tokens, max 508\)"):
        smol("word " * 600, max_tokens=4)
    with pytest.raises(LlamakitError, match="prompt must be a string or a list of token ids"):
        smol(3.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown argument"):
        Llama(F32, n_ctxx=5, verbose=False)


def test_n_ctx_zero_is_the_training_context() -> None:
    with Llama(F32, n_ctx=0, verbose=False) as llm:  # llama-cpp-python: 0 = from the model
        assert llm.n_ctx() == 512


def test_stop_strings_never_leak_a_partial_match() -> None:
    """Every stop string that cuts the greedy text: the streamed pieces never contain any part of it."""
    with Llama(F32, n_ctx=128, verbose=False) as llm:
        comp: Completer = llm._comp
        prompt = llm.tokenize("Hello there")
        greedy = SamplingParams(temp=0.0)
        full = comp.complete(Request(prompt, max_tokens=20, sampling=greedy)).text
        assert len(full) > 20
        for start in range(2, 12, 3):
            stop = full[start:start + 4]
            s = comp.stream(Request(prompt, max_tokens=20, sampling=greedy, stop=("zzzz", stop)))
            pieces = list(s)
            assert "".join(pieces) == full[:full.index(stop)] == s.result.text
            assert s.result.stop_reason == "stop" and s.result.stopped_by == stop


def test_lazy_api_and_function_names_survive_submodule_imports() -> None:
    code = ("import sys, llamakit\nassert 'torch' not in sys.modules and 'llamakit.api' not in sys.modules\n"
            "import llamakit.convert.pipeline, llamakit.quantize\n"
            "from llamakit import convert, quantize, Llama, LlamakitError\n"
            "import types\nassert isinstance(convert, types.FunctionType) and convert.__module__ == 'llamakit.api'\n"
            "assert isinstance(quantize, types.FunctionType) and llamakit.quantize is quantize\n"
            "from llamakit.quantize import plan_quantize\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


def test_convert_and_quantize_raise_typed_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from llamakit import convert, quantize

    with pytest.raises(LlamakitError):
        convert(tmp_path / "no-such-dir")
    with pytest.raises(LlamakitError, match="Q9_9|unknown|type"):
        quantize(F32, tmp_path / "o.gguf", "q9_9")
    out = quantize(str(TINY_GGUF / "convert-f16.gguf"), tmp_path / "q.gguf", "q8_0")
    assert out == tmp_path / "q.gguf" and out.stat().st_size > 0
