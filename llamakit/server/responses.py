"""OpenAI response bodies (chat.completion, chat.completion.chunk, text_completion) from scheduler events.

Log-probabilities are those of the model's distribution (log-softmax of the raw logits, before the sampler's
penalties, top-k/top-p and temperature), as OpenAI reports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from .scheduler import Done, Token


def usage_of(done: Done) -> dict:
    return {"prompt_tokens": done.n_prompt, "completion_tokens": done.n_generated,
            "total_tokens": done.n_prompt + done.n_generated,
            "prompt_tokens_details": {"cached_tokens": done.n_cached}}


def _finish(done: Done) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def _scored(tokens: Sequence[Token], backend: Any) -> list[Token]:
    """Tokens that carry a log-probability: real generated tokens, not end-of-generation ones."""
    return [t for t in tokens if t.logprob is not None and t.token >= 0 and t.token not in backend.eog_ids]


def _chat_logprobs(tokens: Sequence[Token], backend: Any, top: Optional[int]) -> dict:
    content = []
    for t in _scored(tokens, backend):
        lp, alts = t.logprob  # type: ignore[misc]
        piece = backend.piece(t.token)
        content.append({"token": piece, "logprob": lp, "bytes": list(backend.piece_bytes(t.token)),
                        "top_logprobs": [{"token": backend.piece(i), "logprob": v,
                                          "bytes": list(backend.piece_bytes(i))} for i, v in alts[: top or 0]]})
    return {"content": content}


def _completion_logprobs(tokens: Sequence[Token], backend: Any, offset: int = 0) -> dict:
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in _scored(tokens, backend):
        lp, alts = t.logprob  # type: ignore[misc]
        out["tokens"].append(backend.piece(t.token))
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append({backend.piece(i): v for i, v in alts})
        out["text_offset"].append(offset)
        offset += len(t.text)
    return out


# ------------------------------------------------------------------------------------------------ chat
def chat_response(cid: str, created: int, model: str, tokens: Sequence[Token], done: Done, backend: Any,
                  logprobs: bool, top: Optional[int]) -> dict:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "".join(t.text for t in tokens)},
                              "finish_reason": _finish(done), "logprobs": None}
    if logprobs:
        choice["logprobs"] = _chat_logprobs(tokens, backend, top)
    return {"id": cid, "object": "chat.completion", "created": created, "model": model, "choices": [choice],
            "usage": usage_of(done)}


def _chat_chunk(cid: str, created: int, model: str, delta: dict, finish: Optional[str],
                logprobs: Optional[dict] = None) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]}


def chat_first(cid: str, created: int, model: str) -> dict:
    return _chat_chunk(cid, created, model, {"role": "assistant", "content": ""}, None)


def chat_delta(cid: str, created: int, model: str, ev: Token, backend: Any, logprobs: bool,
               top: Optional[int]) -> Optional[dict]:
    lp = _chat_logprobs([ev], backend, top) if logprobs else None
    if not ev.text and not (lp and lp["content"]):
        return None
    return _chat_chunk(cid, created, model, {"content": ev.text}, None, lp)


def chat_final(cid: str, created: int, model: str, done: Done, usage: bool) -> list[dict]:
    out = [_chat_chunk(cid, created, model, {}, _finish(done))]
    if usage:  # stream_options.include_usage: one more chunk with empty choices
        out.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": usage_of(done)})
    return out


# ------------------------------------------------------------------------------------------ completions
def completion_response(cid: str, created: int, model: str, tokens: Sequence[Token], done: Done, backend: Any,
                        logprobs: Optional[int]) -> dict:
    choice = {"index": 0, "text": "".join(t.text for t in tokens), "finish_reason": _finish(done),
              "logprobs": None if logprobs is None else _completion_logprobs(tokens, backend)}
    return {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": [choice],
            "usage": usage_of(done)}


def _completion_chunk(cid: str, created: int, model: str, text: str, finish: Optional[str],
                      logprobs: Optional[dict]) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}]}


def completion_delta(cid: str, created: int, model: str, ev: Token, backend: Any, logprobs: Optional[int]
                     ) -> Optional[dict]:
    lp = None if logprobs is None else _completion_logprobs([ev], backend)
    if not ev.text and not (lp and lp["tokens"]):
        return None
    return _completion_chunk(cid, created, model, ev.text, None, lp)


def completion_final(cid: str, created: int, model: str, done: Done, usage: bool) -> list[dict]:
    out = [_completion_chunk(cid, created, model, "", _finish(done), None)]
    if usage:
        out.append({"id": cid, "object": "text_completion", "created": created, "model": model,
                    "choices": [], "usage": usage_of(done)})
    return out
