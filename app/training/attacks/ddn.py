"""DDN (Rony et al. 2019, "Decoupling Direction and Norm"): an L2 attack toward "real".

DDN searches for the *smallest* L2 perturbation that makes g call the face real. It keeps a
norm budget ε and a perturbation δ, and at each iteration
    1. takes a gradient step of L2 length α on the direction: δ ← δ − α · ∇L / ‖∇L‖₂,
    2. shrinks ε by (1 − γ) if the current point is already real (by kappa), else grows it by
       (1 + γ), and rescales δ onto the sphere of radius ε, then clips x + δ into [0,1].
Defaults: 100 iterations, γ = 0.05, ε₀ = 1, α cosine-annealed from 1 to 0.01 (as the authors'
released code; the paper's Algorithm 1 keeps α fixed), loss CE toward real (the paper's).

Stated bound: ε never exceeds ``eps_l2`` (default 3.0, on [0,1] crops at 128 px), so every
point DDN visits lies in that L2 ball and in [0,1]. 3.0 on 3·128·128 values is an RMS change of
≈ 3.5/255 per value, far inside the L∞ 16/255 ball (whose corners are at L2 ≈ 13.9). For other
crop sizes scale the bound with the side (same RMS): eps_l2 · side / 128.

Per sample the result is the smallest-L2 point g called real, else the point with the highest
margin. Faces g already calls real (δ = 0 works) cost one query and are returned unchanged;
the others run all iterations, since DDN keeps shrinking the norm after its first success.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from app.training.attacks.base import (
    AttackResult,
    LossName,
    check_input,
    frozen,
    l2,
    loss_and_grad,
    loss_ref,
    make_result,
    pick,
    project_l2,
)

DEFAULT_EPS_L2 = 3.0


def ddn(
    model: nn.Module,
    x: Tensor,
    eps_l2: float = DEFAULT_EPS_L2,
    iters: int = 100,
    gamma: float = 0.05,
    init_norm: float = 1.0,
    alpha: float = 1.0,
    alpha_min: float = 0.01,
    loss: LossName = "ce",
    kappa: float = 0.0,
    quantize: bool = False,
) -> AttackResult:
    """L2 DDN within the ball of radius ``eps_l2`` around x in [0,1].

    ``quantize``: round every iterate to the 1/255 grid (as the authors' released code can).
    The smallest L2 point is spread over every pixel at well under 1/255 each, so an upload
    (uint8) erases it: measured on the demo g, no unquantised DDN crop survived PNG rounding.
    Rounding can push δ past the sphere, so the L2 projection runs after it.
    """
    x = check_input(x, eps_l2)
    n = x.shape[0]
    x_adv = x.clone()
    norm = torch.full((n,), min(init_norm, eps_l2), device=x.device)
    best = _Best.empty(x)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    with frozen(model):
        ref = loss_ref(model, x, loss)
        for k in range(iters + 1):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            _, grad, m = loss_and_grad(model, x_adv[idx], loss, kappa, pick(ref, idx))
            queries[idx] += 1
            adv = m > kappa
            best.update(idx, x_adv[idx], l2(x_adv[idx], x[idx]), m, adv)
            if k == 0:  # already real at δ = 0: nothing can beat norm 0
                active[idx[adv]] = False
                idx, grad, adv = idx[~adv], grad[~adv], adv[~adv]
            if k == iters or idx.numel() == 0:
                continue
            shrink = torch.where(adv, 1.0 - gamma, 1.0 + gamma)
            norm[idx] = (norm[idx] * shrink).clamp(max=eps_l2)
            step = alpha_min + (alpha - alpha_min) * (1 + math.cos(math.pi * k / iters)) / 2
            moved = _step(x[idx], x_adv[idx], grad, step, norm[idx])
            if quantize:
                moved = _round_into_ball(moved, x[idx], eps_l2)
            # A no-op up to rounding (norm <= eps_l2, clipping only shrinks δ): the stated bound.
            x_adv[idx] = project_l2(moved, x[idx], eps_l2)
        return make_result(model, x, best.x, queries, norm="l2", eps=eps_l2)


def _round_into_ball(x_adv: Tensor, x: Tensor, eps_l2: float) -> Tensor:
    """x_adv on the uint8 grid; where rounding left the L2 ball, the δ values round toward 0."""
    q = (x_adv.clamp(0, 1) * 255).round() / 255
    outside = l2(q, x) > eps_l2
    if outside.any():
        d = (x_adv - x)[outside] * 255
        q[outside] = (x[outside] + torch.trunc(d) / 255).clamp(0, 1)
    return q


def _unit(v: Tensor) -> Tensor:
    """v / ‖v‖₂ per sample (zero stays zero)."""
    n = torch.linalg.vector_norm(v.flatten(1), dim=1).clamp_min(1e-12)
    return v / n.view(-1, *([1] * (v.ndim - 1)))


def _step(x: Tensor, x_adv: Tensor, grad: Tensor, alpha: float, norm: Tensor) -> Tensor:
    """Direction step of length alpha, then δ onto the sphere of radius ``norm``."""
    delta = x_adv - x - alpha * _unit(grad)
    return x + _unit(delta) * norm.view(-1, 1, 1, 1)


@dataclass
class _Best:
    """Per sample: the smallest-L2 point called real, else the highest-margin point so far."""

    x: Tensor
    l2: Tensor
    m: Tensor
    found: Tensor

    @classmethod
    def empty(cls, x: Tensor) -> _Best:
        n = x.shape[0]
        inf = torch.full((n,), math.inf, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        return cls(x.clone(), inf, -inf.clone(), found)

    def update(self, idx: Tensor, xa: Tensor, dist: Tensor, m: Tensor, adv: Tensor) -> None:
        found = self.found[idx]
        smaller = adv & (~found | (dist < self.l2[idx]))
        higher = ~adv & ~found & (m > self.m[idx])
        keep = smaller | higher
        k = idx[keep]
        self.x[k], self.l2[k], self.m[k] = xa[keep], dist[keep], m[keep]
        self.found[idx[adv]] = True
