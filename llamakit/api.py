"""The Python API: llama-cpp-python's `Llama` (names, defaults, OpenAI-shaped results) over llamakit's runtime,
plus `convert` and `quantize` as functions.

    from llamakit import Llama
    llm = Llama("model.gguf", n_ctx=2048, seed=42)
    out = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\\n"])
    print(out["choices"][0]["text"])
    chat = llm.create_chat_completion([{"role": "user", "content": "Hi!"}], max_tokens=64)
    print(chat["choices"][0]["message"]["content"])

Every request goes through one `Completer` (runtime/completion.py): a prompt that starts with what the context
already holds (the same conversation, one more turn) evaluates only its new tokens. Errors are LlamakitError
subclasses (InputError for bad arguments, OutOfMemoryError when the model or cache does not fit), never an exit.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError, LlamakitError, OutOfMemoryError

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama-cpp-python's: a random seed

__all__ = ["LLAMA_DEFAULT_SEED", "Llama", "LlamakitError", "convert", "packaged_prompt", "quantize"]


def packaged_prompt(name: str) -> str:
    """The text of a prompt shipped with llamakit (llamakit/prompts/NAME.txt, e.g. "chat-with-bob"), one
    trailing newline dropped as `-f` does."""
    from importlib.resources import files

    res = files("llamakit").joinpath("prompts", f"{name}.txt")
    if not res.is_file():
        raise InputError(f"no packaged prompt named {name!r} (have: chat-with-bob)")
    text = res.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def _oom(e: BaseException, what: str) -> OutOfMemoryError:
    return OutOfMemoryError(f"{what}: out of memory ({e}); use a smaller n_ctx, fewer n_gpu_layers or a smaller "
                            f"model")


_OOM_TYPES: tuple[type[BaseException], ...] = (MemoryError,)


class Llama:
    """A loaded model and one context, with llama-cpp-python's API.

    >>> llm = Llama(path, n_ctx=512, seed=1, verbose=False)
    >>> llm.tokenize(b"Hello")            # ids, BOS first when the model adds one
    >>> llm("Once upon a time", max_tokens=16, temperature=0)["choices"][0]["text"]
    >>> state = llm.save_state(); ...; llm.load_state(state)        # in memory
    >>> llm.save_session("chat.lksession"); llm.load_session("chat.lksession")   # on disk
    """

    def __init__(self, model_path: str | Path, *, n_ctx: int = 512, n_batch: int = 512, n_ubatch: int = 512,
                 seed: int = -1, n_threads: int | None = None, n_threads_batch: int | None = None,
                 n_gpu_layers: int = 0, chat_format: str | None = None, verbose: bool = True,
                 use_mmap: bool = True, cache_dtype: Any = None, log: Callable[[str], None] | None = None,
                 **kwargs: Any) -> None:
        import torch

        from .runtime.completion import Completer, describe_offload, prepare_context
        from .runtime.loader import load_model
        from .tokenizer import Tokenizer
        from .tokenizer.chat import resolve_template

        unknown = set(kwargs) - {"use_mlock", "vocab_only", "logits_all", "embedding", "offload_kqv", "flash_attn",
                                 "rope_freq_base", "rope_freq_scale", "last_n_tokens_size", "numa", "main_gpu",
                                 "tensor_split", "split_mode", "type_k", "type_v"}
        if unknown:
            raise InputError(f"Llama(): unknown argument(s) {', '.join(sorted(unknown))}")
        if not isinstance(n_ctx, int) or n_ctx < 0:
            raise InputError(f"n_ctx={n_ctx!r}: the context size must be a positive number of tokens "
                             f"(0 = the model's training context)")
        if n_batch < 1 or n_ubatch < 1:
            raise InputError(f"n_batch={n_batch}, n_ubatch={n_ubatch}: both must be >= 1")
        self.log: Callable[[str], None] = log or ((lambda s: print(s, file=sys.stderr)) if verbose
                                                  else (lambda s: None))
        self.model_path = str(model_path)
        self.verbose = verbose
        if n_threads is not None:  # torch's thread pool is per process
            if n_threads < 1:
                raise InputError(f"n_threads={n_threads}: give at least 1")
            torch.set_num_threads(n_threads)
        self.n_threads, self.n_threads_batch = n_threads, n_threads_batch
        self.chat_template = resolve_template(chat_format) if chat_format else None
        self.chat_format = chat_format
        oom = (*_OOM_TYPES, *(t for t in (getattr(torch, "OutOfMemoryError", None),) if t))
        try:
            self._lm = load_model(model_path, use_mmap=use_mmap, gpu_layers=n_gpu_layers)
        except oom as e:
            raise _oom(e, str(model_path)) from None
        try:
            self.tokenizer_ = Tokenizer.from_metadata(self._lm.metadata)
            for line in describe_offload(self._lm, n_gpu_layers):
                self.log(line)
            try:
                ctx = prepare_context(self._lm, n_ctx, n_batch, n_ubatch, self.log,
                                      cache_dtype=cache_dtype)
            except oom as e:
                raise _oom(e, f"{model_path}: a KV cache of {n_ctx} tokens") from None
            self._comp = Completer(ctx, self.tokenizer_, log=self.log)
            self.set_seed(seed)
            self._identity: str | None = None
            self._last_logits: Any = None
        except BaseException:
            self._lm.close()
            raise

    # -------------------------------------------------------------------------------- model facts
    @property
    def _ctx(self) -> Any:
        if getattr(self, "_comp", None) is None:
            raise InputError("this Llama was closed")
        return self._comp.ctx

    def n_ctx(self) -> int:
        return self._ctx.n_ctx

    def n_vocab(self) -> int:
        return self.tokenizer_.n_vocab

    def token_bos(self) -> int:
        return -1 if self.tokenizer_.bos_id is None else self.tokenizer_.bos_id

    def token_eos(self) -> int:
        return -1 if self.tokenizer_.eos_id is None else self.tokenizer_.eos_id

    @property
    def metadata(self) -> dict[str, Any]:
        return self._lm.metadata

    @property
    def n_tokens(self) -> int:
        """Tokens the context holds now."""
        return len(self._comp.tokens)

    @property
    def input_ids(self) -> list[int]:
        """The tokens the context holds, in order."""
        return list(self._comp.tokens)

    @property
    def perf(self) -> Any:
        """llama.cpp's perf counters (prompt tokens evaluated, decode runs, times)."""
        return self._ctx.perf

    def set_seed(self, seed: int) -> None:
        """Reseed the sampler (-1 or LLAMA_DEFAULT_SEED: a random seed)."""
        from .runtime.sampling import resolve_seed

        self.seed = resolve_seed(seed)
        self._comp.rng.manual_seed(self.seed)

    # -------------------------------------------------------------------------------- tokens
    def tokenize(self, text: str | bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids (llama_tokenize: add_bos adds BOS/EOS where the model asks; special parses control tokens)."""
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"tokenize: the bytes are not valid UTF-8 at {e.start}") from None
        if not isinstance(text, str):
            raise InputError(f"tokenize: expected str or bytes, got {type(text).__name__}")
        return self.tokenizer_.encode(text, add_special=add_bos, parse_special=special)

    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None,
                   special: bool = False) -> bytes:
        """The bytes of `tokens` (as llama-cpp-python: no space is stripped when prev_tokens are given)."""
        tokens = [int(t) for t in tokens]
        if prev_tokens:
            whole = self.tokenizer_.detokenize([*prev_tokens, *tokens], special)
            return whole[len(self.tokenizer_.detokenize(list(prev_tokens), special)):]
        return self.tokenizer_.detokenize(tokens, special)

    def reset(self) -> None:
        """Forget what the context holds (the next request evaluates its whole prompt)."""
        self._comp.reset()
        self._last_logits = None

    def eval(self, tokens: Sequence[int]) -> Any:
        """Append `tokens` to the context; returns the last token's float32 logits (n_vocab,)."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise InputError("eval: give at least one token")
        if self.n_tokens + len(tokens) > self.n_ctx():
            raise InputError(f"eval: {len(tokens)} more tokens do not fit in the context "
                             f"({self.n_tokens} of {self.n_ctx()} used)")
        self._comp.check_prompt([*self._comp.tokens, *tokens][-1:])
        logits = None
        for s in range(0, len(tokens), self._ctx.n_batch):
            logits = self._comp.decode(tokens[s:s + self._ctx.n_batch])
        self._last_logits = logits[-1].clone()
        return self._last_logits

    # -------------------------------------------------------------------------------- generation
    def _request(self, tokens: list[int], *, max_tokens: int | None, temperature: float, top_k: int,
                 top_p: float, min_p: float, repeat_penalty: float, frequency_penalty: float,
                 presence_penalty: float, stop: str | Sequence[str] | None, seed: int | None,
                 logprobs: int | None, logit_bias: Mapping[int, float] | None) -> Any:
        from .runtime.completion import Request
        from .runtime.sampling import SamplingParams

        if seed is not None:
            self.set_seed(seed)
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and not all(isinstance(s, str) for s in stop):
            raise InputError("stop must be a string or a list of strings")
        self._comp.check_prompt(tokens)
        n_max = -1 if max_tokens is None or max_tokens <= 0 else int(max_tokens)
        sp = SamplingParams(temp=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)
        return Request(tokens, max_tokens=n_max, sampling=sp, stop=tuple(stop or ()), logprobs=logprobs,
                       logit_bias={int(k): float(v) for k, v in logit_bias.items()} if logit_bias else None)

    def _prompt_tokens(self, prompt: str | bytes | Sequence[int]) -> list[int]:
        if isinstance(prompt, (str, bytes, bytearray)):
            ids = self.tokenize(prompt, add_bos=True, special=True)
            if not ids and self.tokenizer_.bos_id is not None:
                ids = [self.tokenizer_.bos_id]
            return ids
        if isinstance(prompt, Sequence) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        raise InputError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 temp: float = 0.8, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, seed: int | None = None,
                 ) -> Iterator[int]:
        """Sampled token ids after `tokens`, until the consumer stops, an end-of-generation token (yielded) or a
        full context. `reset` is accepted for compatibility: the shared prefix is always reused."""
        req = self._request(list(tokens), max_tokens=None, temperature=temp, top_k=top_k, top_p=top_p,
                            min_p=min_p, repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                            presence_penalty=presence_penalty, stop=None, seed=seed, logprobs=None, logit_bias=None)
        for t, _ in self._comp.stream(req).events():
            if t is not None:
                yield t

    def create_completion(self, prompt: str | bytes | Sequence[int], suffix: str | None = None,
                          max_tokens: int | None = 16, temperature: float = 0.8, top_p: float = 0.95,
                          min_p: float = 0.05, echo: bool = False, stop: str | Sequence[str] | None = None,
                          frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                          repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
                          seed: int | None = None, logprobs: int | None = None,
                          logit_bias: Mapping[int, float] | None = None, **kwargs: Any) -> Any:
        """Complete `prompt` (text or ids). Returns an OpenAI text_completion dict, or with stream=True an iterator
        of chunks whose texts concatenate to the same answer. finish_reason: "stop" (end of text or a stop
        string, which is never part of the text) or "length" (max_tokens or a full context)."""
        if suffix:
            raise InputError("suffix (fill-in-the-middle) is not supported")
        tokens = self._prompt_tokens(prompt)
        req = self._request(tokens, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            min_p=min_p, repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                            presence_penalty=presence_penalty, stop=stop, seed=seed, logprobs=logprobs,
                            logit_bias=logit_bias)
        head = {"id": f"cmpl-{uuid.uuid4()}", "created": int(time.time()), "model": self.model_path}
        prefix = self.detokenize(tokens).decode("utf-8", "replace") if echo else ""
        s = self._comp.stream(req)
        if stream:
            return _completion_chunks(self, s, head, prefix)
        for _ in s:
            pass
        return _completion_dict(self, s.result, head, prefix, len(tokens))

    __call__ = create_completion

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages`: chat_format's template, else the model's, else ChatML."""
        return self.tokenizer_.apply_chat_template(messages, add_generation_prompt, template=self.chat_template)

    def create_chat_completion(self, messages: Sequence[Mapping[str, Any]], temperature: float = 0.2,
                               top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                               stream: bool = False, stop: str | Sequence[str] | None = None,
                               seed: int | None = None, max_tokens: int | None = None,
                               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                               repeat_penalty: float = 1.0, logprobs: bool | None = None,
                               top_logprobs: int | None = None, logit_bias: Mapping[int, float] | None = None,
                               **kwargs: Any) -> Any:
        """Answer a conversation ([{"role": "user", "content": "..."}, ...]) as an OpenAI chat.completion dict,
        or with stream=True an iterator of chat.completion.chunk dicts (delta role, then content pieces)."""
        from .tokenizer.chat import check_messages

        if kwargs.get("tools") or kwargs.get("functions"):
            raise InputError("tools / functions are not supported")
        check_messages(messages)
        text = self.apply_chat_template(messages, add_generation_prompt=True)
        tokens = self.tokenizer_.encode(text, add_special=True, parse_special=True)
        req = self._request(tokens, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            min_p=min_p, repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                            presence_penalty=presence_penalty, stop=stop, seed=seed,
                            logprobs=(top_logprobs or 0) if logprobs else None, logit_bias=logit_bias)
        head = {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()), "model": self.model_path}
        s = self._comp.stream(req)
        if stream:
            return _chat_chunks(s, head)
        for _ in s:
            pass
        return _chat_dict(self, s.result, head, len(tokens))

    # -------------------------------------------------------------------------------- state
    def _model_identity(self) -> str:
        if self._identity is None:
            from .runtime.session import model_identity

            self._identity = model_identity(self.model_path)
        return self._identity

    def save_state(self, messages: Sequence[Mapping[str, Any]] | None = None) -> Any:
        """A copy of the context (tokens, KV cache of the used positions), the sampler's random state and
        optionally chat messages: a `SessionState` for load_state or save_session."""
        from .runtime.session import capture

        return capture(self._comp, self._model_identity(), [dict(m) for m in messages] if messages is not None
                       else None)

    def load_state(self, state: Any) -> list[dict[str, Any]] | None:
        """Restore a save_state() result (of this model). Returns the messages saved with it."""
        from .runtime.session import SessionState, restore

        if not isinstance(state, SessionState):
            raise InputError(f"load_state expects what save_state returned, got {type(state).__name__}")
        if state.model != self._model_identity():
            raise InputError("load_state: the state was saved with another model")
        restore(self._comp, state)
        self._last_logits = None
        return state.messages

    def save_session(self, path: str | Path, messages: Sequence[Mapping[str, Any]] | None = None) -> Path:
        """Write the state to `path` (format: runtime/session.py; atomic). Returns the path."""
        from .runtime.session import write_session

        return write_session(path, self.save_state(messages))

    def load_session(self, path: str | Path) -> list[dict[str, Any]] | None:
        """Read a session written by save_session (or `/save` in `llamakit run -i`) and restore it; a file of
        another model, a larger context, another cache type or a damaged file is an InputError and changes
        nothing. Returns the saved chat messages (None when there were none)."""
        from .runtime.session import read_for

        return self.load_state(read_for(path, self._comp, self._model_identity()))

    # -------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Free the model and the cache (also done by `with Llama(...) as llm:`)."""
        if getattr(self, "_lm", None) is not None:
            self._comp = None  # type: ignore[assignment]
            self._lm.close()
            self._lm = None  # type: ignore[assignment]

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- OpenAI-shaped results (llama-cpp-python's dicts) ---------------------------------------------------------------

def _n_completion(llm: Llama, res: Any) -> int:
    """Generated tokens, an ending end-of-generation token not counted (llama-cpp-python)."""
    n = len(res.tokens)
    return n - 1 if res.stop_reason == "eog" and n else n


def _logprobs(llm: Llama, res: Any, offset: int) -> dict[str, Any] | None:
    if not res.logprobs:
        return None
    piece = lambda t: llm.detokenize([t], special=True).decode("utf-8", "replace")  # noqa: E731
    out: dict[str, Any] = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
    for lp in res.logprobs:
        text = piece(lp.token)
        out["tokens"].append(text)
        out["text_offset"].append(offset)
        offset += len(text)
        out["token_logprobs"].append(lp.logprob)
        out["top_logprobs"].append({piece(t): v for t, v in lp.top} or None)
    return out


def _usage(n_prompt: int, n_completion: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def _completion_dict(llm: Llama, res: Any, head: dict[str, Any], prefix: str, n_prompt: int) -> dict[str, Any]:
    return {**head, "object": "text_completion",
            "choices": [{"text": prefix + res.text, "index": 0, "logprobs": _logprobs(llm, res, len(prefix)),
                         "finish_reason": res.finish_reason}],
            "usage": _usage(n_prompt, _n_completion(llm, res))}


def _completion_chunks(llm: Llama, stream: Any, head: dict[str, Any], prefix: str) -> Iterator[dict[str, Any]]:
    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        return {**head, "object": "text_completion",
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

    if prefix:
        yield chunk(prefix, None)
    for piece in stream:
        yield chunk(piece, None)
    yield chunk("", stream.result.finish_reason)


def _chat_dict(llm: Llama, res: Any, head: dict[str, Any], n_prompt: int) -> dict[str, Any]:
    lp = _logprobs(llm, res, 0)
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                         "logprobs": lp, "finish_reason": res.finish_reason}],
            "usage": _usage(n_prompt, _n_completion(llm, res))}


def _chat_chunks(stream: Any, head: dict[str, Any]) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    yield chunk({"role": "assistant"}, None)
    for piece in stream:
        yield chunk({"content": piece}, None)
    yield chunk({}, stream.result.finish_reason)


def convert(src_dir: str | Path, dst: str | Path | None = None, outtype: str = "f16", *, vocab_only: bool = False,
            n_ctx: int | None = None, progress: Callable[[Any], None] | None = None, threads: int | None = 1) -> Path:
    """Convert a Hugging Face or Meta llama checkpoint directory to GGUF (llama.cpp's convert_hf_to_gguf.py).
    dst: a file, a directory (default name inside) or None (SRC_DIR/NAME-OUTTYPE.gguf). Returns the path written.

    >>> from llamakit import convert
    >>> convert("Llama-2-7b-hf", outtype="q8_0")
    PosixPath('Llama-2-7b-hf/Llama-2-7B-hf-q8_0.gguf')
    """
    from .convert.pipeline import convert as _convert

    return _convert(src_dir, outtype, dst, vocab_only, n_ctx, progress, threads).outfile


def quantize(src: str | Path, dst: str | Path | None, qtype: str = "q4_0", *, allow_requantize: bool = False,
             leave_output_tensor: bool = False, pure: bool = False, output_tensor_type: str | None = None,
             token_embedding_type: str | None = None, threads: int | None = None,
             progress: Callable[[Any, int], None] | None = None) -> Path:
    """Quantize a GGUF as llama-quantize does (same tensor types, same bytes). dst None: ggml-model-TYPE.gguf
    beside the input. Returns the path written.

    >>> from llamakit import quantize
    >>> quantize("model-f16.gguf", "model-q4_0.gguf", "q4_0")
    PosixPath('model-q4_0.gguf')
    """
    from .quantize import quantize_file

    return quantize_file(src, dst, qtype, threads=threads, progress=progress, allow_requantize=allow_requantize,
                         leave_output_tensor=leave_output_tensor, pure=pure, output_tensor_type=output_tensor_type,
                         token_embedding_type=token_embedding_type).output
