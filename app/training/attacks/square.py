"""Square Attack (Andriushchenko et al. 2020), L∞ version: black-box random search on scores.

Init: vertical stripes, x0 = clip(x + eps·s) with one random sign per (channel, column).
Each iteration every still-unsuccessful sample draws one square window of side
s = round(√(p·H·W)) (at least 1, at most H−1) at a random place, and sets the whole window, per
channel, to a fresh ±eps perturbation (a change of up to 2·eps); the candidate is kept only
if it lowers the margin loss Z_fake − Z_real. p follows the authors' piecewise schedule from
p_init = 0.8 (halved at fixed fractions of the query budget). Windows are drawn per sample
(the authors' batched code shares one location across the batch), so a sample's attack does not
depend on its batch neighbours' geometry. The model is only ever called through ``scores``.
Queries: 1 for the clean point (faces g already calls real are returned unchanged), 1 for the
stripes init, then 1 per iteration while the sample is unsuccessful; at most ``max_queries``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from app.training.attacks.base import (
    DEFAULT_EPS,
    AttackResult,
    check_input,
    frozen,
    make_generator,
    make_result,
    margin,
    project_linf,
    scores,
)

# (upper bound of the iteration, rescaled to a 10 000-query run) → divisor of p_init.
_P_SCHEDULE = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
)


def square_p(p_init: float, it: int, max_queries: int) -> float:
    """Fraction of pixels changed at iteration ``it`` (the authors' schedule, budget-rescaled)."""
    t = int(it / max_queries * 10000)
    for bound, div in _P_SCHEDULE:
        if t <= bound:
            return p_init / div
    return p_init / 512


def square(
    model: nn.Module,
    x: Tensor,
    eps: float = DEFAULT_EPS,
    max_queries: int = 5000,
    p_init: float = 0.8,
    kappa: float = 0.0,
    seed: int = 0,
    max_batch: int | None = None,
) -> AttackResult:
    """Square attack toward "real"; stops per sample once Z_real − Z_fake > kappa."""
    x = check_input(x, eps)
    gen = make_generator(seed, x.device)
    n, c, h, w = x.shape
    with frozen(model):
        x_best, m_best = x.clone(), margin(scores(model, x, max_batch))
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        todo = (m_best <= kappa).nonzero().squeeze(1)  # faces already called real stay untouched
        if todo.numel():
            signs = _signs((todo.numel(), c, 1, w), gen, x)
            stripes = project_linf(x[todo] + eps * signs, x[todo], eps)
            x_best[todo], m_best[todo] = stripes, margin(scores(model, stripes, max_batch))
            queries[todo] += 1
        for it in range(max_queries - 2):
            idx = (m_best <= kappa).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            side = _side(square_p(p_init, it, max_queries), h, w)
            x_new = _candidate(x[idx], x_best[idx], side, eps, gen)
            m_new = margin(scores(model, x_new, max_batch))
            queries[idx] += 1
            # Lower margin loss (Z_fake − Z_real) ⇔ higher margin; ties keep the old point.
            better = m_new > m_best[idx]
            x_best[idx[better]], m_best[idx[better]] = x_new[better], m_new[better]
        return make_result(model, x, x_best, queries, max_batch=max_batch, eps=eps)


def _side(p: float, h: int, w: int) -> int:
    """Square side covering a fraction p of the pixels, within [1, min(h, w) − 1]."""
    return min(max(round(math.sqrt(p * h * w)), 1), min(h, w) - 1)


def _signs(shape: tuple[int, ...], gen: torch.Generator, like: Tensor) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=gen, device=like.device)
    return bits.to(like.dtype) * 2 - 1


def _window_mask(b: int, h: int, w: int, side: int, gen: torch.Generator, x: Tensor) -> Tensor:
    """[b,1,h,w] boolean mask of one random side×side square per sample."""
    top = torch.randint(0, h - side + 1, (b, 1), generator=gen, device=x.device)
    left = torch.randint(0, w - side + 1, (b, 1), generator=gen, device=x.device)
    rows = torch.arange(h, device=x.device).unsqueeze(0)
    cols = torch.arange(w, device=x.device).unsqueeze(0)
    in_rows = (rows >= top) & (rows < top + side)
    in_cols = (cols >= left) & (cols < left + side)
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


def _candidate(x: Tensor, x_best: Tensor, side: int, eps: float, gen: torch.Generator) -> Tensor:
    """x_best with one square per sample reset to ±eps per channel.

    Redraws (a few times) the signs of samples whose window would not change at all, which
    happens where the image is saturated at 0 or 1: a query that cannot move is wasted.
    """
    b, c, h, w = x.shape
    mask = _window_mask(b, h, w, side, gen, x)
    delta = x_best - x
    cand = x_best
    redo = torch.ones(b, dtype=torch.bool, device=x.device)
    for _ in range(10):
        fresh = eps * _signs((b, c, 1, 1), gen, x)
        trial = project_linf(x + torch.where(mask, fresh, delta), x, eps)
        cand = torch.where(redo.view(-1, 1, 1, 1), trial, cand)
        redo = redo & ((cand - x_best).abs().flatten(1).amax(dim=1) < 1e-7)
        if not redo.any():
            break
    return cand
