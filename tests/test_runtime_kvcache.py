"""KV cache: context shift re-rotates the moved keys; generation bookkeeping around a full context."""

from __future__ import annotations

import json

import pytest
import torch

from llamakit.runtime.generate import Context, Generation, resolve_keep
from llamakit.runtime.loader import load_model
from llamakit.runtime.sampling import Sampler, SamplingParams

from .conftest import TINY, TINY_GGUF

TOKENS = json.loads((TINY / "logits" / "tokens.json").read_text())["tokens"]


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 2e-5, 0), (torch.float16, 1e-3, 2e-3)])
@pytest.mark.parametrize("seq", [0, 2])
def test_shift_equals_recomputing_the_kept_tokens_in_layer_0(dtype: torch.dtype, atol: float, rtol: float,
                                                              seq: int) -> None:
    # Layer 0's keys and values depend only on the token and its position, so after dropping
    # [keep, keep + discard) the moved entries must equal a fresh evaluation of the shorter sequence.
    # (float16: the moved keys are rotated in float32 and rounded again: one ulp, 2^-10 relative.)
    keep, discard = 3, 8
    with load_model(TINY_GGUF / "convert-f32.gguf") as lm:
        ctx = Context(lm, 64, cache_dtype=dtype, n_seq=3)
        ctx.decode(TOKENS, seq=seq)
        ctx.decode(TOKENS[:5], seq=1)  # another sequence: untouched by the shift
        before = ctx.kv_export(1)
        ctx.shift(keep, discard, seq=seq)
        assert ctx.n_past_of(seq) == len(TOKENS) - discard and ctx.n_past_of(1) == 5
        k_shift, v_shift = (t[seq, :, :ctx.n_past_of(seq)].clone() for t in ctx.cache.layers[0])
        fresh = Context(lm, 64, cache_dtype=dtype)
        fresh.decode(TOKENS[:keep] + TOKENS[keep + discard:])
        k_new, v_new = (t[0, :, :fresh.n_past] for t in fresh.cache.layers[0])
        after = ctx.kv_export(1)
    torch.testing.assert_close(k_shift, k_new, atol=atol, rtol=rtol)
    torch.testing.assert_close(v_shift, v_new, atol=0, rtol=0)
    assert all(torch.equal(a, b) for x, y in zip(before, after) for a, b in zip(x, y))


def test_resolve_keep() -> None:
    assert resolve_keep(0, 10, True) == 1 and resolve_keep(0, 10, False) == 0
    assert resolve_keep(4, 10, True) == 5
    assert resolve_keep(-1, 10, True) == 10 and resolve_keep(11, 10, False) == 10


def test_generation_shifts_past_the_context() -> None:
    with load_model(TINY_GGUF / "convert-f32.gguf") as lm:
        ctx = Context(lm, 40)
        gen = Generation(ctx, TOKENS, Sampler(SamplingParams(temp=0.0), 1000), n_predict=40, n_keep=1)
        out = list(gen)
    assert len(out) == 40 and gen.stop_reason == "n_predict" and gen.n_shifts >= 2
    assert ctx.n_past < ctx.n_ctx


def test_eog_ends_generation_and_is_returned() -> None:
    with load_model(TINY_GGUF / "convert-f32.gguf") as lm:
        ctx = Context(lm, 128)
        first = list(Generation(ctx, TOKENS, Sampler(SamplingParams(temp=0.0), 1000), n_predict=5))
        ctx.clear()
        gen = Generation(ctx, TOKENS, Sampler(SamplingParams(temp=0.0), 1000), n_predict=5, eog_ids=[first[2]])
        assert list(gen) == first[:3] and gen.stop_reason == "eog"
        ctx.clear()
        gen = Generation(ctx, TOKENS, Sampler(SamplingParams(temp=0.0), 1000), n_predict=5, eog_ids=[first[2]],
                         ignore_eos=True)
        assert list(gen) == first  # (the CLI also bans EOG logits with --ignore-eos)
