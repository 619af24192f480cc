"""Built-in chat templates render the formats' published examples; --chat-template / chat_format pick them;
never a doubled BOS."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamakit.errors import InputError
from llamakit.gguf import GGUFReader
from llamakit.tokenizer import Tokenizer
from llamakit.tokenizer.chat import BUILTIN_TEMPLATES, render_chat, resolve_template

from .conftest import VOCAB

SYS = {"role": "system", "content": "You are a helpful assistant."}
CONV = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"},
        {"role": "user", "content": "How are you?"}]

# (template, bos text, eos text, messages, expected) from each format's model card / published chat example
CASES = {
    "chatml": ("", "", [SYS, *CONV],
               "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
               "<|im_start|>assistant\nHi there!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
               "<|im_start|>assistant\n"),
    "llama2": ("<s>", "</s>", [SYS, *CONV],
               "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello [/INST] Hi there! </s>"
               "<s>[INST] How are you? [/INST]"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", [SYS, *CONV],
               "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHi there!<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    # Hugging Face's chat-templating guide, mistralai/Mistral-7B-Instruct-v0.1
    "mistral": ("<s>", "</s>", [{"role": "user", "content": "Hello, how are you?"},
                                {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
                                {"role": "user", "content": "I'd like to show off how chat templating works!"}],
                "<s>[INST] Hello, how are you? [/INST]I'm doing great. How can I help you today?</s> "
                "[INST] I'd like to show off how chat templating works! [/INST]"),
    # the same guide, HuggingFaceH4/zephyr-7b-beta
    "zephyr": ("<s>", "</s>", [{"role": "system",
                                "content": "You are a friendly chatbot who always responds in the style of a pirate"},
                               {"role": "user", "content": "How many helicopters can a human eat in one sitting?"}],
               "<|system|>\nYou are a friendly chatbot who always responds in the style of a pirate</s>\n"
               "<|user|>\nHow many helicopters can a human eat in one sitting?</s>\n<|assistant|>\n"),
    "phi3": ("<s>", "<|endoftext|>", [SYS, *CONV],
             "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there!<|end|>\n"
             "<|user|>\nHow are you?<|end|>\n<|assistant|>\n"),
    # Gemma's model card: no system role, the system text opens the first user turn
    "gemma": ("<bos>", "<eos>", [SYS, *CONV],
              "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHello<end_of_turn>\n"
              "<start_of_turn>model\nHi there!<end_of_turn>\n<start_of_turn>user\nHow are you?<end_of_turn>\n"
              "<start_of_turn>model\n"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_builtin_renders_published_example(name: str) -> None:
    bos, eos, messages, want = CASES[name]
    assert render_chat(BUILTIN_TEMPLATES[name], messages, True, bos, eos, strip_bos=False, strip_eos=False) == want


def test_every_builtin_is_covered_and_aliases() -> None:
    assert set(BUILTIN_TEMPLATES) == set(CASES)
    assert resolve_template("llama-2") == BUILTIN_TEMPLATES["llama2"]
    assert resolve_template("ChatML") == BUILTIN_TEMPLATES["chatml"]


def test_template_file_and_unknown_name(tmp_path: Path) -> None:
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    assert resolve_template(str(f)).startswith("{% for m")
    with pytest.raises(InputError, match="unknown chat template 'vicuna-9'.*chatml, llama2"):
        resolve_template("vicuna-9")


def test_no_doubled_bos() -> None:
    """llama-cpp-python issue 1501: a template writing the BOS text plus tokenize adding BOS gave two BOS."""
    with GGUFReader(VOCAB / "ggml-vocab-llama-spm.gguf") as r:
        tok = Tokenizer.from_metadata(r.metadata)  # add_bos: true, BOS <s> = 1
    assert tok.add_bos and tok.bos_id == 1
    for name in ("llama2", "mistral"):
        text = tok.apply_chat_template(CONV, template=BUILTIN_TEMPLATES[name])
        ids = tok.encode(text, add_special=True, parse_special=True)
        assert ids[0] == 1 and ids[1] != 1, name
        # llama2 opens every user turn with <s>: exactly one per user turn, the model's own first
        assert ids.count(1) == (2 if name == "llama2" else 1), name


@pytest.mark.parametrize("messages,message", [
    ("Hello", "must be a list"),
    ([{"role": "user"}], "'content' must be a string"),
    ([{"content": "x"}], "'role'"),
    ([["user", "hi"]], "mapping"),
])
def test_messages_of_the_wrong_shape(messages, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=message):
        render_chat(None, messages, True, "", "", False, False)
