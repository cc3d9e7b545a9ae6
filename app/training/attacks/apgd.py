"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness…"), L∞, toward real.

Per restart (all restarts start from a uniform random point of the ball, as in the paper):
step η = 2·eps; x1 = Π(x0 − η·sign∇); then momentum steps
    z = Π(x_k − η·sign∇(x_k)),  x_{k+1} = Π(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1})), α = 0.75.
At checkpoints w_j = ⌈p_j·N⌉ (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06))
a sample halves η and restarts from its best point when
    (1) fewer than ρ = 0.75 of the steps since the last checkpoint lowered the loss, or
    (2) η was not halved at the last checkpoint and the best loss has not improved since.
The momentum memory is reset at that best point (x_{k−1} := x_best).

Loss: the shared margin (default), CE, or "dlr". torchattacks' DLR loss needs ≥ 3 classes (it
divides by Z_π1 − Z_π3) and breaks on a 2-logit detector; "dlr" here is the binary variant of
base.py (the margin over the clean crop's logit scale).
Samples stop (per restart and across restarts) as soon as g calls them real by ``kappa``; one
query first checks the clean point, and faces already called real are returned unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from app.training.attacks.base import (
    DEFAULT_EPS,
    AttackResult,
    LossName,
    check_input,
    frozen,
    loss_and_grad,
    make_generator,
    make_result,
    margin,
    pick,
    project_linf,
    scores,
    uniform_in_ball,
)


def apgd_checkpoints(iters: int) -> list[int]:
    """Iteration counts w_j (1 ≤ w_j < iters) at which the step-size conditions are checked."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round() first: 0.22 * 100 is 22.000000000000004 in floating point, and ceil would give 23.
    ws = {math.ceil(round(pj * iters, 9)) for pj in p[1:]}
    return sorted(w for w in ws if 0 < w < iters)


def apgd(
    model: nn.Module,
    x: Tensor,
    eps: float = DEFAULT_EPS,
    iters: int = 100,
    restarts: int = 5,
    loss: LossName = "margin",
    kappa: float = 0.0,
    rho: float = 0.75,
    alpha: float = 0.75,
    seed: int = 0,
) -> AttackResult:
    """APGD with ``restarts`` random restarts; returns, per sample, the first successful point
    or else the lowest-loss point over all restarts."""
    x = check_input(x, eps)
    gen = make_generator(seed, x.device)
    n = x.shape[0]
    best_x, best_loss = x.clone(), torch.full((n,), math.inf, device=x.device)
    queries = torch.ones(n, dtype=torch.long, device=x.device)
    with frozen(model):
        # Faces g already calls real are returned untouched (the random start would move them).
        clean = scores(model, x)
        success = margin(clean) > kappa
        ref = clean if loss == "dlr" else None  # "dlr" scales by the clean logits
        for _ in range(restarts):
            todo = (~success).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            start = uniform_in_ball(x[todo], eps, gen)
            run = _Run(model, x[todo], start, eps, loss, kappa, pick(ref, todo))
            run = run.optimise(iters, rho, alpha)
            queries[todo] += run.queries
            keep = run.success | (run.best_loss < best_loss[todo])
            best_x[todo[keep]] = run.x_out[keep]
            best_loss[todo[keep]] = run.best_loss[keep]
            success[todo[run.success]] = True
        return make_result(model, x, best_x, queries, eps=eps)


@dataclass
class _RunOut:
    x_out: Tensor
    best_loss: Tensor
    success: Tensor
    queries: Tensor


class _Run:
    """State of one APGD restart over a (sub)batch; every tensor is per sample."""

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        start: Tensor,
        eps: float,
        loss: LossName,
        kappa: float,
        ref: Tensor | None = None,
    ) -> None:
        self.model, self.x, self.eps, self.loss, self.kappa = model, x, eps, loss, kappa
        self.ref = ref  # clean logits: the "dlr" scale
        n = x.shape[0]
        self.step = torch.full((n,), 2 * eps, device=x.device)
        self.x_adv, self.x_prev = start.clone(), start.clone()
        self.loss_cur, self.grad, m = loss_and_grad(model, start, loss, kappa, ref)
        self.queries = torch.ones(n, dtype=torch.long, device=x.device)
        self.success = m > kappa
        self.x_succ = start.clone()
        self.best_loss, self.x_best = self.loss_cur.clone(), start.clone()
        self.grad_best = self.grad.clone()

    def optimise(self, iters: int, rho: float, alpha: float) -> _RunOut:
        checkpoints = set(apgd_checkpoints(iters))
        n_down = torch.zeros_like(self.step)  # steps that lowered the loss since last check
        reduced_last = torch.zeros_like(self.success)
        best_at_check, last_check = self.best_loss.clone(), 0
        for k in range(iters):
            idx = (~self.success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            n_down[idx] += self._step(idx, 1.0 if k == 0 else alpha).float()
            if k + 1 in checkpoints:
                cond1 = n_down < rho * (k + 1 - last_check)
                cond2 = ~reduced_last & (self.best_loss >= best_at_check)
                reduced_last = (cond1 | cond2) & ~self.success
                self._restart_from_best(reduced_last)
                best_at_check, last_check = self.best_loss.clone(), k + 1
                n_down.zero_()
        x_out = torch.where(self.success.view(-1, 1, 1, 1), self.x_succ, self.x_best)
        return _RunOut(x_out, self.best_loss, self.success, self.queries)

    def _step(self, idx: Tensor, a: float) -> Tensor:
        """One momentum step on the active samples; returns whether each lowered the loss."""
        xa, xs = self.x_adv[idx], self.x[idx]
        eta = self.step[idx].view(-1, 1, 1, 1)
        z = project_linf(xa - eta * self.grad[idx].sign(), xs, self.eps)
        xn = project_linf(xa + a * (z - xa) + (1 - a) * (xa - self.x_prev[idx]), xs, self.eps)
        new_loss, grad, m = loss_and_grad(
            self.model, xn, self.loss, self.kappa, pick(self.ref, idx)
        )
        self.queries[idx] += 1
        lowered = new_loss < self.loss_cur[idx]
        self.x_prev[idx], self.x_adv[idx] = xa, xn
        self.grad[idx], self.loss_cur[idx] = grad, new_loss
        better = new_loss < self.best_loss[idx]
        bi = idx[better]
        self.best_loss[bi], self.x_best[bi], self.grad_best[bi] = (
            new_loss[better],
            xn[better],
            grad[better],
        )
        won = m > self.kappa
        self.success[idx[won]] = True
        self.x_succ[idx[won]] = xn[won]
        return lowered

    def _restart_from_best(self, mask: Tensor) -> None:
        self.step[mask] /= 2
        self.x_adv[mask] = self.x_best[mask]
        self.x_prev[mask] = self.x_best[mask]
        self.grad[mask] = self.grad_best[mask]
        self.loss_cur[mask] = self.best_loss[mask]
