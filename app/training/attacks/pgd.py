"""PGD (Madry et al. 2017) toward "real", as in the paper's eq. 2, with per-sample early stop.

Defaults follow the paper's reference code: eps 16/255, step 1/255, 100 iterations, one run
and **no random start** (eq. 2 starts from the clean crop; ``random_start=True`` gives Madry's
uniform start, the registry's ``pgd_rs``). A sample stops moving, and stops costing forward
passes, as soon as its margin Z_real − Z_fake exceeds ``kappa``.

``restarts > 1`` reruns the samples not yet fooled, restart r from a fresh uniform point drawn
with ``seed + r`` (without ``random_start`` only restart 0 starts at the clean crop: identical
reruns would be wasted). Per sample the first successful point is kept, else the final point
with the highest margin.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from app.training.attacks.base import (
    DEFAULT_EPS,
    DEFAULT_STEP,
    AttackResult,
    LossName,
    check_input,
    frozen,
    loss_and_grad,
    loss_ref,
    make_generator,
    make_result,
    pick,
    project_linf,
    uniform_in_ball,
)


def pgd(
    model: nn.Module,
    x: Tensor,
    eps: float = DEFAULT_EPS,
    step: float = DEFAULT_STEP,
    iters: int = 100,
    loss: LossName = "margin",
    kappa: float = 0.0,
    random_start: bool = False,
    seed: int = 0,
    restarts: int = 1,
) -> AttackResult:
    """L∞ PGD minimising ``loss`` (see base.py for its direction) on x in [0,1]."""
    x = check_input(x, eps)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    n = x.shape[0]
    best_x, best_m = x.clone(), torch.full((n,), -math.inf, device=x.device)
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    with frozen(model):
        ref = loss_ref(model, x, loss)
        for r in range(restarts):
            todo = (best_m <= kappa).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            start = _start(x[todo], eps, random_start or r > 0, seed + r)
            x_r, q, m = _pgd_loop(
                model, x[todo], start, eps, step, iters, loss, kappa, pick(ref, todo)
            )
            queries[todo] += q
            # A success (m > kappa) always beats an earlier failure (m <= kappa).
            keep = m > best_m[todo]
            best_x[todo[keep]], best_m[todo[keep]] = x_r[keep], m[keep]
        return make_result(model, x, best_x, queries, eps=eps)


def _start(x: Tensor, eps: float, use_random: bool, seed: int) -> Tensor:
    if not use_random:
        return x.clone()
    return uniform_in_ball(x, eps, make_generator(seed, x.device))


def _pgd_loop(
    model: nn.Module,
    x: Tensor,
    x_adv: Tensor,
    eps: float,
    step: float,
    iters: int,
    loss: LossName,
    kappa: float,
    ref: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One PGD run → (final points, queries, margin at each final point)."""
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    last_m = torch.full((x.shape[0],), -math.inf, device=x.device)
    # iters gradient steps, then one last evaluation so the early-stop mask is exact.
    for it in range(iters + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = x_adv[idx]
        _, grad, m = loss_and_grad(model, xa, loss, kappa, pick(ref, idx))
        queries[idx] += 1
        last_m[idx] = m
        done = m > kappa
        active[idx[done]] = False
        if it == iters:
            break
        moving = idx[~done]
        stepped = xa[~done] - step * grad[~done].sign()
        x_adv[moving] = project_linf(stepped, x[moving], eps)
    return x_adv, queries, last_m
