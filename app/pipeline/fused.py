"""g's scores and its gradient maps from one forward pass (Saliency and Input×Gradient).

The separate path scores the batch with g (no graph), then runs captum on the faces that need a
map: a second forward plus a backward. Both maps supported here are functions of the input
gradient of one logit per face, so one forward *with* input gradients, then one backward of
``sum_i logit_i[target_i]``, gives every face its own map at once: rows do not interact (g runs
in eval mode), so face i's gradient is exactly ∂logit_i[target_i]/∂x_i, what captum computes.
Faces without a target get a zero gradient, which costs the same backward: the fused path pays
off when most faces need a map (the Analyzer decides, see ``fused_pays``).

Attributions are taken w.r.t. ``detector.prep(crops)``, in fp32, as :class:`Explainer` does.
Guided Backprop and Integrated Gradients need other passes and keep captum.

With an :class:`~app.runtime.onnx_grad.OnnxGradGraph` (``DFSHIELD_BACKEND=onnx``) the same pass
runs as one ONNX Runtime graph that also picks each face's target itself; its whole cost is
reported as the forward (``backward_s`` 0): one graph, not two stages.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from app.models.wrappers import Detector
from app.pipeline.explain import frozen_eval

if TYPE_CHECKING:  # onnxruntime loads only with the onnx backend
    from app.runtime.onnx_grad import OnnxGradGraph

FUSED_METHODS: tuple[str, ...] = ("saliency", "input_x_gradient")
NO_TARGET = -1
# Share of faces needing a map above which one fused pass beats g + captum on the share
# (measured with `dfshield bench pipeline`, bundled pair, this CPU; README "Performance").
FUSED_BREAK_EVEN = 0.6


@dataclass(frozen=True)
class FusedPass:
    """One batch through g with its input-gradient attributions."""

    p_fake: torch.Tensor  # [B]
    attributions: torch.Tensor  # [B,3,S,S]; zero where the face had no target
    forward_s: float  # g's forward (with the graph kept)
    backward_s: float  # the one backward that gives every map
    targets: torch.Tensor  # [B] the logit each map explains (Detector.REAL/FAKE, NO_TARGET)


def fused_pass(detector: Detector, crops: torch.Tensor, method: str,
               targets_of: TargetRule, graph: OnnxGradGraph | None = None) -> FusedPass:
    """Forward ``crops`` once with input gradients; ``targets_of(p_fake)`` picks each face's
    logit to explain (``NO_TARGET`` for none); one backward gives every map. ``graph``: run
    it in ONNX Runtime instead (the rule's tau and explain_fake go into the graph)."""
    if method not in FUSED_METHODS:
        raise ValueError(f"{method!r} cannot be fused; fused methods: {', '.join(FUSED_METHODS)}")
    device = next(detector.parameters()).device
    with torch.no_grad():
        x_n = detector.prep(crops.to(device, torch.float32)).detach().clone()
    if graph is not None:
        return _graph_pass(graph, x_n, method, targets_of)
    x_n.requires_grad_(True)
    with ExitStack() as stack:
        stack.enter_context(frozen_eval(detector))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast(device.type, enabled=False))
        t0 = time.perf_counter()
        logits = detector.net(x_n)
        p_fake = logits.detach().float().softmax(dim=1)[:, Detector.FAKE]
        t1 = time.perf_counter()
        targets = targets_of(p_fake).to(device)
        grad = _input_grad(x_n, logits, targets)
    return FusedPass(p_fake, _attribution(method, x_n.detach(), grad), t1 - t0,
                     time.perf_counter() - t1, targets)


def _attribution(method: str, x_n: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    attr = grad.abs() if method == "saliency" else x_n * grad
    return attr.detach().float()


def _graph_pass(graph: OnnxGradGraph, x_n: torch.Tensor, method: str,
                rule: TargetRule) -> FusedPass:
    t0 = time.perf_counter()
    logits, grad, select = graph.run(x_n, rule.tau_fake, float(rule.explain_fake))
    p_fake = logits.float().softmax(dim=1)[:, Detector.FAKE]
    none = torch.full((len(select),), NO_TARGET, dtype=torch.long, device=select.device)
    targets = torch.where(select.sum(dim=1) > 0, select.argmax(dim=1), none)
    return FusedPass(p_fake, _attribution(method, x_n, grad), time.perf_counter() - t0, 0.0,
                     targets)


def _input_grad(x_n: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    chosen = targets != NO_TARGET
    if not bool(chosen.any()):
        return torch.zeros_like(x_n)
    picked = logits[chosen].gather(1, targets[chosen].unsqueeze(1)).sum()
    (grad,) = torch.autograd.grad(picked, x_n)
    return grad


class TargetRule:
    """Which logit to explain per face, from g's p_fake: real for faces called real (d's map),
    fake for faces called fake when ``explain_fake``, else none."""

    def __init__(self, tau_fake: float, explain_fake: bool) -> None:
        self.tau_fake, self.explain_fake = tau_fake, explain_fake

    def __call__(self, p_fake: torch.Tensor) -> torch.Tensor:
        real = p_fake < self.tau_fake
        fake = torch.full_like(real, Detector.FAKE if self.explain_fake else NO_TARGET,
                               dtype=torch.long)
        return torch.where(real, torch.full_like(fake, Detector.REAL), fake)


# Every face's map of its real logit (a tau above every p_fake): what the separate path asks
# captum for, and what the gradient graph gives the real-called faces there.
ALL_REAL = TargetRule(tau_fake=2.0, explain_fake=False)


def fused_pays(share_needing_map: float, break_even: float) -> bool:
    """The fused path is cheaper once this share of faces needs a map (``break_even`` from
    ``dfshield bench pipeline``)."""
    return share_needing_map >= break_even
