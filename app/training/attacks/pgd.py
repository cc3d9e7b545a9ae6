"""PGD (Madry et al. 2017) toward "real", as in the paper's eq. 2, with per-sample early stop.

Defaults follow the paper's reference code: eps 16/255, step 1/255, 100 iterations, and
**no random start** (eq. 2 starts from the clean crop; ``random_start=True`` gives Madry's
uniform start). A sample stops moving, and stops costing forward passes, as soon as its
margin Z_real − Z_fake exceeds ``kappa``.
"""

from __future__ import annotations

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
    make_generator,
    make_result,
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
) -> AttackResult:
    """L∞ PGD minimising ``loss`` (see base.py for its direction) on x in [0,1]."""
    x = check_input(x, eps)
    with frozen(model):
        x_adv = _start(x, eps, random_start, seed)
        x_adv, queries = _pgd_loop(model, x, x_adv, eps, step, iters, loss, kappa)
        return make_result(model, x, x_adv, queries)


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
) -> tuple[Tensor, Tensor]:
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    # iters gradient steps, then one last evaluation so the early-stop mask is exact.
    for it in range(iters + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = x_adv[idx]
        _, grad, m = loss_and_grad(model, xa, loss, kappa)
        queries[idx] += 1
        done = m > kappa
        active[idx[done]] = False
        if it == iters:
            break
        moving = idx[~done]
        stepped = xa[~done] - step * grad[~done].sign()
        x_adv[moving] = project_linf(stepped, x[moving], eps)
    return x_adv, queries
