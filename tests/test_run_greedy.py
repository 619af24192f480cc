"""Greedy generation (temp 0) of the tiny llama equals llama.cpp's, token for token."""

from __future__ import annotations

import json

import pytest

from llamakit.runtime.generate import Context, Generation
from llamakit.runtime.loader import load_model
from llamakit.runtime.sampling import Sampler, SamplingParams

from .conftest import TINY, TINY_GGUF

TOKENS = json.loads((TINY / "logits" / "tokens.json").read_text())["tokens"]


@pytest.mark.parametrize("name", ["convert-f32", "convert-f16", "convert-bf16"])
def test_greedy_matches_llama_cpp(name: str) -> None:
    ref = json.loads((TINY / "greedy" / f"{name}.llama.cpp.json").read_text())["greedy_ids"]
    with load_model(TINY_GGUF / f"{name}.gguf") as lm:
        ctx = Context(lm, 512)
        sampler = Sampler(SamplingParams(temp=0.0), lm.config.n_vocab)
        gen = Generation(ctx, TOKENS, sampler, n_predict=len(ref), eog_ids=[2])
        got = list(gen)
    assert got == ref
    assert gen.stop_reason == "n_predict"
    # main.cpp's accounting: the prompt in one batch, then one run per generated token but the last
    assert (ctx.perf.n_p_eval, ctx.perf.n_eval, ctx.perf.n_sample) == (len(TOKENS), len(ref) - 1, len(ref))
