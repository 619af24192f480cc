"""The sampler chain on hand-made logits: each stage's rule as llama-sampling.cpp states it."""

from __future__ import annotations

import math

import pytest
import torch

from llamakit.runtime.sampling import Sampler, SamplingParams

PROBS = [0.5, 0.3, 0.15, 0.05]


def logits_of(probs: list[float], n_vocab: int = 8) -> torch.Tensor:
    out = torch.full((n_vocab,), -1e9)
    # spread over the vocab in a scrambled order so index != rank
    for rank, p in enumerate(probs):
        out[(3 * rank + 5) % n_vocab] = math.log(p)
    return out


def ranked_ids(probs: list[float], n_vocab: int = 8) -> list[int]:
    return [(3 * r + 5) % n_vocab for r in range(len(probs))]


def neutral(**kw: float) -> SamplingParams:
    base = dict(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    base.update(kw)
    return SamplingParams(**base)  # type: ignore[arg-type]


def test_defaults_are_llama_cli_defaults() -> None:
    p = SamplingParams()
    assert (p.temp, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.repeat_last_n) == (0.8, 40, 0.95, 0.05, 1.0, 64)
    assert (p.presence_penalty, p.frequency_penalty, p.seed) == (0.0, 0.0, 0xFFFFFFFF)


def test_greedy_is_argmax() -> None:
    lg = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    s = Sampler(SamplingParams(temp=0.0), 1000)
    assert s.sample(lg) == int(lg.argmax())
    s = Sampler(SamplingParams(temp=-1.0), 1000)
    assert s.sample(lg) == int(lg.argmax())


def test_top_k_keeps_the_k_best_sorted() -> None:
    vals, ids = Sampler(neutral(top_k=3), 8).candidates(logits_of(PROBS))
    assert ids.tolist() == ranked_ids(PROBS)[:3]
    assert (vals[:-1] >= vals[1:]).all()


@pytest.mark.parametrize("p,keep", [(0.5, 1), (0.7, 2), (0.8, 2), (0.81, 3), (0.99, 4)])
def test_top_p_keeps_up_to_the_first_cumulative_above_p(p: float, keep: int) -> None:
    _, ids = Sampler(neutral(top_p=p), 8).candidates(logits_of(PROBS))
    assert ids.tolist() == ranked_ids(PROBS)[:keep]


@pytest.mark.parametrize("p,keep", [(0.05, 4), (0.12, 3), (0.35, 2), (0.61, 1), (1.0, 1)])
def test_min_p_keeps_probabilities_above_p_times_max(p: float, keep: int) -> None:
    _, ids = Sampler(neutral(min_p=p), 8).candidates(logits_of(PROBS))
    assert ids.tolist() == ranked_ids(PROBS)[:keep]


def test_penalties() -> None:
    lg = torch.tensor([2.0, -2.0, 1.0, 0.5, 0.0])
    s = Sampler(neutral(repeat_penalty=2.0, frequency_penalty=0.25, presence_penalty=0.5, repeat_last_n=3), 5)
    for t in (0, 3, 1, 1, 4):  # 0 and 3 have left the 3-token window; 1 twice, 4 once
        s.accept(t)
    out = s.apply_penalties(lg.clone())
    # logit <= 0 is multiplied, > 0 divided; then count * freq + presence subtracted
    assert out.tolist() == pytest.approx([2.0, -4.0 - 0.5 - 0.5, 1.0, 0.5, 0.0 - 0.25 - 0.5])


def test_penalties_off_by_default_and_with_window_zero() -> None:
    lg = torch.tensor([2.0, -2.0, 1.0])
    s = Sampler(SamplingParams(), 3)
    s.accept(0)
    assert s.apply_penalties(lg.clone()).tolist() == lg.tolist()
    s = Sampler(SamplingParams(repeat_penalty=2.0, repeat_last_n=0), 3)
    s.accept(0)
    assert s.apply_penalties(lg.clone()).tolist() == lg.tolist()


def test_logit_bias_bans_tokens() -> None:
    lg = torch.tensor([5.0, 1.0, 0.0])
    s = Sampler(SamplingParams(temp=0.0), 3, logit_bias={0: float("-inf")})
    assert s.sample(lg) == 1


def test_seeded_sampling_is_reproducible_and_follows_the_distribution() -> None:
    lg = logits_of(PROBS)
    def draw(seed: int) -> list[int]:
        s = Sampler(neutral(seed=seed), 8)
        return [s.sample(lg) for _ in range(50)]

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)
    s = Sampler(neutral(seed=1234), 8)
    n = 4000
    counts = torch.bincount(torch.tensor([s.sample(lg) for _ in range(n)]), minlength=8)
    got = [counts[i].item() / n for i in ranked_ids(PROBS)]
    assert got == pytest.approx(PROBS, abs=0.03)
    # temperature 0.5 squares the odds: p_i^2 / sum p^2
    s = Sampler(neutral(seed=99, temp=0.5), 8)
    counts = torch.bincount(torch.tensor([s.sample(lg) for _ in range(n)]), minlength=8)
    z = sum(p * p for p in PROBS)
    assert [counts[i].item() / n for i in ranked_ids(PROBS)] == pytest.approx([p * p / z for p in PROBS], abs=0.03)


def test_random_seed_is_drawn_and_reported() -> None:
    a, b = Sampler(SamplingParams(), 4), Sampler(SamplingParams(), 4)
    assert 0 <= a.seed < 2**32 and a.seed != b.seed
    assert Sampler(SamplingParams(seed=42), 4).seed == 42


def test_greedy_is_the_first_candidate_after_bias_and_penalties_and_leaves_the_logits_alone() -> None:
    lg = torch.randn(50000, generator=torch.Generator().manual_seed(5))  # above torch's parallel grain size
    before = lg.clone()
    top = lg.topk(3).indices.tolist()
    params = SamplingParams(temp=0.0, repeat_penalty=1.5, presence_penalty=0.5, frequency_penalty=0.25)
    s = Sampler(params, 50000, logit_bias={top[1]: -100.0, 7: 0.25})
    s.accept(top[0])  # the best token is penalized, the second banned
    greedy = s.sample(lg)
    ref = SamplingParams(**{**params.__dict__, "temp": 1.0})
    r = Sampler(ref, 50000, logit_bias={top[1]: -100.0, 7: 0.25})
    r.accept(top[0])
    assert greedy == int(r.candidates(lg)[1][0])
    assert torch.equal(lg, before)


def _reference_candidates(s: Sampler, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chain as plain tensor expressions (what Sampler.candidates computes with fewer ops)."""
    p = s.params
    lg = logits.clone()
    if s._bias is not None:
        lg[s._bias_ids] += s._bias
    lg = s.apply_penalties(lg)
    k = lg.shape[0] if p.top_k <= 0 else min(p.top_k, lg.shape[0])
    vals, ids = torch.topk(lg, k, sorted=True)
    if p.top_p < 1.0:
        cum = torch.cumsum(torch.softmax(vals, 0), 0)
        ok = (cum >= p.top_p) & (torch.arange(1, k + 1) >= p.min_keep)
        if ok.any():
            keep = int(ok.nonzero()[0]) + 1
            vals, ids = vals[:keep], ids[:keep]
    if p.min_p > 0.0:
        threshold = vals[0] + math.log(p.min_p)
        keep = max(int((vals >= threshold).sum()), p.min_keep, 1)
        vals, ids = vals[:keep], ids[:keep]
    return vals, ids


@pytest.mark.parametrize("seed", range(6))
def test_candidates_equal_the_tensor_expressions(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for trial in range(40):
        n = int(torch.randint(2, 300, (1,), generator=g))
        lg = torch.randn(n, generator=g) * float(torch.rand(1, generator=g) * 8)
        if trial % 5 == 0:
            lg = lg.round()  # ties
        params = SamplingParams(
            temp=1.0, top_k=int(torch.randint(0, 60, (1,), generator=g)),
            top_p=[1.0, 0.95, 0.5, 0.1, 0.999999][trial % 5], min_p=[0.0, 0.05, 0.3, 0.9][trial % 4],
            min_keep=[0, 0, 3, 500][trial % 4], repeat_penalty=1.3 if trial % 3 == 0 else 1.0, seed=1)
        s = Sampler(params, n, logit_bias={0: 2.0, n - 1: -1.5} if trial % 2 else None)
        for t in torch.randint(0, n, (5,), generator=g).tolist():
            s.accept(t)
        vals, ids = s.candidates(lg)
        rv, ri = _reference_candidates(s, lg)
        assert torch.equal(vals, rv) and torch.equal(ids, ri), (seed, trial, params)


def test_min_p_boundary_is_float32_as_llama_cpp() -> None:
    # llama.cpp keeps logit >= max_logit + logf(p) in float: a logit exactly at that float32 sum survives
    edge = float(torch.tensor(math.log(0.5), dtype=torch.float32))
    lg = torch.tensor([0.0, edge, -5.0, -9.0])
    _, ids = Sampler(neutral(min_p=0.5), 4).candidates(lg)
    assert ids.tolist() == [0, 1]
