"""Chat templates: `tokenizer.chat_template` (Jinja) rendered in a sandbox, as llama.cpp --jinja does.

The environment matches what Hugging Face's apply_chat_template and llama.cpp's minja engine offer templates:
trim_blocks and lstrip_blocks on, the loop-controls extension, a `tojson` filter that keeps non-ASCII text,
`raise_exception(msg)` and `strftime_now(fmt)`, and the variables messages, add_generation_prompt, bos_token,
eos_token (plus any extra keyword, e.g. tools). ImmutableSandboxedEnvironment keeps a template from reaching
Python internals or mutating the messages.

Like llama.cpp (common/chat.cpp `apply`), a leading BOS text and a trailing EOS text are cut from the result
so that tokenizing with add_special=True never doubles them, but only when the model actually adds that token
(add_bos / add_eos): llama.cpp c392e50 cuts them unconditionally, which drops SmolLM2's first `<|im_start|>`
(its BOS token) and was fixed upstream later (ggml-org/llama.cpp#15086). A model without a template gets ChatML
(`<|im_start|>role\\ncontent<|im_end|>\\n`), llama.cpp's default; so does one whose template does not parse.

Built-in templates (`BUILTIN_TEMPLATES`, chosen with `--chat-template NAME` / `Llama(chat_format=NAME)`) are
written here from the formats' published examples: chatml, llama2, llama3, mistral (v0.1 instruct), zephyr,
phi3, gemma. Each writes `bos_token` where its format has one, which the strip above removes when the model adds
BOS itself: one BOS, never two (llama-cpp-python issue 1501).
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime
from typing import Any, Mapping, Sequence

from ..errors import InputError

CHATML_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}"
)


_SYSTEM_INTO_FIRST_USER = (  # formats without a system role: the system text opens the first user message
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set sys = messages[0].content -%}{%- set msgs = messages[1:] -%}"
    "{%- else -%}{%- set sys = none -%}{%- set msgs = messages -%}{%- endif -%}"
)

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": CHATML_TEMPLATE,
    # Llama 2 chat: <s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST] A </s><s>[INST] U2 [/INST]
    "llama2": _SYSTEM_INTO_FIRST_USER + (
        "{%- for m in msgs -%}"
        "{%- if m.role == 'user' -%}"
        "{%- if loop.first and sys is not none -%}"
        "{{- bos_token + '[INST] <<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + m.content + ' [/INST]' -}}"
        "{%- else -%}{{- bos_token + '[INST] ' + m.content + ' [/INST]' -}}{%- endif -%}"
        "{%- elif m.role == 'assistant' -%}{{- ' ' + m.content + ' ' + eos_token -}}"
        "{%- else -%}{{- raise_exception('llama2 has roles system (first), user and assistant only') -}}"
        "{%- endif -%}{%- endfor -%}"),
    # Llama 3 instruct: <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>...
    "llama3": (
        "{{- bos_token -}}"
        "{%- for m in messages -%}"
        "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content | trim + '<|eot_id|>' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"),
    # Mistral 7B Instruct v0.1: <s>[INST] U [/INST]A</s> [INST] U2 [/INST]
    "mistral": _SYSTEM_INTO_FIRST_USER + (
        "{{- bos_token -}}"
        "{%- for m in msgs -%}"
        "{%- if m.role == 'user' -%}"
        "{{- '[INST] ' + (sys + '\\n\\n' if loop.first and sys is not none else '') + m.content + ' [/INST]' -}}"
        "{%- elif m.role == 'assistant' -%}{{- m.content + eos_token + ' ' -}}"
        "{%- else -%}{{- raise_exception('mistral has roles system (first), user and assistant only') -}}"
        "{%- endif -%}{%- endfor -%}"),
    # Zephyr: <|system|>\nS</s>\n<|user|>\nU</s>\n<|assistant|>\n
    "zephyr": (
        "{%- for m in messages -%}{{- '<|' + m.role + '|>\\n' + m.content + eos_token + '\\n' -}}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"),
    # Phi-3: <|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\n
    "phi3": (
        "{%- for m in messages -%}{{- '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' -}}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"),
    # Gemma: <bos><start_of_turn>user\nU<end_of_turn>\n<start_of_turn>model\n (no system role)
    "gemma": _SYSTEM_INTO_FIRST_USER + (
        "{{- bos_token -}}"
        "{%- for m in msgs -%}"
        "{%- set role = 'model' if m.role == 'assistant' else m.role -%}"
        "{{- '<start_of_turn>' + role + '\\n' + (sys + '\\n\\n' if loop.first and sys is not none else '')"
        " + m.content | trim + '<end_of_turn>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"),
}
_ALIASES = {"llama-2": "llama2", "llama-3": "llama3", "mistral-instruct": "mistral", "mistral-v1": "mistral",
            "phi-3": "phi3"}


def resolve_template(spec: str) -> str:
    """A built-in template's name (or alias), or the path of a file holding a Jinja template -> its source."""
    import os

    name = _ALIASES.get(spec.lower(), spec.lower())
    if name in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name]
    if os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{spec}: cannot read the chat template file ({e})") from None
    raise InputError(f"unknown chat template {spec!r}: use one of {', '.join(BUILTIN_TEMPLATES)} "
                     f"or the path of a file with a Jinja template")


def check_messages(messages: Any) -> None:
    """Messages must be a list of {'role': str, 'content': str} mappings."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InputError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
                         f"{type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise InputError(f"chat message {i} must be a mapping with 'role' and 'content', got {m!r}")
        if not isinstance(m.get("content"), str):
            raise InputError(f"chat message {i} ({m['role']}): 'content' must be a string, got "
                             f"{type(m.get('content')).__name__}")


def _environment() -> Any:
    try:
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # pragma: no cover - jinja2 is a dependency
        raise InputError("chat templates need the jinja2 package: pip install jinja2") from e

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_chat(template: str | None, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool,
                bos_token: str, eos_token: str, strip_bos: bool, strip_eos: bool, **extra: Any) -> str:
    """Render `messages` ([{'role': ..., 'content': ...}, ...]) with `template` (None: ChatML); cut a leading
    `bos_token` text if strip_bos and a trailing `eos_token` text if strip_eos."""
    import jinja2

    check_messages(messages)
    env = _environment()
    source = template if template else CHATML_TEMPLATE
    try:
        compiled = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        warnings.warn(f"the model's chat template does not parse ({e}); using ChatML as llama.cpp does",
                      stacklevel=3)
        compiled = env.from_string(CHATML_TEMPLATE)
    try:
        out = compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                              bos_token=bos_token, eos_token=eos_token, **extra)
    except jinja2.TemplateError as e:
        raise InputError(f"the chat template failed: {e}") from None
    if strip_bos and bos_token and out.startswith(bos_token):
        out = out[len(bos_token):]
    if strip_eos and eos_token and out.endswith(eos_token):
        out = out[: -len(eos_token)]
    return out
