"""The completion core under every front end (`llamakit run`, the interactive terminal, `Llama`, the server):
tokens in, a stream of text pieces out.

    comp = Completer(ctx, tok)                       # one sequence (`seq`) of a Context
    stream = comp.stream(Request(tokens, max_tokens=64, stop=("\\n\\n",)))
    for piece in stream: print(piece, end="")        # UTF-8 is held back until a character is complete
    stream.result.stop_reason, stream.result.n_reused

Prefix reuse (tinygrad's get_start_pos): the Completer remembers which tokens the context holds for its sequence
(`tokens`); a request sharing a prefix with them truncates the context to that prefix and evaluates only the
rest, so a chat turn costs its new tokens. At least the last prompt token is always evaluated (its logits pick
the first new token).

Two kinds of stop text:
- `stop` (API / OpenAI): the stop string is never part of the output; a partial match at the end of the text is
  held back until it either completes (generation ends, the text before it is the answer) or breaks off.
- `reverse_prompts` (llama-cli's -r): pieces are printed as they come, generation stops after the token that
  completes one (main.cpp's search in the text of the last 32 tokens); the reverse prompt stays in the output.

The token loop is main.cpp's (the same decode and perf accounting as `generate.Generation`): the prompt in
n_batch pieces, then sample -> decode one token until an end-of-generation token, max_tokens, a stop, or a full
context (shifted when context_shift, as llama-cli).

The loop itself does not run the model: `CompletionStream.steps()` is a coroutine that yields `Eval(tokens)` when
it needs tokens appended to its sequence (the driver sends back the last token's logits) and (token, text) events
in between. `events()` drives it with the Completer's own `decode`; the server drives one per slot from a single
thread and evaluates all their `Eval`s in one `decode_batch` per step (no thread per slot, no hand-offs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..tokenizer import Tokenizer
from .generate import Context
from .loader import LoadedModel
from .sampling import Sampler, SamplingParams

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- setting up a context (shared by run, perplexity, bench, Llama) ------------------------------------------------

def prepare_context(lm: LoadedModel, n_ctx: int, n_batch: int, n_ubatch: int, log: Log = _quiet, *,
                    cache_type_k: torch.dtype = torch.float16, cache_type_v: torch.dtype | None = None,
                    n_threads: int | None = None, n_threads_batch: int | None = None) -> Context:
    """A Context of n_ctx positions (0 = the model's training context); warns through `log` beyond it."""
    n_ctx_train = lm.config.n_ctx_train
    if n_ctx < 0:
        raise InputError(f"context size {n_ctx}: it must be >= 0 (0 = the model's {n_ctx_train}); "
                         f"set -c / n_ctx")
    if n_ctx == 0:
        n_ctx = n_ctx_train
    if n_ctx > n_ctx_train:
        log(f"warning: model was trained on only {n_ctx_train} context tokens ({n_ctx} specified)")
    return Context(lm, n_ctx, n_batch, n_ubatch, cache_type_k, cache_dtype_v=cache_type_v or cache_type_k,
                   n_threads=n_threads, n_threads_batch=n_threads_batch)


def warmup_tokens(tok: Tokenizer) -> list[int]:
    ids = [t for t in (tok.bos_id, tok.eos_id) if t is not None]
    return ids or [0]


def describe_offload(lm: LoadedModel, gpu_layers: int) -> list[str]:
    """The load lines: a warning when -ngl N > 0 found no usable accelerator, what auto chose, then
    llama.cpp's `offloaded X/Y layers to GPU` and the predicted memory per device."""
    p = lm.placement
    lines = []
    if gpu_layers > 0 and p.n_offloaded == 0:
        why = p.note or "no accelerator was given"
        lines.append(f"warning: -ngl {gpu_layers}: {why}; running everything on the CPU")
    elif p.note and p.accelerators:
        lines.append(p.note)
    lines.append(f"offloaded {p.n_offloaded}/{lm.config.n_layer + 1} layers to GPU")
    for dev, used in zip(p.accelerators, p.usage):
        lines.append(f"{dev}: {used / 2**20:.0f} MiB (weights + KV + compute reserve, predicted)")
    return lines


def reverse_prompt_hit(tail: str, reverse_prompts: Sequence[str]) -> str | None:
    """main.cpp: each reverse prompt is searched in the text of the last 32 tokens, from
    len - (len(prompt) + 2) on. Returns the one found."""
    for rp in reverse_prompts:
        if rp and tail.find(rp, max(0, len(tail) - (len(rp) + 2))) != -1:
            return rp
    return None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# -- requests and results -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    tokens: Sequence[int]  # the whole prompt, history included: the shared prefix is not evaluated again
    max_tokens: int = -1  # -1: until an end-of-generation token (or the context fills), -2: until the context is full
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    reverse_prompts: tuple[str, ...] = ()
    ignore_eos: bool = False
    logit_bias: dict[int, float] | None = None
    special: bool = False  # the text of control tokens is output too
    context_shift: bool = False
    n_keep: int = 0  # positions kept when the context shifts
    logprobs: int | None = None  # record the log-probability of each token and the top-N alternatives


@dataclass(frozen=True)
class Eval:
    """A completion core's request to its driver: append `tokens` to its sequence (with the Completer's
    bookkeeping, `Completer.decode` or `Completer.record`) and send back the last token's logits (1, n_vocab)."""

    tokens: list[int]


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Completion:
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    # "eog" | "stop" (a stop string) | "reverse_prompt" | "length" (max_tokens) | "context_full" | "interrupted"
    stop_reason: str = ""
    stopped_by: str = ""  # the stop string or reverse prompt that ended it
    n_prompt: int = 0
    n_reused: int = 0  # prompt tokens found in the context already
    n_evaluated: int = 0  # prompt tokens decoded for this request
    n_shifts: int = 0
    t_prompt_ms: float = 0.0
    t_gen_ms: float = 0.0
    logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        """OpenAI's finish_reason: "length" when a token limit ended it, else "stop"."""
        return "length" if self.stop_reason in ("length", "context_full") else "stop"


# -- the completer ---------------------------------------------------------------------------------------------------

class Completer:
    """One sequence of a Context plus what it holds. `rng` is the sampler's random state (saved in sessions)."""

    def __init__(self, ctx: Context, tok: Tokenizer, *, seq: int = 0, log: Log = _quiet,
                 seed: int | None = None) -> None:
        self.ctx, self.tok, self.seq, self.log = ctx, tok, seq, log
        self.tokens: list[int] = []  # the tokens whose K/V the context holds for `seq`, in order
        self.rng = torch.Generator()
        if seed is not None:
            self.rng.manual_seed(seed)

    @property
    def n_ctx(self) -> int:
        return self.ctx.n_ctx

    def reset(self) -> None:
        """Forget the context's contents (the next request evaluates its whole prompt)."""
        self.ctx.truncate(0, self.seq) if self.seq else self.ctx.truncate(0)
        self.tokens = []

    # ------------------------------------------------------------------------------------ prompt checks
    def check_prompt(self, tokens: Sequence[int]) -> None:
        """The prompt checks, in one place and worded for any caller (CLI flags and API names)."""
        if not tokens:
            raise InputError("the prompt is empty: give some text (-p / -f, or a non-empty prompt)")
        limit = self.n_ctx - 4
        if len(tokens) > limit:
            raise InputError(f"prompt is too long ({len(tokens)} tokens, max {limit}); raise the context size "
                             f"(-c / n_ctx, now {self.n_ctx}) or shorten the prompt")
        bad = [t for t in tokens if not 0 <= int(t) < self.ctx.cfg.n_vocab]
        if bad:
            raise InputError(f"token id {bad[0]} is outside the vocabulary (0..{self.ctx.cfg.n_vocab - 1})")

    def encode_prompt(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Tokenize a prompt as llama-cli does; an empty text becomes [BOS] when the model has one."""
        ids = self.tok.encode(text, add_special=add_special, parse_special=parse_special)
        if not ids and self.tok.bos_id is not None and self.tok.add_bos:
            ids = [self.tok.bos_id]
        return ids

    # ------------------------------------------------------------------------------------ the context
    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        """Append tokens to the sequence; `self.tokens` follows the context even when interrupted."""
        try:
            return self.ctx.decode(tokens, seq=self.seq) if self.seq else self.ctx.decode(tokens)
        finally:
            self.record(tokens)

    def record(self, tokens: Sequence[int]) -> None:
        """After a driver evaluated `tokens` for this sequence (or tried to): `self.tokens` follows the context."""
        self.tokens = (self.tokens + [int(t) for t in tokens])[: self._n_past()]

    def _n_past(self) -> int:
        return self.ctx.n_past_of(self.seq)

    def reuse_prefix(self, tokens: Sequence[int]) -> int:
        """Truncate the sequence to the longest prefix it shares with `tokens`, leaving at least the last
        token to evaluate. Returns the number of positions kept."""
        n = min(common_prefix(self.tokens, tokens), len(tokens) - 1)
        if n < self._n_past():
            self.ctx.truncate(n, self.seq) if self.seq else self.ctx.truncate(n)
        self.tokens = self.tokens[:n]
        return n

    def eval_prompt(self, tokens: Sequence[int]) -> tuple[torch.Tensor, int]:
        """Bring the sequence to exactly `tokens` (prefix reuse), in n_batch pieces.
        Returns the last token's logits (1, n_vocab) and the number of reused positions."""
        steps = self.prompt_steps(tokens)
        logits = None
        while True:
            try:
                need = steps.send(logits)
            except StopIteration as done:
                return done.value
            logits = self.decode(need.tokens)

    def prompt_steps(self, tokens: Sequence[int]) -> Generator[Eval, torch.Tensor, tuple[torch.Tensor, int]]:
        """eval_prompt as a coroutine (see the module docstring): yields the n_batch pieces to evaluate."""
        self.check_prompt(tokens)
        n_reused = self.reuse_prefix(tokens)
        rest = list(tokens[n_reused:])
        logits = None
        for s in range(0, len(rest), self.ctx.n_batch):  # one llama_decode per n_batch, as main.cpp
            logits = yield Eval(rest[s:s + self.ctx.n_batch])
        assert logits is not None
        return logits, n_reused

    def shift(self, keep: int, discard: int) -> None:
        self.ctx.shift(keep, discard, seq=self.seq) if self.seq else self.ctx.shift(keep, discard)
        self.tokens = self.tokens[:keep] + self.tokens[keep + discard:]

    # ------------------------------------------------------------------------------------ completion
    def stream(self, req: Request, sampler: Sampler | None = None) -> "CompletionStream":
        """Iterate for text pieces; `.result` holds the Completion once iteration ended (or was closed)."""
        if sampler is None:
            sp = req.sampling
            if sp.repeat_last_n < 0:
                sp = SamplingParams(**{**sp.__dict__, "repeat_last_n": self.n_ctx})
            sampler = Sampler(sp, self.ctx.cfg.n_vocab, logit_bias=req.logit_bias, generator=self.rng)
        return CompletionStream(self, req, sampler)

    def complete(self, req: Request, sampler: Sampler | None = None) -> Completion:
        stream = self.stream(req, sampler)
        for _ in stream:
            pass
        return stream.result


def _hold_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop string (kept back from the output)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class CompletionStream:
    """The token loop of one request (see the module docstring); text pieces as they become final."""

    def __init__(self, comp: Completer, req: Request, sampler: Sampler) -> None:
        self.comp, self.req, self.sampler = comp, req, sampler
        self.result = Completion(n_prompt=len(req.tokens))
        self.generated: list[int] = []  # every sampled token, the stop token included
        comp.check_prompt(req.tokens)

    def __iter__(self) -> Iterator[str]:
        for _, piece in self.events():
            if piece:
                yield piece

    def events(self) -> Iterator[tuple[int | None, str]]:
        """(token, text that became final with it) per sampled token; a last (None, text) for what was held
        back (an incomplete character at the end). Drives `steps()` with the Completer's decode: an exception
        of the decode (Ctrl+C included) is raised inside the loop, which ends as it would have without it."""
        steps = self.steps()
        logits: torch.Tensor | None = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    item = steps.throw(error) if error is not None else steps.send(logits)
                except StopIteration:
                    return
                logits = error = None
                if isinstance(item, Eval):
                    try:
                        logits = self.comp.decode(item.tokens)
                    except BaseException as e:  # raised where the loop asked for it (KeyboardInterrupt ends it)
                        error = e
                else:
                    yield item
        finally:
            steps.close()

    def steps(self) -> Generator[Eval | tuple[int | None, str], torch.Tensor | None, None]:
        """The token loop as a coroutine: yields Eval(tokens) (send back the logits) or (token, text) events
        (send None); see the module docstring."""
        comp, req, smp, res = self.comp, self.req, self.sampler, self.result
        ctx, tok, perf = comp.ctx, comp.tok, comp.ctx.perf
        stops = tuple(s for s in req.stop if s)
        eog = frozenset() if req.ignore_eos else tok.eog_ids
        dec = tok.stream_decoder(special=req.special, strip_leading_space=False)
        text, sent = "", 0  # all generated text; how much of it was output
        tail = [tok.token_to_piece(t, True).decode("utf-8", "replace") for t in list(req.tokens)[-32:]]
        single = {ids[0] for rp in req.reverse_prompts if rp
                  for ids in [tok.encode(rp, add_special=False, parse_special=True)] if len(ids) == 1}
        t0 = t1 = time.perf_counter()
        try:
            for t in req.tokens:  # the prompt enters the penalty history (main.cpp)
                smp.accept(t)
            logits, res.n_reused = yield from comp.prompt_steps(req.tokens)
            res.n_evaluated = len(req.tokens) - res.n_reused
            t1 = time.perf_counter()
            res.t_prompt_ms = (t1 - t0) * 1e3
            n_remain = req.max_tokens
            while True:
                ts = time.perf_counter()
                lg = logits[-1]
                t = smp.sample(lg)
                smp.accept(t)
                perf.t_sample_ms += (time.perf_counter() - ts) * 1e3
                perf.n_sample += 1
                n_remain -= 1
                self.generated.append(t)
                res.tokens.append(t)
                if req.logprobs is not None:
                    res.logprobs.append(_logprob(lg, t, req.logprobs))
                text += dec.feed(t)
                end = len(text)
                if stops:
                    hit = min(((i, s) for s in stops if (i := text.find(s, max(0, sent - len(s)))) != -1),
                              default=None)
                    if hit is not None:
                        i, res.stopped_by = hit
                        text, end = text[:i], max(i, sent)
                        res.stop_reason = "stop"
                    else:
                        end -= _hold_back(text[sent:], stops)
                yield t, text[sent:end]
                sent = max(sent, end)
                if res.stop_reason:
                    break
                if req.reverse_prompts:
                    tail = (tail + [tok.token_to_piece(t, True).decode("utf-8", "replace")])[-32:]
                    rp = reverse_prompt_hit("".join(tail), req.reverse_prompts)
                    if t in single or rp is not None:
                        res.stop_reason, res.stopped_by = "reverse_prompt", rp or tok.decode([t], special=True)
                        break
                if t in eog:
                    res.stop_reason = "eog"
                    break
                if n_remain == 0:
                    res.stop_reason = "length"
                    break
                if comp._n_past() + 1 >= ctx.n_ctx:
                    if not req.context_shift or req.max_tokens == -2:
                        res.stop_reason = "context_full"
                        break
                    comp.shift(req.n_keep, (comp._n_past() - req.n_keep) // 2)
                    res.n_shifts += 1
                logits = yield Eval([t])
        except KeyboardInterrupt:  # Ctrl+C: the answer so far stands, the context stays consistent
            res.stop_reason = "interrupted"
        finally:
            res.t_gen_ms = (time.perf_counter() - t1) * 1e3
            if res.stop_reason != "stop":
                text += dec.flush()
                res.stop_reason = res.stop_reason or "interrupted"  # closed by the consumer
            res.text = text
        if res.stop_reason != "stop" and len(text) > sent:
            yield None, text[sent:]


def _logprob(logits: torch.Tensor, token: int, n_top: int) -> TokenLogprob:
    lp = torch.log_softmax(logits.float(), -1)
    top: list[tuple[int, float]] = []
    if n_top > 0:
        v, i = torch.topk(lp, min(n_top, lp.shape[0]))
        top = [(int(a), float(b)) for a, b in zip(i, v)]
    return TokenLogprob(int(token), float(lp[token]), top)
