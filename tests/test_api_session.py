"""Sessions: save -> load in a new process continues exactly (logits, seeded sampling); damaged files are clear
errors that change nothing. On the tiny llama (random weights: every token matters, text does not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamakit import Llama, LlamakitError
from llamakit.errors import InputError
from llamakit.runtime.session import read_session

from .conftest import ROOT, TINY_GGUF

F32 = TINY_GGUF / "convert-f32.gguf"
F16 = TINY_GGUF / "convert-f16.gguf"
PROMPT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared, loaded machine: one thread is faster and deterministic to compare
    yield
    torch.set_num_threads(n)


def _child(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_session_resumes_exactly_in_a_new_process(tmp_path: Path) -> None:
    path = tmp_path / "s.lksession"
    with Llama(str(F32), n_ctx=128, seed=7, verbose=False) as llm:
        first = llm(PROMPT, max_tokens=6, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
        assert first["usage"]["completion_tokens"] == 6 and llm.n_tokens == len(llm.tokenize(PROMPT)) + 5
        held = llm.input_ids
        llm.save_session(path)
        nxt = llm.tokenize(" again", add_bos=False)
        logits = llm.eval(nxt)  # uninterrupted: the next tokens' logits
        llm.load_state(read_session(path))  # back to the saved point (in memory), then sample on
        second = llm(held + nxt, max_tokens=8, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    code = f"""
import json, sys, torch
torch.set_num_threads(1)
from llamakit import Llama
llm = Llama({str(F32)!r}, n_ctx=128, seed=123, verbose=False)   # another seed: the session's RNG must win
llm.load_session({str(path)!r})
n_p = llm.perf.n_p_eval
lg = llm.eval({nxt!r})
out = llm({held!r} + {nxt!r}, max_tokens=8, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
print(json.dumps({{"tokens": {len(held)} , "logits": lg.tolist(), "text": out["choices"][0]["text"],
                  "evaluated": llm.perf.n_p_eval - n_p}}))
"""
    got = json.loads(_child(code).strip().splitlines()[-1])
    assert torch.equal(torch.tensor(got["logits"], dtype=torch.float32), logits)  # bit for bit
    # the same seeded draws continue: the RNG state travelled with the session
    assert got["text"] == second["choices"][0]["text"] and got["text"]
    assert got["evaluated"] == len(nxt)  # after the load, only the new tokens were evaluated


def test_state_in_memory_and_seeded_text(tmp_path: Path) -> None:
    with Llama(str(F32), n_ctx=96, seed=5, verbose=False) as llm:
        llm(PROMPT, max_tokens=4)
        st = llm.save_state(messages=[{"role": "user", "content": "x"}])
        a = llm("more text", max_tokens=8)["choices"][0]["text"]
        assert llm.load_state(st) == [{"role": "user", "content": "x"}]
        b = llm("more text", max_tokens=8)["choices"][0]["text"]
        assert a == b
        c = llm("more text", max_tokens=8)["choices"][0]["text"]
        assert c != a  # the RNG moved on: without the restored state the draws differ


def _saved(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "s.lksession"
    with Llama(str(F32), n_ctx=64, seed=1, verbose=False) as llm:
        llm(PROMPT, max_tokens=3)
        llm.save_session(path)
    return path, path.read_bytes()


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[: len(b) // 2], "checksum mismatch"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b[:400] + bytes([b[400] ^ 1]) + b[401:], "checksum mismatch"),
    (lambda b: b"NOTASESS" + b[8:], "wrong magic"),
    (lambda b: b"", "wrong magic or too short"),
])
def test_damaged_session_is_refused_and_changes_nothing(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    path, data = _saved(tmp_path)
    path.write_bytes(damage(data))
    with Llama(str(F32), n_ctx=64, seed=1, verbose=False) as llm:
        llm("hello", max_tokens=2)
        before, kv = llm.input_ids, llm._ctx.kv_export()
        with pytest.raises(InputError, match=message):
            llm.load_session(path)
        assert llm.input_ids == before
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(kv, llm._ctx.kv_export()))


def test_session_of_another_model_or_context(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    with Llama(str(F16), n_ctx=64, verbose=False) as other:
        with pytest.raises(InputError, match="another model"):
            other.load_session(path)
    with Llama(str(F32), n_ctx=8, verbose=False) as small:
        with pytest.raises(InputError, match="the context only 8"):
            small.load_session(path)
    with Llama(str(F32), n_ctx=64, verbose=False, cache_dtype=torch.float16) as half:
        with pytest.raises(InputError, match="KV cache is float32"):
            half.load_session(path)
    with pytest.raises(LlamakitError, match="no such session file"):
        read_session(tmp_path / "missing")


def test_session_file_has_no_pickle(tmp_path: Path) -> None:
    path, data = _saved(tmp_path)
    assert data[:8] == b"LKSESS\x00\x01" and b"\x80\x04\x95" not in data[:64]  # no pickle protocol header
    st = read_session(path)
    assert st.kv[0][0].shape[1] == len(st.tokens) and st.kv[0][0].dtype == torch.float32
