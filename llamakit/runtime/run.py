"""`llamakit run`: llama-cli's non-interactive path (examples/main/main.cpp) over the engine.

prompt -> tokens (add_special, parse_special, as common_tokenize in main.cpp) -> warmup -> prefill in
n_batch pieces -> sample / print / decode until EOG, -n, a reverse prompt or a full context. The prompt is
echoed piece by piece as llama-cli displays it; text goes to `out` as it is generated, diagnostics and the
llama_perf lines to `log`.

Conversation mode (auto when the model has a chat template, like llama-cli): the prompt becomes the user's
message of the model's chat template (an optional system message first) and only the answer is printed. With
-cnv, -i or on a terminal the conversation goes on (runtime/interactive.py); with stdin not a terminal and no
-cnv, llamakit answers once and exits (scripts keep working).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..tokenizer import Tokenizer
from .completion import Completer, Request, describe_offload, prepare_context, warmup_tokens
from .generate import resolve_keep
from .loader import LoadedModel, load_model
from .sampling import Sampler, SamplingParams, resolve_seed


@dataclass(frozen=True)
class RunOptions:
    model: Path
    prompt: str = ""
    n_predict: int = -1
    n_ctx: int = 4096  # 0 = the model's training context
    n_batch: int = 2048
    n_ubatch: int = 512
    sampling: SamplingParams = SamplingParams()
    reverse_prompts: tuple[str, ...] = ()
    ignore_eos: bool = False
    use_mmap: bool = True
    gpu_layers: int = -1
    devices: tuple[torch.device, ...] = ()
    keep: int = 0
    context_shift: bool = True
    conversation: bool | None = None  # None = when the model has a chat template
    system_prompt: str = ""
    special: bool = False  # print special tokens' text
    display_prompt: bool = True
    warmup: bool = True
    perf: bool = True
    interactive: bool = False  # -i: plain interactive (a conversation with -cnv)
    tty: bool = False  # stdin is a terminal: conversation mode then loops (llama-cli), else answers once
    chat_template: str | None = None  # Jinja source overriding the model's (--chat-template)
    in_prefix: str = ""
    in_suffix: str = ""
    prompt_cache: Path | None = None  # --prompt-cache: reuse the saved prefix, save after the run
    prompt_cache_ro: bool = False


@dataclass
class RunResult:
    tokens: list[int] = field(default_factory=list)  # generated ids
    text: str = ""
    stop_reason: str = ""
    n_prompt: int = 0
    n_ctx: int = 0
    seed: int = 0


def run(opts: RunOptions, out: Callable[[str], None], log: Callable[[str], None],
        read: Callable[[str], str | None] | None = None) -> RunResult:
    """Generate (or, interactively, chat: `read(marker)` gives the user's lines, None at the end)."""
    lm = load_model(opts.model, use_mmap=opts.use_mmap, gpu_layers=opts.gpu_layers, devices=opts.devices)
    try:
        return _run(lm, opts, out, log, read or (lambda marker: None))
    finally:
        lm.close()


def _modes(opts: RunOptions, has_template: bool) -> tuple[bool, bool]:
    """(conversation, loop): -i is plain interactive unless -cnv; otherwise conversation mode follows the
    template and loops when asked for (-cnv) or when stdin is a terminal."""
    if opts.interactive:
        return opts.conversation is True, True
    conversation = opts.conversation if opts.conversation is not None else has_template
    return conversation, conversation and (opts.conversation is True or opts.tty)


def _run(lm: LoadedModel, opts: RunOptions, out: Callable[[str], None], log: Callable[[str], None],
         read: Callable[[str], str | None]) -> RunResult:
    tok = Tokenizer.from_metadata(lm.metadata)
    for line in describe_offload(lm, opts.gpu_layers):
        log(line)
    ctx = prepare_context(lm, opts.n_ctx, opts.n_batch, opts.n_ubatch, log)
    comp = Completer(ctx, tok, log=log)
    conversation, loop = _modes(opts, bool(tok.chat_template or opts.chat_template))
    messages = [{"role": "system", "content": opts.system_prompt}] if opts.system_prompt and conversation else []
    if conversation and not loop:
        text = tok.apply_chat_template(messages + [{"role": "user", "content": opts.prompt}],
                                       add_generation_prompt=True, template=opts.chat_template)
    else:
        text = opts.prompt
    prompt = comp.encode_prompt(text)
    if not (loop and conversation):
        comp.check_prompt(prompt)

    sp = opts.sampling
    if sp.repeat_last_n == -1:
        sp = SamplingParams(**{**sp.__dict__, "repeat_last_n": ctx.n_ctx})
    bias = {t: float("-inf") for t in tok.eog_ids} if opts.ignore_eos else None
    sp = replace(sp, seed=resolve_seed(sp.seed))
    comp.rng.manual_seed(sp.seed)  # the Completer's generator: sessions save and restore it
    sampler = Sampler(sp, ctx.cfg.n_vocab, logit_bias=bias, generator=comp.rng)
    n_keep = resolve_keep(opts.keep, len(prompt), tok.add_bos)
    for line in sampler_lines(sampler):
        log(line)
    log(f"generate: n_ctx = {ctx.n_ctx}, n_batch = {ctx.n_batch}, n_predict = {opts.n_predict}, n_keep = {n_keep}")
    log("")

    if opts.warmup:
        ctx.warmup(warmup_tokens(tok))
    else:
        ctx.perf.reset()

    if loop:
        from .interactive import ChatOptions, Interactive
        from .session import model_identity

        chat = ChatOptions(conversation=conversation, prompt=opts.prompt, system_prompt=opts.system_prompt,
                           template=opts.chat_template, reverse_prompts=opts.reverse_prompts,
                           in_prefix=opts.in_prefix, in_suffix=opts.in_suffix, n_predict=opts.n_predict,
                           sampling=sp, special=opts.special, display_prompt=opts.display_prompt,
                           context_shift=opts.context_shift, n_keep=n_keep, logit_bias=bias)
        Interactive(comp, chat, lambda: model_identity(lm.path), read, out, log).run()
        if opts.perf:
            log("")
            for line in ctx.perf.lines():
                log(line)
        return RunResult(n_prompt=len(prompt), n_ctx=ctx.n_ctx, seed=sampler.seed, stop_reason="exit")
    cache = _load_prompt_cache(opts, comp, lm, log) if opts.prompt_cache is not None else None
    if opts.display_prompt and not conversation:
        shown = tok.stream_decoder(special=opts.special, strip_leading_space=False)
        for t in prompt:
            out(shown.feed(t))
        out(shown.flush())
    req = Request(prompt, max_tokens=opts.n_predict, reverse_prompts=opts.reverse_prompts,
                  ignore_eos=opts.ignore_eos, special=opts.special, context_shift=opts.context_shift, n_keep=n_keep)
    stream = comp.stream(req, sampler)
    try:
        for piece in stream:
            out(piece)
    except KeyboardInterrupt:  # Ctrl+C: like llama-cli, still print what we have and the timings
        stream.close()
    res = stream.result
    out("\n")
    if cache is not None:
        log(f"prompt cache: {res.n_reused} of {len(prompt)} prompt tokens reused")
        if not opts.prompt_cache_ro and res.stop_reason != "interrupted":
            from .session import capture, write_session

            write_session(opts.prompt_cache, capture(comp, cache))
    result = RunResult(tokens=res.tokens, text=res.text, n_prompt=len(prompt), n_ctx=ctx.n_ctx, seed=sampler.seed,
                       stop_reason={"length": "n_predict"}.get(res.stop_reason, res.stop_reason))
    if res.stop_reason == "eog":
        log(" [end of text]")
    elif res.stop_reason == "context_full":
        log(f"context full ({ctx.n_ctx} tokens) and context shift is off: stopping")
    if res.n_shifts:
        log(f"context shifted {res.n_shifts} time(s) (n_keep = {n_keep})")
    if opts.perf:
        log("")
        for line in ctx.perf.lines():
            log(line)
    return result


def _load_prompt_cache(opts: RunOptions, comp: Completer, lm: LoadedModel, log: Callable[[str], None]) -> str:
    """--prompt-cache: restore the file when it exists (it must be of this model). Returns the model identity."""
    from .session import model_identity, read_for, restore

    ident = model_identity(lm.path)
    assert opts.prompt_cache is not None
    if opts.prompt_cache.exists():
        st = read_for(opts.prompt_cache, comp, ident)
        restore(comp, st)
        log(f"prompt cache: loaded {len(st.tokens)} tokens from {opts.prompt_cache}")
    else:
        log(f"prompt cache: {opts.prompt_cache} does not exist yet; it will be written after the run")
    return ident


def sampler_lines(sampler: Sampler) -> list[str]:
    """llama-cli's sampler description (seed, parameters, chain)."""
    sp = sampler.params
    return [f"sampler seed: {sampler.seed}",
            "sampler params: \n"
            f"\trepeat_last_n = {sp.repeat_last_n}, repeat_penalty = {sp.repeat_penalty:.3f}, "
            f"frequency_penalty = {sp.frequency_penalty:.3f}, presence_penalty = {sp.presence_penalty:.3f}\n"
            f"\ttop_k = {sp.top_k}, top_p = {sp.top_p:.3f}, min_p = {sp.min_p:.3f}, temp = {sp.temp:.3f}",
            "sampler chain: logits -> logit-bias -> penalties -> top-k -> top-p -> min-p -> temp -> dist "]
