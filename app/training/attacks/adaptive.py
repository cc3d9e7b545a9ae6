"""Adaptive attacks of the paper (white box on g *and* on the XAI step), PGD-optimised.

    eq. 3:  L = BCE(g(x+δ), real) + BCE(d(x+δ, map(x+δ)), clean)
    eq. 4:  L = BCE(g(x+δ), real) + λ·‖map(x+δ) − map(x)‖₂        (per-sample L2, λ = 1)

With two logits, "BCE toward class k" is the 2-way cross-entropy toward k (= softplus of the
logit gap). ``map`` is the serving Saliency map made differentiable: the input-gradient of g's
real logit w.r.t. the tensor g sees (``g.prep(x)``), taken with ``create_graph=True``, then the
shared map rule (|a| / per-sample nearest-rank 99th percentile, clipped to [0,1]).

Second-order caveat: for a piecewise-linear g (ReLU + max-pool, e.g. Xception, ResNet) the input
gradient is locally constant, so d map / d x = 0 almost everywhere and the map terms give *no*
gradient: eq. 4 degenerates to plain BCE-PGD and eq. 3 reaches d only through its crop input.
Smooth activations (SiLU in EfficientNet) do not have this problem. ``softplus_beta`` computes the
map on a surrogate whose ``nn.ReLU`` modules are temporarily swapped for Softplus(β) (Dombrowski
et al. 2019; functional relu calls are not swapped); the BCE terms, the success judgement and
every reported number always use the real g.

Optimisation: signed steps of ``step`` in the L∞ ball (eps 16/255, step 1/255, 100 iterations).
Each sample returns its best iterate: successful ones first, then the lowest loss. eq. 3 stops a
sample once g calls it real and d calls it clean; eq. 4 runs all iterations by default because
its map term keeps improving after g is fooled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from app.models.wrappers import AdversarialDetector, Detector
from app.training.attacks.base import (
    DEFAULT_EPS,
    DEFAULT_STEP,
    REAL,
    AttackResult,
    ce_loss,
    check_input,
    frozen,
    l2,
    linf,
    margin,
    project_linf,
)

_EPS = 1e-12
# (points, their batch indices) -> (per-sample loss to minimise, per-sample success).
LossFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def differentiable_map(attr: Tensor, percentile: float = 99.0) -> Tensor:
    """The serving map rule (app.pipeline.explain.attribution_to_map) built from differentiable ops.

    That function detaches its input (serving needs no graph), so it cannot be reused here; this
    twin must stay value-identical to it (tests compare the two).
    """
    a = attr.abs()
    flat = a.flatten(1)
    k = max(1, math.ceil(percentile / 100.0 * flat.shape[1]))
    q = flat.kthvalue(k, dim=1).values
    denom = torch.where(q > _EPS, q, flat.amax(dim=1)).clamp_min(_EPS)
    return (a / denom.view(-1, *([1] * (a.ndim - 1)))).clamp(0.0, 1.0)


def saliency_map(
    g: Detector, x: Tensor, create_graph: bool = True, softplus_beta: float | None = None
) -> tuple[Tensor, Tensor]:
    """(map [B,3,S,S], g's logits) of the Saliency XAI for the real logit, differentiable in x.

    With ``create_graph`` the map keeps its graph to x (x must require grad or be computed
    from a tensor that does); otherwise it is a detached value.
    """
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().clone().requires_grad_(True)
        xn = g.prep(x)
        with _smooth_relus(g.net, softplus_beta):
            logits = g.net(xn)
            (attr,) = torch.autograd.grad(logits[:, REAL].sum(), xn, create_graph=create_graph)
    xai = differentiable_map(attr)
    return (xai, logits) if create_graph else (xai.detach(), logits.detach())


@contextmanager
def _smooth_relus(net: nn.Module, beta: float | None) -> Iterator[None]:
    """Temporarily make every ``nn.ReLU`` of ``net`` compute Softplus(beta); restored after."""
    if beta is None:
        yield
        return
    swapped = [
        (parent, name, child)
        for parent in net.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.ReLU)
    ]
    try:
        for parent, name, _ in swapped:
            setattr(parent, name, nn.Softplus(beta=beta))
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _map_and_logits(g: Detector, x: Tensor, beta: float | None) -> tuple[Tensor, Tensor]:
    """Map (on the surrogate if beta) and the *real* g's logits, both differentiable in x."""
    xai, logits = saliency_map(g, x, create_graph=True, softplus_beta=beta)
    if beta is not None:
        logits = g(x)
    return xai, logits


def adaptive_eq3(
    model: Detector,
    x: Tensor,
    detector: AdversarialDetector,
    eps: float = DEFAULT_EPS,
    step: float = DEFAULT_STEP,
    iters: int = 100,
    early_stop: bool = True,
    softplus_beta: float | None = None,
) -> AttackResult:
    """Eq. 3. Success: g calls real AND d calls clean. ``info``: ``g_real``, ``d_clean``."""
    x = check_input(x, eps)

    def loss_fn(xa: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        xai, g_logits = _map_and_logits(model, xa, softplus_beta)
        d_logits = detector(xa, xai)
        d_seen = d_logits
        if softplus_beta is not None:  # judge d on the map serving would really compute
            real_map, _ = saliency_map(model, xa.detach(), create_graph=False)
            with torch.no_grad():
                d_seen = detector(xa, real_map)
        ok = (margin(g_logits) > 0) & (margin(d_seen) > 0)
        return ce_loss(g_logits) + ce_loss(d_logits), ok

    with frozen(model, detector):
        x_adv, queries = _optimise(x, loss_fn, eps, step, iters, early_stop)
        info = _judge(model, detector, x, x_adv)
    success = info["g_real"] & info["d_clean"]
    return AttackResult(x_adv, success, queries, linf(x_adv, x), info, l2(x_adv, x), eps=eps)


def adaptive_eq4(
    model: Detector,
    x: Tensor,
    detector: AdversarialDetector | None = None,
    eps: float = DEFAULT_EPS,
    step: float = DEFAULT_STEP,
    iters: int = 100,
    lam: float = 1.0,
    early_stop: bool = False,
    softplus_beta: float | None = None,
) -> AttackResult:
    """Eq. 4. Success: g calls real. ``info``: ``g_real``, ``map_l2`` and, given d, ``d_clean``."""
    x = check_input(x, eps)
    mods = (model,) if detector is None else (model, detector)
    with frozen(*mods):
        ref, _ = saliency_map(model, x, create_graph=False, softplus_beta=softplus_beta)

        def loss_fn(xa: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            xai, g_logits = _map_and_logits(model, xa, softplus_beta)
            dist = torch.linalg.vector_norm((xai - ref[idx]).flatten(1), dim=1)
            return ce_loss(g_logits) + lam * dist, margin(g_logits) > 0

        x_adv, queries = _optimise(x, loss_fn, eps, step, iters, early_stop)
        info = _judge(model, detector, x, x_adv)
    return AttackResult(x_adv, info["g_real"], queries, linf(x_adv, x), info, l2(x_adv, x), eps=eps)


def _optimise(
    x: Tensor, loss_fn: LossFn, eps: float, step: float, iters: int, early_stop: bool
) -> tuple[Tensor, Tensor]:
    """Signed-gradient descent of ``loss_fn`` in the L∞ ball, keeping each sample's best iterate."""
    n = x.shape[0]
    x_adv, best_x = x.clone(), x.clone()
    best_loss = torch.full((n,), math.inf, device=x.device)
    best_ok = torch.zeros(n, dtype=torch.bool, device=x.device)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    for it in range(iters + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = x_adv[idx].requires_grad_(True)
        with torch.enable_grad():
            per_sample, ok = loss_fn(xa, idx)
            (grad,) = torch.autograd.grad(per_sample.sum(), xa)
        per_sample, queries[idx] = per_sample.detach(), queries[idx] + 1
        better = (ok & ~best_ok[idx]) | ((ok == best_ok[idx]) & (per_sample < best_loss[idx]))
        best_x[idx[better]], best_loss[idx[better]] = xa.detach()[better], per_sample[better]
        best_ok[idx[better]] = ok[better]
        if early_stop:
            active[idx[ok]] = False
        if it == iters:
            break
        moving = ~ok if early_stop else torch.ones_like(ok)
        stepped = xa.detach()[moving] - step * grad[moving].sign()
        x_adv[idx[moving]] = project_linf(stepped, x[idx[moving]], eps)
    return best_x, queries


def _judge(
    g: Detector, d: AdversarialDetector | None, x: Tensor, x_adv: Tensor
) -> dict[str, Tensor]:
    """Per-sample verdicts on the returned points, with the real (unsmoothed) g."""
    xai, g_logits = saliency_map(g, x_adv, create_graph=False)
    ref, _ = saliency_map(g, x, create_graph=False)
    info = {
        "g_real": margin(g_logits) > 0,
        "map_l2": torch.linalg.vector_norm((xai - ref).flatten(1), dim=1),
    }
    if d is not None:
        with torch.no_grad():
            info["d_clean"] = margin(d(x_adv, xai)) > 0
    return info
