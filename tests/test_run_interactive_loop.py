"""The interactive loop in process with scripted input (tiny llama): multi-line input, commands, errors that
keep the session going, the context following the conversation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llamakit.runtime.completion import Completer
from llamakit.runtime.interactive import ChatOptions, Interactive
from llamakit.runtime.loader import load_model
from llamakit.runtime.sampling import SamplingParams
from llamakit.runtime.completion import prepare_context
from llamakit.tokenizer import Tokenizer

from .conftest import TINY_GGUF

GREEDY = SamplingParams(temp=0.0)


@pytest.fixture(scope="module")
def comp():  # type: ignore[no-untyped-def]
    with load_model(TINY_GGUF / "convert-f32.gguf") as lm:
        yield Completer(prepare_context(lm, 256, 512, 512), Tokenizer.from_metadata(lm.metadata))


def drive(comp: Completer, opts: ChatOptions, lines: list[str]) -> tuple[Interactive, list[str], list[str], list[str]]:
    feed = iter(lines)
    markers: list[str] = []
    out: list[str] = []
    log: list[str] = []

    def read(marker: str) -> str | None:
        markers.append(marker)
        return next(feed, None)

    it = Interactive(comp, opts, lambda: "model-id", read, out.append, log.append)
    it.run()
    return it, markers, out, log


def test_conversation_multiline_commands_and_errors(comp: Completer, tmp_path: Path) -> None:
    comp.reset()
    opts = ChatOptions(conversation=True, n_predict=4, sampling=GREEDY, system_prompt="S")
    it, markers, out, log = drive(comp, opts, [
        "first line \\", "second line", "/load " + str(tmp_path / "missing"), "/save", "hello", "/clear", "/help",
        "   ", "/exit", "never read"])
    assert [m["role"] for m in it.messages] == ["system"]  # /clear keeps the system message only
    assert markers[:2] == ["> ", ""]  # a continued line gets no marker
    assert any("no such session file" in line for line in log) and any("/save needs a file name" in line
                                                                          for line in log)
    assert any(line.startswith("commands:") for line in log) and "conversation cleared" in log
    assert comp.tokens == []  # cleared


def test_conversation_context_follows_and_saves(comp: Completer, tmp_path: Path) -> None:
    comp.reset()
    opts = ChatOptions(conversation=True, n_predict=3, sampling=GREEDY)
    session = tmp_path / "s.lks"
    it, _, _, log = drive(comp, opts, ["one \\", "two", "three", f"/save {session}"])
    assert [m["content"] for m in it.messages if m["role"] == "user"] == ["one \ntwo", "three"]
    assert len(it.messages) == 4 and session.is_file()
    n = len(comp.tokens)
    it2, _, _, log2 = drive(comp, opts, ["/clear", f"/load {session}"])
    assert it2.messages == it.messages and len(comp.tokens) == n
    assert any("loaded session" in line and "4 messages" in line for line in log2)


def test_plain_mode_waits_at_reverse_prompt_and_appends_the_input(comp: Completer) -> None:
    comp.reset()
    opts = ChatOptions(conversation=False, prompt="Hello User:", reverse_prompts=("User:",), n_predict=3,
                       sampling=GREEDY, in_prefix=" ", in_suffix="Bot:")
    it, markers, out, _ = drive(comp, opts, ["hi"])
    assert out[0] == " Hello User:" and out[1] == " " and "Bot:" in out  # prompt (echoed as llama-cli), prefix, suffix
    assert markers == ["", ""]  # no "> " marker in plain mode; input is read at once (the prompt ends in User:)
    text = comp.tok.decode(it.history)
    # SentencePiece puts a space before each separately tokenized piece, as llama-cli's tokenize calls do
    assert re.match(r" ?Hello User: +hi\n +Bot:", text), text
