"""Chat templates: the model's Jinja template in a sandbox, ChatML fallback, BOS/EOS handling."""

from __future__ import annotations

import pytest

from llamakit.errors import InputError
from llamakit.gguf import GGUFReader
from llamakit.tokenizer import Tokenizer

from .conftest import VOCAB

MSGS = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def smol(smollm2_gguf) -> Tokenizer:
    with GGUFReader(smollm2_gguf) as r:
        return Tokenizer.from_metadata(r.metadata)


@pytest.fixture(scope="module")
def spm_md() -> dict:
    with GGUFReader(VOCAB / "ggml-vocab-llama-spm.gguf") as r:
        return dict(r.metadata)


def test_smollm2_template(smol: Tokenizer) -> None:
    # the template adds its default system prompt when the first message is not a system one
    assert smol.apply_chat_template(MSGS) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    out = smol.apply_chat_template([{"role": "system", "content": "S"}, *MSGS], add_generation_prompt=False)
    assert out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    # SmolLM2's BOS token is <|im_start|> but the model does not add it: the first marker must stay
    ids = smol.encode(out, add_special=True, parse_special=True)
    assert ids[0] == 1 and ids.count(1) == 2 and ids[-2:] == [2, 198]


def test_chatml_fallback_and_bos_strip(spm_md: dict) -> None:
    tok = Tokenizer.from_metadata(spm_md)  # no chat template in this vocabulary
    assert tok.chat_template is None
    assert tok.apply_chat_template(MSGS) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(MSGS, add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"
    # a template that writes bos_token: the model adds BOS itself (add_bos), so the text loses it -> one BOS
    tmpl = "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}{{ eos_token }}"
    tok = Tokenizer.from_metadata({**spm_md, "tokenizer.chat_template": tmpl})
    text = tok.apply_chat_template(MSGS)
    assert text == "[INST] Hi [/INST]</s>"  # add_eos is false: the EOS text stays
    assert tok.encode(text, parse_special=True).count(1) == 1


def test_template_features(spm_md: dict) -> None:
    tmpl = ("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m | tojson }}{% endfor %}"
            "{{ extra }}{{ strftime_now('%Y') | length }}")
    tok = Tokenizer.from_metadata({**spm_md, "tokenizer.chat_template": tmpl})
    msgs = [{"role": "user", "content": "é"}, {"role": "user", "content": "x"}]
    assert tok.apply_chat_template(msgs, extra="!") == '{"role": "user", "content": "é"}!4'
    with pytest.raises(InputError, match="roles must alternate"):
        tok.apply_chat_template(msgs, template="{{ raise_exception('roles must alternate') }}")


def test_sandbox_blocks_python_internals(spm_md: dict) -> None:
    tok = Tokenizer.from_metadata(spm_md)
    with pytest.raises(InputError):
        tok.apply_chat_template(MSGS, template="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InputError):  # immutable sandbox: templates cannot modify the messages
        tok.apply_chat_template(MSGS, template="{{ messages.append(1) }}")


def test_broken_template_falls_back_to_chatml(spm_md: dict) -> None:
    tok = Tokenizer.from_metadata({**spm_md, "tokenizer.chat_template": "{% for m in messages %}"})
    with pytest.warns(UserWarning, match="ChatML"):
        assert tok.apply_chat_template(MSGS).startswith("<|im_start|>user\nHi")


def test_bad_messages(spm_md: dict) -> None:
    with pytest.raises(InputError, match="role"):
        Tokenizer.from_metadata(spm_md).apply_chat_template([{"content": "x"}])
