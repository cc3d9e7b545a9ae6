"""Shared pieces of the attack suite: loss, L∞ projection, scoring, result type.

Every attack is *targeted toward "real"* (class 0): it takes fake faces that g calls fake and
tries to make g's argmax become real inside an L∞ ball of radius ``eps`` around the [0,1] crop.

Direction of the loss, precisely. With Z = g's logits and the margin m = Z_real − Z_fake,
g calls real iff m > 0. The paper's eq. 1 prints ``max(Z_real − Z_fake, 0)`` and says that
*minimising* it "maximises the score for Real"; that only holds with the operands the other
way round, so the loss every attack here *minimises* is the Carlini–Wagner form

    loss = max(Z_fake − Z_real + kappa, 0) = relu(−m + kappa)

which is zero exactly when the real logit beats the fake one by ``kappa``. Success is always
judged on the final point as "g calls real": m > 0 (kappa ≥ 0 only asks for more).

Most attacks bound the L∞ norm (``norm="linf"``); DDN bounds the L2 norm. Every result reports
both distances per sample and says which norm and radius bounded it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REAL, FAKE = 0, 1
DEFAULT_EPS = 16 / 255
DEFAULT_STEP = 1 / 255
LossName = Literal["margin", "ce", "dlr"]
NormName = Literal["linf", "l2"]
ScoreFn = Callable[[Tensor], Tensor]


def margin(logits: Tensor) -> Tensor:
    """Per-sample m = Z_real − Z_fake (> 0 ⇔ g calls the face real)."""
    logits = logits.float()
    return logits[:, REAL] - logits[:, FAKE]


def margin_loss(logits: Tensor, kappa: float = 0.0) -> Tensor:
    """Per-sample loss to minimise: relu(Z_fake − Z_real + kappa); 0 once real wins by kappa."""
    return F.relu(kappa - margin(logits))


def ce_loss(logits: Tensor) -> Tensor:
    """Per-sample cross-entropy toward "real" (what the paper's reference code used)."""
    target = torch.full((logits.shape[0],), REAL, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target, reduction="none")


def dlr_loss(logits: Tensor, ref: Tensor | None = None) -> Tensor:
    """Binary DLR-style loss to minimise: −m / (|Z_real| + |Z_fake| + 1e-12) of the clean logits.

    Croce & Hein's DLR divides the margin by Z_π1 − Z_π3, which needs ≥ 3 classes. With two
    logits, every function of them that is invariant to both shift and scale is a function of
    sign(m) alone, so one invariance has to give. This variant keeps scale invariance (g's logits
    times c > 0 leave it unchanged) and measures the scale on the *reference* logits ``ref``: the
    clean crop's, passed by the attacks (``ref=None``: these logits, detached). The scale must not
    be taken live from the attacked point: for g with logits [−z, z] (EfficientNetB4ST) the live
    ratio is sign(z), constant, with zero gradient. Hence per sample it is the margin in units of
    the clean logit scale: 1 on a clean fake of a [−z, z] g, < 0 once g calls the point real, and
    unlike the margin loss not clipped at kappa. Its gradient direction is the margin's.
    """
    scale = (logits if ref is None else ref).detach().float().abs().sum(dim=1) + 1e-12
    return -margin(logits) / scale


def attack_loss(
    logits: Tensor, loss: LossName = "margin", kappa: float = 0.0, ref: Tensor | None = None
) -> Tensor:
    """Per-sample loss to minimise, by name ("margin" = the paper's, "ce" = its code's, "dlr").

    ``ref``: the clean logits of the same samples, used only by "dlr" (its scale).
    """
    if loss == "margin":
        return margin_loss(logits, kappa)
    if loss == "ce":
        return ce_loss(logits)
    if loss == "dlr":
        return dlr_loss(logits, ref)
    raise ValueError(f"unknown attack loss {loss!r}; use 'margin', 'ce' or 'dlr'")


def loss_ref(model: nn.Module, x: Tensor, loss: LossName) -> Tensor | None:
    """The clean logits "dlr" needs as its scale (None for other losses: no extra forward).

    Bookkeeping like the final judgement, so not counted as a query.
    """
    return scores(model, x) if loss == "dlr" else None


def pick(ref: Tensor | None, idx: Tensor) -> Tensor | None:
    """Rows ``idx`` of an optional per-sample tensor."""
    return None if ref is None else ref[idx]


def project_linf(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Clip into the L∞ ball of radius eps around x, then into the valid image range [0,1]."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def linf(x_adv: Tensor, x: Tensor) -> Tensor:
    """Per-sample L∞ distance."""
    return (x_adv - x).abs().flatten(1).amax(dim=1)


def l2(x_adv: Tensor, x: Tensor) -> Tensor:
    """Per-sample L2 distance (on [0,1] crops at their native size)."""
    return torch.linalg.vector_norm((x_adv - x).flatten(1).float(), dim=1)


def project_l2(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Scale δ into the L2 ball of radius eps around x, then clip into [0,1].

    Clipping after scaling cannot leave the ball: x is in [0,1], so clipping only moves each
    coordinate of x + δ toward x.
    """
    delta = x_adv - x
    norm = torch.linalg.vector_norm(delta.flatten(1), dim=1).clamp_min(1e-12)
    factor = (eps / norm).clamp(max=1.0).view(-1, *([1] * (x.ndim - 1)))
    return (x + delta * factor).clamp(0.0, 1.0)


def uniform_in_ball(x: Tensor, eps: float, gen: torch.Generator) -> Tensor:
    """Uniform point of the L∞ ball (clipped to [0,1])."""
    noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
    return project_linf(x + eps * noise, x, eps)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A private RNG on x's device: attacks never touch (or depend on) the global seed."""
    return torch.Generator(device=device).manual_seed(seed)


def check_input(x: Tensor, eps: float) -> Tensor:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"attacks expect x of shape [B,3,H,W], got {tuple(x.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("attacks expect crops in [0,1] (resize + normalise live in the model)")
    return x.detach()


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter grads while attacking; the caller's state is restored.

    Eval matters (BatchNorm/Dropout must not move or add noise); freezing parameters keeps
    autograd from computing weight gradients that an attack never uses.
    """
    saved = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in modules]
    try:
        for m in modules:
            m.eval()
            m.requires_grad_(False)
        yield
    finally:
        for m, training, flags in saved:
            m.train(training)
            for p, flag in zip(m.parameters(), flags, strict=True):
                p.requires_grad_(flag)


@torch.no_grad()
def scores(model: nn.Module, x: Tensor, max_batch: int | None = None) -> Tensor:
    """Logits of ``model`` under no_grad, in chunks of at most ``max_batch`` images.

    This is the only way the black-box attacks see the model: scores, never gradients.
    """
    if max_batch is None or x.shape[0] <= max_batch:
        return model(x).float()
    return torch.cat([model(c).float() for c in x.split(max_batch)])


def loss_and_grad(
    model: nn.Module, x: Tensor, loss: LossName, kappa: float, ref: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """White-box step: per-sample (loss, d loss / d x, margin) at x (works under no_grad too).

    ``ref``: clean logits of these samples (the "dlr" scale; see :func:`attack_loss`).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        per_sample = attack_loss(logits, loss, kappa, ref)
        (grad,) = torch.autograd.grad(per_sample.sum(), x)
    return per_sample.detach(), grad.detach(), margin(logits.detach())


@dataclass
class AttackResult:
    """Outcome of one attack on a batch.

    ``success``: g calls the final point real (Z_real > Z_fake). ``queries``: model
    evaluations spent per sample (forward for black box, forward+backward for white box).
    ``linf`` / ``l2``: per-sample distances to the clean crop (``l2`` is None only for results
    built by hand). ``norm`` / ``eps``: the ball that bounded the attack ("linf" or "l2", its
    radius). ``info``: attack-specific per-sample extras (e.g. ``d_clean`` for the adaptive ones).
    """

    x_adv: Tensor
    success: Tensor
    queries: Tensor | None
    linf: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)
    # After ``info`` and defaulted: callers that build results positionally keep working.
    l2: Tensor | None = None
    norm: NormName = "linf"
    eps: float | None = None

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else 0.0

    @property
    def mean_linf(self) -> float:
        return float(self.linf.mean()) if self.linf.numel() else 0.0

    @property
    def max_linf(self) -> float:
        return float(self.linf.max()) if self.linf.numel() else 0.0

    @property
    def mean_l2(self) -> float | None:
        if self.l2 is None:
            return None
        return float(self.l2.mean()) if self.l2.numel() else 0.0

    @property
    def max_l2(self) -> float | None:
        if self.l2 is None:
            return None
        return float(self.l2.max()) if self.l2.numel() else 0.0

    @property
    def mean_queries(self) -> float | None:
        if self.queries is None or not self.queries.numel():
            return None
        return float(self.queries.float().mean())

    def summary(self) -> dict[str, float | int | str | None]:
        out: dict[str, float | int | str | None] = {
            "n": int(self.success.numel()),
            "success_rate": self.success_rate,
            "mean_linf": self.mean_linf,
            "max_linf": self.max_linf,
            "mean_l2": self.mean_l2,
            "max_l2": self.max_l2,
            "norm": self.norm,
            "eps": self.eps,
            "mean_queries": self.mean_queries,
        }
        for key, value in self.info.items():
            mean = float(value.float().mean()) if value.numel() else 0.0
            out[f"{key}_rate" if value.dtype == torch.bool else f"mean_{key}"] = mean
        return out

    @classmethod
    def cat(cls, parts: list[AttackResult]) -> AttackResult:
        """Concatenate per-chunk results along the batch dimension."""
        if not parts:
            raise ValueError("nothing to concatenate")
        queries = None
        if all(p.queries is not None for p in parts):
            queries = torch.cat([p.queries for p in parts])  # type: ignore[misc]
        if len({p.norm for p in parts}) > 1:
            raise ValueError("cannot concatenate L∞- and L2-bounded results")
        eps = {p.eps for p in parts}
        l2s = [p.l2 for p in parts]
        keys = set.intersection(*(set(p.info) for p in parts))
        return cls(
            x_adv=torch.cat([p.x_adv for p in parts]),
            success=torch.cat([p.success for p in parts]),
            queries=queries,
            linf=torch.cat([p.linf for p in parts]),
            info={k: torch.cat([p.info[k] for p in parts]) for k in sorted(keys)},
            l2=None if any(v is None for v in l2s) else torch.cat(l2s),  # type: ignore[arg-type]
            norm=parts[0].norm,
            eps=eps.pop() if len(eps) == 1 else None,  # None: the parts used different radii
        )


def make_result(
    model: nn.Module,
    x: Tensor,
    x_adv: Tensor,
    queries: Tensor | None,
    info: dict[str, Tensor] | None = None,
    max_batch: int | None = None,
    norm: NormName = "linf",
    eps: float | None = None,
) -> AttackResult:
    """Final bookkeeping: success is re-judged on the returned point (not counted as a query)."""
    x_adv = x_adv.detach()
    success = margin(scores(model, x_adv, max_batch)) > 0
    return AttackResult(
        x_adv, success, queries, linf(x_adv, x), info or {}, l2(x_adv, x), norm, eps
    )
