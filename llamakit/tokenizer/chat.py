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

    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise InputError(f"chat message {i} must be a mapping with 'role' and 'content', got {m!r}")
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
