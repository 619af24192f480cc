"""The real terminal program under pexpect: `llamakit run -cnv` (turns, Ctrl-C, /save, /load in a new process)
and `-i -r "User:"` with llama.cpp's chat-with-Bob prompt. Runs `python -m llamakit.cli` from this checkout."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

from .conftest import ROOT

pexpect = pytest.importorskip("pexpect")

MARK = "\r\n> "  # the input marker on a line of its own (the sampler chain line also contains "> ")


def spawn(tmp_path: Path, model: Path, *args: str):  # type: ignore[no-untyped-def]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}  # readline history goes to HOME
    return pexpect.spawn(sys.executable, ["-m", "llamakit.cli", "run", "-m", str(model), "--temp", "0", "-c", "1024",
                                          "-t", "1", "--no-perf", *args],
                         env=env, encoding="utf-8", timeout=240, cwd=str(tmp_path))


def answer_of(child, question: str) -> str:  # type: ignore[no-untyped-def]
    child.sendline(question)
    child.expect(MARK)
    text = child.before.replace("\r\n", "\n")
    assert text.startswith(question + "\n"), text
    return text[len(question) + 1:]


def test_conversation_turns_interrupt_save_and_load(smollm2_gguf, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    session = tmp_path / "chat.lksession"
    c = spawn(tmp_path, smollm2_gguf, "-cnv", "-n", "24")
    c.expect(MARK)
    a1 = answer_of(c, "What is the capital of France?")
    assert "Paris" in a1
    c.sendline("Write a very long story about a dragon and a knight.")
    c.expect(r"knight\.\r\n[^\r\n]*?[A-Za-z]+ [A-Za-z]+ ")  # after the echoed line: the answer has begun
    c.sendintr()  # Ctrl-C: stop the answer, back to the prompt (the process lives on)
    c.expect(MARK, timeout=60)
    assert c.isalive()
    c.sendline(f"/save {session}")
    c.expect(MARK)
    assert re.search(r"saved session to .*chat\.lksession \(\d+ tokens, 4 messages\)", c.before)
    c.sendline("/exit")
    c.expect(pexpect.EOF)
    assert (tmp_path / ".llamakit_history").read_text().count("/save") == 1  # readline history on a TTY

    c = spawn(tmp_path, smollm2_gguf, "-cnv", "-n", "24")
    c.expect(MARK)
    c.sendline(f"/load {session}")
    c.expect(MARK)
    assert re.search(r"loaded session .*chat\.lksession \(\d+ tokens, 4 messages\)", c.before)
    a3 = answer_of(c, "What was the city you named?")
    c.sendeof()  # Ctrl-D ends
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0

    # the third answer continues the saved conversation: it is what the API answers for those messages
    from llamakit import Llama
    from llamakit.runtime.session import read_session

    messages = read_session(session).messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "What is the capital of France?" and "Paris" in messages[1]["content"]
    assert 0 < len(messages[3]["content"]) < 200  # the interrupted answer, as far as it got
    n = torch.get_num_threads()
    try:
        with Llama(str(smollm2_gguf), n_ctx=1024, n_threads=1, verbose=False) as llm:
            want = llm.create_chat_completion(messages + [{"role": "user", "content": "What was the city you named?"}],
                                              temperature=0, max_tokens=24)["choices"][0]["message"]["content"]
            fresh = llm.create_chat_completion([{"role": "user", "content": "What was the city you named?"}],
                                               temperature=0, max_tokens=24)["choices"][0]["message"]["content"]
    finally:
        torch.set_num_threads(n)
    assert a3.rstrip("\n") == want and want != fresh


def test_chat_with_bob_stops_at_the_reverse_prompt(smollm2_gguf, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c = spawn(tmp_path, smollm2_gguf, "-i", "-r", "User:", "--in-prefix", " ", "--in-suffix", "Bob:",
              "-f", "chat-with-bob", "-n", "64")
    c.expect("Moscow, the capital of Russia.\r\nUser: ")  # the packaged prompt, then waiting at "User:"
    for question in ("Hello, Bob.", "What is the capital of France?", "Thank you, Bob."):
        c.sendline(question)
        c.expect("User: ")  # every answer ends at the reverse prompt, which waits for input again
        text = c.before.replace("\r\n", "\n")
        assert text.startswith(question + "\nBob:"), text
        answer = text[len(question) + 5:]
        assert answer.strip() and "User" not in answer, text
    c.sendline("/exit")
    c.expect(pexpect.EOF)
