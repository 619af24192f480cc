"""Request bodies of the OpenAI API (and llama-server's /tokenize, /detokenize) as pydantic models.

Strict types (a string where a number belongs is a 400, not a silent conversion), unknown fields ignored (clients
send many we do not use). Sampling fields left out take llama-server's defaults (temperature 0.8, top_p 0.95,
top_k 40, min_p 0.05), not OpenAI's, since that is what a llama.cpp user expects from a local server.
Responses are built as plain dicts in app.py, in OpenAI's shapes.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Body):
    type: str
    text: Optional[str] = None


class ChatMessage(_Body):
    role: str
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None

    def text(self) -> str:
        """The content as one string (text parts joined; other parts such as images are not supported)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=0)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_k: Optional[int] = None  # llama-server's extension
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)  # llama-server's extension
    repeat_penalty: Optional[float] = Field(default=None, ge=0.0)  # llama-server's extension
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(default=1, ge=1, le=1)
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[int], list[str]]
    logprobs: Optional[int] = Field(default=None, ge=0, le=5)
    echo: bool = False


class EmbeddingRequest(_Body):
    input: Union[str, list[str], list[int], list[list[int]]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[str] = None


class TokenizeRequest(_Body):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(_Body):
    tokens: list[int]
