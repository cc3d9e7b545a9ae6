"""FGSM (Goodfellow et al. 2014): one signed gradient step toward "real".

Default ``step = eps`` (the textbook attack: the whole budget in one step). The paper's
reference code used a 1/255 step; pass ``step=1/255`` to reproduce it (a much weaker attack).
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
    make_result,
    project_linf,
)


def fgsm(
    model: nn.Module,
    x: Tensor,
    eps: float = DEFAULT_EPS,
    step: float | None = None,
    loss: LossName = "margin",
    kappa: float = 0.0,
) -> AttackResult:
    """x_adv = Π(x − step · sign(∇ loss)); ``step=None`` means ``eps``.

    With the margin loss, samples g already calls real (loss 0, zero gradient) stay put.
    "dlr" needs no separate clean forward here: x itself is the clean crop.
    """
    x = check_input(x, eps)
    step = eps if step is None else step
    with frozen(model):
        _, grad, _ = loss_and_grad(model, x, loss, kappa)
        x_adv = project_linf(x - step * grad.sign(), x, eps)
        queries = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        return make_result(model, x, x_adv, queries, eps=eps)
