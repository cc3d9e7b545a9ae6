"""NES (Ilyas et al. 2018; Qiu et al. 2021): black-box L∞ attack from scores only.

Each step estimates the loss gradient with ``n_pairs`` antithetic Gaussian pairs,
    ĝ = 1/(2nσ) Σ_i [L(x + σu_i) − L(x − σu_i)] u_i,   u_i ~ N(0, I),
then takes a signed step x ← Π(x − step·sign(ĝ)). Paper defaults: 20 pairs, σ = 0.001,
step 1/255, 100 iterations, 5 restarts (the first from the clean crop, the others from a
uniform point of the ball). Query points are clipped to [0,1]: an attacker can only submit
valid images. The model is only ever called through ``scores`` (no_grad, never autograd).
Queries per sample: 2·n_pairs per step + 1 evaluation of each new point (used to stop early).
``max_queries`` caps that total per sample (None: the iters × restarts budget alone): a sample
stops before a step that would exceed it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from app.training.attacks.base import (
    DEFAULT_EPS,
    DEFAULT_STEP,
    AttackResult,
    LossName,
    attack_loss,
    check_input,
    frozen,
    make_generator,
    make_result,
    margin,
    pick,
    project_linf,
    scores,
    uniform_in_ball,
)


def nes(
    model: nn.Module,
    x: Tensor,
    eps: float = DEFAULT_EPS,
    step: float = DEFAULT_STEP,
    iters: int = 100,
    restarts: int = 5,
    n_pairs: int = 20,
    sigma: float = 1e-3,
    loss: LossName = "margin",
    kappa: float = 0.0,
    seed: int = 0,
    max_batch: int | None = None,
    max_queries: int | None = None,
) -> AttackResult:
    """Returns per sample the first point g calls real (by kappa), else the lowest-loss point.

    ``max_batch`` caps how many images go through the model at once (queries are chunked);
    ``max_queries`` caps the queries each sample may spend.
    """
    x = check_input(x, eps)
    gen = make_generator(seed, x.device)
    budget, cost = math.inf if max_queries is None else max_queries, 2 * n_pairs + 1
    with frozen(model):
        clean = scores(model, x, max_batch)
        ref = clean if loss == "dlr" else None  # "dlr" scales by the clean logits
        ones = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        st = _State(x.clone(), attack_loss(clean, loss, kappa, ref), margin(clean) > kappa, ones)
        for r in range(restarts):
            todo = (~st.success & (st.queries + cost <= budget)).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            x_cur = x.clone()
            if r > 0:
                x_cur[todo] = uniform_in_ball(x[todo], eps, gen)
            for _ in range(iters):
                idx = (~st.success & (st.queries + cost <= budget)).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                sub = pick(ref, idx)
                est = _estimate(model, x_cur[idx], n_pairs, sigma, gen, loss, kappa, max_batch, sub)
                x_new = project_linf(x_cur[idx] - step * est.sign(), x[idx], eps)
                x_cur[idx] = x_new
                logits = scores(model, x_new, max_batch)
                st.queries[idx] += cost
                new_loss = attack_loss(logits, loss, kappa, sub)
                st.update(idx, x_new, new_loss, margin(logits) > kappa)
        return make_result(model, x, st.best_x, st.queries, max_batch=max_batch, eps=eps)


@dataclass
class _State:
    """Per-sample best point so far: the first success, else the lowest loss."""

    best_x: Tensor
    best_loss: Tensor
    success: Tensor
    queries: Tensor

    def update(self, idx: Tensor, x_new: Tensor, new_loss: Tensor, won: Tensor) -> None:
        keep = won | (new_loss < self.best_loss[idx])
        self.best_x[idx[keep]], self.best_loss[idx[keep]] = x_new[keep], new_loss[keep]
        self.success[idx[won]] = True


def _estimate(
    model: nn.Module,
    x: Tensor,
    n_pairs: int,
    sigma: float,
    gen: torch.Generator,
    loss: LossName,
    kappa: float,
    max_batch: int | None,
    ref: Tensor | None = None,
) -> Tensor:
    """Antithetic NES gradient estimate for each sample of x (scores only)."""
    b = x.shape[0]
    # Pairs per model call: all of them unless max_batch asks for smaller calls. Directions are
    # drawn one pair at a time so the result does not depend on the chunking.
    per_call = n_pairs if max_batch is None else max(1, max_batch // (2 * b))
    est = torch.zeros_like(x)
    for start in range(0, n_pairs, per_call):
        k = min(per_call, n_pairs - start)
        u = torch.stack(
            [torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) for _ in range(k)],
            dim=1,
        )  # [b, k, C, H, W]
        pts = torch.cat([x.unsqueeze(1) + sigma * u, x.unsqueeze(1) - sigma * u], dim=1)
        pts = pts.clamp(0.0, 1.0).flatten(0, 1)
        pts_ref = None if ref is None else ref.repeat_interleave(2 * k, dim=0)
        lval = attack_loss(scores(model, pts, max_batch), loss, kappa, pts_ref).view(b, 2 * k)
        diff = (lval[:, :k] - lval[:, k:]).view(b, k, 1, 1, 1)
        est += (diff * u).sum(dim=1)
    return est / (2 * n_pairs * sigma)


def nes_queries(iters: int, restarts: int, n_pairs: int) -> int:
    """Worst-case queries per sample (a sample that never succeeds)."""
    return 1 + restarts * iters * (2 * n_pairs + 1)
