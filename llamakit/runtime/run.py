"""`llamakit run`: llama-cli's non-interactive path (examples/main/main.cpp) over the engine.

prompt -> tokens (add_special, parse_special, as common_tokenize in main.cpp) -> warmup -> prefill in
n_batch pieces -> sample / print / decode until EOG, -n, a reverse prompt or a full context. The prompt is
echoed piece by piece as llama-cli displays it; text goes to `out` as it is generated, diagnostics and the
llama_perf lines to `log`.

Conversation mode (auto when the model has a chat template, like llama-cli): the prompt becomes the user's
message of the model's chat template (an optional system message first) and only the answer is printed.
llama-cli would then wait for more input; llamakit answers once and exits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from ..tokenizer import Tokenizer
from .devices import cuda_oom
from .generate import Context, Generation, resolve_keep
from .loader import LoadedModel, load_model
from .placement import PlacementOptions
from .sampling import Sampler, SamplingParams


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
    gpu_layers: int = -1  # without `placement`: plain -ngl over `devices` (no memory check)
    devices: tuple[torch.device, ...] = ()
    placement: PlacementOptions | None = None  # -ngl N|auto, --fit-margin, --tensor-split, --device...
    keep: int = 0
    context_shift: bool = True
    conversation: bool | None = None  # None = when the model has a chat template
    system_prompt: str = ""
    special: bool = False  # print special tokens' text
    display_prompt: bool = True
    warmup: bool = True
    perf: bool = True
    cache_type_k: torch.dtype = torch.float16  # -ctk
    cache_type_v: torch.dtype = torch.float16  # -ctv
    n_threads: int | None = None  # -t (None: leave torch's setting)
    n_threads_batch: int | None = None  # -tb (None: = n_threads)
    backend: str = "auto"  # kernels: auto | native | torch


@dataclass
class RunResult:
    tokens: list[int] = field(default_factory=list)  # generated ids
    text: str = ""
    stop_reason: str = ""
    n_prompt: int = 0
    n_ctx: int = 0
    seed: int = 0


def prepare_context(lm: LoadedModel, n_ctx: int, n_batch: int, n_ubatch: int, log: Callable[[str], None],
                    *, cache_type_k: torch.dtype = torch.float16, cache_type_v: torch.dtype = torch.float16,
                    n_threads: int | None = None, n_threads_batch: int | None = None) -> Context:
    n_ctx_train = lm.config.n_ctx_train
    if n_ctx < 0:
        raise InputError(f"-c {n_ctx}: the context size must be >= 0 (0 = the model's {n_ctx_train})")
    if n_ctx == 0:
        n_ctx = n_ctx_train
    if n_ctx > n_ctx_train:
        log(f"warning: model was trained on only {n_ctx_train} context tokens ({n_ctx} specified)")
    return Context(lm, n_ctx, n_batch, n_ubatch, cache_type_k, cache_dtype_v=cache_type_v, n_threads=n_threads,
                   n_threads_batch=n_threads_batch)


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


def _reverse_prompt_hit(tail: str, reverse_prompts: Sequence[str]) -> bool:
    """main.cpp: each reverse prompt is searched in the text of the last 32 tokens, from
    len - (len(prompt) + 2) on (non-interactive padding)."""
    for rp in reverse_prompts:
        if rp and tail.find(rp, max(0, len(tail) - (len(rp) + 2))) != -1:
            return True
    return False


def run(opts: RunOptions, out: Callable[[str], None], log: Callable[[str], None]) -> RunResult:
    lm = load_model(opts.model, use_mmap=opts.use_mmap, gpu_layers=opts.gpu_layers, devices=opts.devices,
                    backend=opts.backend, log=log, options=opts.placement, n_ctx=opts.n_ctx,
                    n_ubatch=opts.n_ubatch)
    try:
        with cuda_oom(lm.placement.accelerators[0] if lm.placement.accelerators else torch.device("cpu"),
                      lm.placement):
            return _run(lm, opts, out, log)
    finally:
        lm.close()


def _run(lm: LoadedModel, opts: RunOptions, out: Callable[[str], None], log: Callable[[str], None]) -> RunResult:
    cfg = lm.config
    tok = Tokenizer.from_metadata(lm.metadata)
    asked = opts.placement.gpu_layers if opts.placement is not None else opts.gpu_layers
    for line in describe_offload(lm, asked):
        log(line)
    ctx = prepare_context(lm, opts.n_ctx, opts.n_batch, opts.n_ubatch, log, cache_type_k=opts.cache_type_k,
                          cache_type_v=opts.cache_type_v, n_threads=opts.n_threads,
                          n_threads_batch=opts.n_threads_batch)
    conversation = opts.conversation if opts.conversation is not None else bool(tok.chat_template)
    if conversation:
        messages = ([{"role": "system", "content": opts.system_prompt}] if opts.system_prompt else []) + [
            {"role": "user", "content": opts.prompt}]
        text = tok.apply_chat_template(messages, add_generation_prompt=True)
    else:
        text = opts.prompt
    prompt = tok.encode(text, add_special=True, parse_special=True)
    if not prompt:
        if not tok.add_bos or tok.bos_id is None:
            raise InputError("the prompt is empty; give some text with -p or -f")
        prompt = [tok.bos_id]
    if len(prompt) > ctx.n_ctx - 4:
        raise InputError(f"prompt is too long ({len(prompt)} tokens, max {ctx.n_ctx - 4}); "
                         f"raise -c or shorten the prompt")

    sp = opts.sampling
    if sp.repeat_last_n == -1:
        sp = SamplingParams(**{**sp.__dict__, "repeat_last_n": ctx.n_ctx})
    bias = {t: float("-inf") for t in tok.eog_ids} if opts.ignore_eos else None
    sampler = Sampler(sp, cfg.n_vocab, logit_bias=bias)
    n_keep = resolve_keep(opts.keep, len(prompt), tok.add_bos)
    log(f"sampler seed: {sampler.seed}")
    log("sampler params: \n"
        f"\trepeat_last_n = {sp.repeat_last_n}, repeat_penalty = {sp.repeat_penalty:.3f}, "
        f"frequency_penalty = {sp.frequency_penalty:.3f}, presence_penalty = {sp.presence_penalty:.3f}\n"
        f"\ttop_k = {sp.top_k}, top_p = {sp.top_p:.3f}, min_p = {sp.min_p:.3f}, temp = {sp.temp:.3f}")
    log("sampler chain: logits -> logit-bias -> penalties -> top-k -> top-p -> min-p -> temp -> dist ")
    log(f"generate: n_ctx = {ctx.n_ctx}, n_batch = {ctx.n_batch}, n_predict = {opts.n_predict}, n_keep = {n_keep}")
    log("")

    if opts.warmup:
        ctx.warmup(warmup_tokens(tok))
    else:
        ctx.perf.reset()

    result = RunResult(n_prompt=len(prompt), n_ctx=ctx.n_ctx, seed=sampler.seed)
    pieces: list[str] = []
    tail: list[str] = []  # text of the last 32 tokens, prompt included (common_sampler_prev_str)
    if opts.display_prompt and not conversation:
        shown = tok.stream_decoder(special=opts.special, strip_leading_space=False)
        for t in prompt:
            out(shown.feed(t))
        out(shown.flush())
    for t in prompt[-32:]:
        tail.append(tok.token_to_piece(t, True).decode("utf-8", "replace"))
    antiprompt_ids = set()
    for rp in opts.reverse_prompts:
        ids = tok.encode(rp, add_special=False, parse_special=True)
        if len(ids) == 1:
            antiprompt_ids.add(ids[0])

    gen = Generation(ctx, prompt, sampler, n_predict=opts.n_predict, n_keep=n_keep,
                     context_shift=opts.context_shift, eog_ids=tok.eog_ids, ignore_eos=opts.ignore_eos)
    stream = tok.stream_decoder(special=opts.special, strip_leading_space=False)
    try:
        for t in gen:
            result.tokens.append(t)
            piece = stream.feed(t)
            pieces.append(piece)
            out(piece)
            tail = (tail + [tok.token_to_piece(t, True).decode("utf-8", "replace")])[-32:]
            if opts.reverse_prompts and (t in antiprompt_ids
                                         or _reverse_prompt_hit("".join(tail), opts.reverse_prompts)):
                result.stop_reason = "reverse_prompt"
                break
    except KeyboardInterrupt:  # Ctrl+C: like llama-cli, still print what we have and the timings
        result.stop_reason = "interrupted"
    rest = stream.flush()
    pieces.append(rest)
    out(rest)
    out("\n")
    result.stop_reason = result.stop_reason or gen.stop_reason or ""
    result.text = "".join(pieces)
    if result.stop_reason == "eog":
        log(" [end of text]")
    elif result.stop_reason == "context_full":
        log(f"context full ({ctx.n_ctx} tokens) and context shift is off: stopping")
    if gen.n_shifts:
        log(f"context shifted {gen.n_shifts} time(s) (n_keep = {n_keep})")
    if opts.perf:
        log("")
        for line in ctx.perf.lines():
            log(line)
    return result
