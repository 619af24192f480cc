"""Bit-exact, vectorised ports of ggml's per-sub-block scale searches (ggml-quants.c):

    make_qkx2_quants  asymmetric scale + min, a grid of candidate scales refined by least squares (Q2_K, Q4_K, Q5_K)
    make_qx_quants    symmetric scale, 19 candidate scales                                   (Q6_K)
    make_q3_quants    symmetric scale refined by coordinate descent                           (Q3_K)
    iq4nl_search      the non-linear IQ4_NL grid search                                       (IQ4_NL)

Layout: every function takes sub-blocks element-major, x of shape (n, B) for B sub-blocks of n weights, so
that the C loops `for (i = 0; i < n; ++i) acc += ...` become n in-place adds of contiguous (…, B) slabs.
Python loops run only over those fixed sizes (n, candidates, tries), never over blocks.

Bit-exactness rules followed throughout (each one was checked against the C on random data):
- float32 everywhere, one torch op per C operator, in C's association order ((w*x)*l, not w*(x*l));
- sums accumulate in index order (`seq_sum`), never with torch.sum (pairwise/vectorised order);
- `c / tensor` is written `div(c, tensor)`: Tensor.__rtruediv__ multiplies by a reciprocal (two roundings);
- sqrt goes through float64 (torch's float32 sqrt on AVX-512 is not correctly rounded; double then float is);
- ggml's `nearest_int` is the bit trick (base.nearest_int) where its argument is not provably small, and
  torch.round (half to even, the same result) where it is;
- running "keep the best so far" selections are walked in C's order (the winner can change what later
  candidates compute), each step vectorised over sub-blocks.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import div, div_by, nearest_int  # noqa: F401  (div, div_by: re-exported for the codecs)

GROUP_MAX_EPS = float(np.float32(1e-15))


def f32(v: float) -> float:
    """A Python float holding exactly the float32 value C would compute for a constant."""
    return float(np.float32(v))


def sqrt_f32(t: torch.Tensor) -> torch.Tensor:
    """C sqrtf: the float64 square root rounded once to float32 is the correctly rounded float32 root."""
    return t.double().sqrt().float()


def seq_sum(t: torch.Tensor, first: bool = False) -> torch.Tensor:
    """Sum over dim 0 in index order, float32. `first`: C starts from the first term (`s = a[0]`), else from
    `0.0f` (which turns a leading -0.0 into +0.0)."""
    rows = t.unbind(0)
    acc = rows[0].clone() if first else rows[0] + 0.0
    for r in rows[1:]:
        acc.add_(r)
    return acc


def signed_absmax_cols(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, B) -> (max, amax), (B,) each: C's `if (ax > amax) { amax = ax; max = x[i]; }` from 0, i.e. the first
    element of largest magnitude (and +0 for an all-zero column). A NaN never wins (`NaN > amax` is false; the
    scales of a block whose x*x overflows are NaN), where torch's argmax would pick it: it counts as -1."""
    ax = x.abs().nan_to_num_(nan=-1.0, posinf=float("inf"))
    idx = ax.argmax(dim=0, keepdim=True)
    amax = ax.gather(0, idx)[0].clamp_(min=0.0)
    mx = x.gather(0, idx)[0]
    return torch.where(amax > 0, mx, torch.zeros_like(mx)), amax


def finite_or_zero(iscale: torch.Tensor) -> torch.Tensor:
    """An inverse scale for `levels`: iscale overflows to inf only for ranges below ~1e-37 (subnormal
    weights), where C gets nearest_int(inf) = -2^22 or nearest_int(inf*0 = NaN) = 0, both clamped to level
    0; a zero iscale gives the same levels."""
    return torch.where(iscale.isfinite(), iscale, torch.zeros_like(iscale))


def levels(iscale: torch.Tensor, xm: torch.Tensor, nmax: int) -> torch.Tensor:
    """`MAX(0, MIN(nmax, nearest_int(iscale*(x - min))))` for a finite iscale (B,) and x - min (n, B), as float:
    |iscale*(x - min)| stays near nmax, where torch.round (half to even) equals nearest_int."""
    return (iscale * xm).round_().clamp_(0, nmax)


def make_qkx2(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int,
              use_mad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qkx2_quants for B sub-blocks at once: x, w (n, B) -> (scale (B,), the_min (B,), L (n, B) float).

    The C tries `nstep + 1` candidate inverse scales in order and keeps a candidate when its weighted error
    is strictly below the best so far. An accepted candidate also replaces `min`, which the following
    candidates use (both in `x - min` and in `max - min`), so the candidates are walked in order; each step is
    vectorised over the B sub-blocks.
    """
    n, B = x.shape
    mn = x.amin(dim=0).clamp(max=0.0)  # `if (min > 0) min = 0`
    mx = x.amax(dim=0)
    sum_w = seq_sum(w, first=True)
    sum_x = seq_sum(w * x, first=True)
    flat = mx == mn  # L = 0, scale 0

    iscale = div(float(nmax), mx - mn)
    scale = div(1.0, iscale)  # from the raw iscale: 1/inf = 0, as C
    iscale = finite_or_zero(iscale)
    xm = x - mn
    la = levels(iscale, xm, nmax)
    diff = scale * la + mn - x
    best = seq_sum(w * (diff.abs_() if use_mad else diff.mul_(diff)))
    # L is rebuilt at the end from the (iscale, min) of the winning candidate instead of being copied out
    # of every accepted candidate
    win_iscale, win_mn = iscale, mn

    terms = torch.empty((n, 3, B), dtype=torch.float32, device=x.device)
    wl, wll, wlx = terms[:, 0], terms[:, 1], terms[:, 2]
    steps = np.arange(nstep + 1, dtype=np.float32)
    cands = (np.float32(rmin) + np.float32(rdelta) * steps) + np.float32(nmax)  # float32, C's order
    for c in cands.tolist():
        isc = finite_or_zero(div(c, mx - mn))
        torch.sub(x, mn, out=xm)
        torch.mul(xm, isc, out=la).round_().clamp_(0, nmax)
        torch.mul(w, la, out=wl)
        torch.mul(wl, la, out=wll)
        torch.mul(wl, x, out=wlx)
        sum_l, sum_l2, sum_xl = seq_sum(terms)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min = this_min.masked_fill_(pos, 0.0)
        this_scale = torch.where(pos, sum_xl / sum_l2, this_scale)
        torch.mul(la, this_scale, out=diff).add_(this_min).sub_(x)  # this_scale*L + this_min - x
        mad = seq_sum((diff.abs_() if use_mad else diff.mul_(diff)).mul_(w))
        take = (D > 0) & (mad < best)
        win_iscale = torch.where(take, isc, win_iscale)
        win_mn = torch.where(take, mn, win_mn)
        best = torch.where(take, mad, best)
        scale = torch.where(take, this_scale, scale)
        mn = torch.where(take, this_min, mn)

    L = levels(win_iscale, x - win_mn, nmax)
    scale = scale.masked_fill_(flat, 0.0)
    L = L.masked_fill_(flat, 0.0)
    return scale, -mn, L


def make_qx(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) for B sub-blocks: x (n, B) -> (scale (B,), L (n, B)
    float in 0..2*nmax-1). Weights are x*x. The acceptance test depends on the running best, so the 18
    refinement candidates are walked in C's order (is = -9..9 without 0)."""
    mx, amax = signed_absmax_cols(x)
    zero = amax < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)  # keep the arithmetic finite; zero columns are reset below
    offsets = [0.0] + [f32(nmax + f32(np.float32(0.1) * np.float32(i))) for i in (*range(-9, 0), *range(1, 10))]
    neg = torch.tensor([-float(nmax)] + [-o for o in offsets[1:]], dtype=torch.float32, device=x.device)
    isc = neg[:, None] / mx  # (S, B): -nmax/max, then -(nmax + 0.1f*is)/max
    l = (isc * x[:, None, :]).round_().clamp_(-nmax, nmax - 1)  # (n, S, B)
    w = x * x
    n, S, B = l.shape
    terms = torch.empty((n, 2, S, B), dtype=torch.float32, device=x.device)
    torch.mul((w * x)[:, None, :], l, out=terms[:, 0])  # w*x*l
    torch.mul(w[:, None, :], l, out=terms[:, 1])
    terms[:, 1].mul_(l)  # w*l*l
    sumlx, suml2 = seq_sum(terms)

    scale = torch.where(suml2[0] != 0, sumlx[0] / suml2[0], torch.zeros_like(sumlx[0]))
    best = scale * sumlx[0]
    choice = torch.zeros(B, dtype=torch.int64, device=x.device)
    for k in range(1, S):
        sk = sumlx[k] / suml2[k]
        acc = (suml2[k] > 0) & (sumlx[k] * sumlx[k] > best * suml2[k])
        scale = torch.where(acc, sk, scale)
        best = torch.where(acc, sk * sumlx[k], best)
        choice = torch.where(acc, torch.full_like(choice, k), choice)
    L = l.gather(1, choice[None, None, :].expand(n, 1, B))[:, 0] + nmax
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    L = torch.where(zero, torch.zeros_like(L), L)
    return scale, L


def make_q3(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true): x (n, B) -> (scale (B,), L (n, B) float in 0..2*nmax-1).

    Coordinate descent: up to 5 sweeps over the elements in order, each element's new level accepted when it
    improves sumlx^2/suml2. A sweep that changes nothing leaves the state as it was, so running all 5 sweeps
    for every sub-block equals C's early `break`."""
    mx, amax = signed_absmax_cols(x)
    zero = amax < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    iscale = div(-float(nmax), mx)
    L = (iscale * x).round_().clamp_(-nmax, nmax - 1)  # (n, B)
    w = x * x
    wx = w * x
    sumlx = seq_sum(wx * L)
    suml2 = seq_sum(w * L * L)
    n = x.shape[0]
    for _ in range(5):
        for i in range(n):
            li, wi, wxi = L[i], w[i], wx[i]
            slx = sumlx - wxi * li
            sl2 = suml2 - wi * li * li
            # nearest_int's bit trick on purpose: slx may be tiny, and C clamps whatever the trick returns
            new = nearest_int(x[i] * sl2 / slx).clamp_(-nmax, nmax - 1).to(torch.float32)
            ok = (slx > 0) & (new != li)
            slx = slx + wxi * new
            sl2 = sl2 + wi * new * new
            ok &= (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = torch.where(ok, new, li)
            sumlx = torch.where(ok, slx, sumlx)
            suml2 = torch.where(ok, sl2, suml2)
    scale = sumlx / suml2
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    L = torch.where(zero, torch.zeros_like(L), L + nmax)
    return scale, L
