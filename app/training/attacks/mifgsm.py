"""MI-FGSM (Dong et al. 2018, "Boosting adversarial attacks with momentum") toward "real".

Iterative FGSM whose step follows an accumulated, L1-normalised gradient:

    g_{t+1} = mu · g_t + ∇L(x_t) / ‖∇L(x_t)‖₁,    x_{t+1} = Π(x_t − step · sign(g_{t+1}))

with the paper's defaults: mu = 1.0, eps 16/255, 10 iterations, step = eps / iters (so the
iterations can just reach the edge of the ball). The per-sample L1 normalisation makes every
gradient count equally in the momentum, however steep the loss is at that point. Momentum
stabilises the direction, which is what makes MI-FGSM transfer better to unseen models than
PGD. Like PGD, a sample stops (and stops costing forward passes) once g calls it real by kappa.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from app.training.attacks.base import (
    DEFAULT_EPS,
    AttackResult,
    LossName,
    check_input,
    frozen,
    loss_and_grad,
    loss_ref,
    make_result,
    pick,
    project_linf,
)


def mifgsm(
    model: nn.Module,
    x: Tensor,
    eps: float = DEFAULT_EPS,
    iters: int = 10,
    step: float | None = None,
    mu: float = 1.0,
    loss: LossName = "margin",
    kappa: float = 0.0,
) -> AttackResult:
    """L∞ MI-FGSM from the clean crop; ``step=None`` means ``eps / iters``."""
    x = check_input(x, eps)
    step = eps / max(iters, 1) if step is None else step
    x_adv, momentum = x.clone(), torch.zeros_like(x)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    with frozen(model):
        ref = loss_ref(model, x, loss)
        # iters steps, then one last evaluation so the early-stop mask is exact (as in PGD).
        for it in range(iters + 1):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            _, grad, m = loss_and_grad(model, x_adv[idx], loss, kappa, pick(ref, idx))
            queries[idx] += 1
            done = m > kappa
            active[idx[done]] = False
            if it == iters:
                break
            mv = idx[~done]
            momentum[mv] = mu * momentum[mv] + _l1_normalised(grad[~done])
            stepped = x_adv[mv] - step * momentum[mv].sign()
            x_adv[mv] = project_linf(stepped, x[mv], eps)
        return make_result(model, x, x_adv, queries, eps=eps)


def _l1_normalised(grad: Tensor) -> Tensor:
    """grad / ‖grad‖₁ per sample (a zero gradient stays zero)."""
    norm = grad.abs().flatten(1).sum(dim=1).clamp_min(1e-12)
    return grad / norm.view(-1, *([1] * (grad.ndim - 1)))
