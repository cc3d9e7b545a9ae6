"""EOT-PGD toward "real" that survives the upload path (Athalye et al. 2018, EOT + BPDA).

A served face is not the attacker's crop: the frame is rescaled, JPEG-compressed and the face
box is found again. Each PGD step here averages the loss gradient over ``samples`` (K = 8)
random copies of the perturbed crop, each put through that path in the order it happens:
    1. resize by a factor in ``scale`` (0.9–1.1) and back: F.interpolate, differentiable;
    2. JPEG at a quality in ``jpeg_quality`` (75–95): the real cv2 round trip forward, the
       identity backward (BPDA / straight-through: the codec has no useful gradient);
    3. an integer shift of the crop box by up to ±round(``max_shift`` · side) pixels (3 %), with
       replicated edges (the pixels a real re-crop would reveal are not in the crop).
Steps 1 and 3 each hit a copy with probability ``p_geometric`` (1/2): not every upload is
rescaled or re-cropped, and with them always on the un-moved JPEG'd crop is almost never drawn
and the attack misses it (measured on the test's tiny g, 100 iterations: JPEG-90 survival
0.33 of the faces with both always on, 0.75 at 1/2; success 0.79 either way).
The plain point is evaluated in the same forward pass (its rows carry no gradient). A sample
stops once g calls the plain point and all K copies real by ``kappa``. Queries per step: K + 1.

The result is rounded to the uint8 grid (what an uploaded PNG holds) and success is judged on
that plain point; ``info["survives_jpeg90"]``: g still calls it real after one JPEG-90 round
trip. Defaults: eps 16/255, step 1/255, 100 iterations, K = 8.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.training.attacks.base import (
    DEFAULT_EPS,
    DEFAULT_STEP,
    AttackResult,
    LossName,
    attack_loss,
    check_input,
    frozen,
    loss_ref,
    make_generator,
    make_result,
    margin,
    pick,
    project_linf,
    scores,
)
from app.training.benign import jpeg


def eot_pgd(
    model: nn.Module,
    x: Tensor,
    eps: float = DEFAULT_EPS,
    step: float = DEFAULT_STEP,
    iters: int = 100,
    samples: int = 8,
    loss: LossName = "margin",
    kappa: float = 0.0,
    jpeg_quality: tuple[int, int] = (75, 95),
    scale: tuple[float, float] = (0.9, 1.1),
    max_shift: float = 0.03,
    p_geometric: float = 0.5,
    seed: int = 0,
) -> AttackResult:
    """L∞ PGD on the expectation over upload transforms; see the module docstring."""
    x = check_input(x, eps)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    gen = make_generator(seed, x.device)
    path = _UploadPath(jpeg_quality, scale, max_shift, p_geometric, gen)
    x_adv = x.clone()
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    with frozen(model):
        ref = loss_ref(model, x, loss)
        for it in range(iters + 1):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            grad, m_plain, m_copies = _eot_grad(
                model, x_adv[idx], path, samples, loss, kappa, pick(ref, idx)
            )
            queries[idx] += samples + 1
            done = (m_plain > kappa) & (m_copies.amin(dim=1) > kappa)
            active[idx[done]] = False
            if it == iters:
                break
            mv = idx[~done]
            x_adv[mv] = project_linf(x_adv[mv] - step * grad[~done].sign(), x[mv], eps)
        # Rounding may step past eps when x is off the uint8 grid: project again.
        x_adv = project_linf(torch.round(x_adv * 255) / 255, x, eps)
        survives = margin(scores(model, jpeg_round_trip(x_adv, [90] * x.shape[0]))) > 0
        return make_result(model, x, x_adv, queries, {"survives_jpeg90": survives}, eps=eps)


def _eot_grad(
    model: nn.Module,
    xa: Tensor,
    path: _UploadPath,
    samples: int,
    loss: LossName,
    kappa: float,
    ref: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(mean loss gradient over K copies, plain margin [b], copies' margins [b, K])."""
    b = xa.shape[0]
    with torch.enable_grad():
        xa = xa.detach().requires_grad_(True)
        copies = path(xa.repeat_interleave(samples, dim=0))
        logits = model(torch.cat([xa, copies]))
        rep_ref = None if ref is None else ref.repeat_interleave(samples, dim=0)
        per_copy = attack_loss(logits[b:], loss, kappa, rep_ref)
        (grad,) = torch.autograd.grad(per_copy.sum() / samples, xa)
    m = margin(logits.detach())
    return grad.detach(), m[:b], m[b:].view(b, samples)


class _UploadPath:
    """Random resize → JPEG (BPDA) → crop-box shift, drawn afresh for every image and call."""

    def __init__(
        self,
        quality: tuple[int, int],
        scale: tuple[float, float],
        max_shift: float,
        p_geometric: float,
        gen: torch.Generator,
    ) -> None:
        self.quality, self.scale, self.max_shift = quality, scale, max_shift
        self.p_geometric, self.gen = p_geometric, gen

    def __call__(self, x: Tensor) -> Tensor:
        return self.shift(self.jpeg(self.resize(x)))

    def _uniform(self, n: int, lo: float, hi: float, like: Tensor) -> Tensor:
        u = torch.rand(n, generator=self.gen, device=like.device)
        return lo + (hi - lo) * u

    def _hit(self, n: int, like: Tensor) -> Tensor:
        """Which of n copies a geometric step applies to (probability p_geometric)."""
        return torch.rand(n, generator=self.gen, device=like.device) < self.p_geometric

    def resize(self, x: Tensor) -> Tensor:
        """Each hit image down/up-scaled by its own factor and back (grouped by target size)."""
        n, h, w = x.shape[0], *x.shape[-2:]
        sides = torch.round(self._uniform(n, *self.scale, x) * h).long().clamp_min(2)
        sides = torch.where(self._hit(n, x), sides, h)
        out = x
        for side in sides.unique().tolist():
            if side == h:
                continue
            sel = (sides == side).nonzero().squeeze(1)
            small = _bilinear(x[sel], (side, round(side * w / h)))
            out = out.index_copy(0, sel, _bilinear(small, (h, w)))
        return out

    def jpeg(self, x: Tensor) -> Tensor:
        """Forward: the real codec; backward: identity (straight-through)."""
        lo, hi = self.quality
        qs = torch.randint(lo, hi + 1, (x.shape[0],), generator=self.gen, device=x.device)
        coded = jpeg_round_trip(x.detach(), qs.tolist())
        return x + (coded - x).detach()

    def shift(self, x: Tensor) -> Tensor:
        """Integer translation of each hit image, edges replicated (differentiable gather)."""
        n, _, h, w = x.shape
        r = round(self.max_shift * min(h, w))
        if r == 0:
            return x
        d = torch.randint(-r, r + 1, (n, 2), generator=self.gen, device=x.device)
        d = d * self._hit(n, x).unsqueeze(1)
        padded = F.pad(x, (r, r, r, r), mode="replicate")
        rows = torch.arange(h, device=x.device) + r + d[:, :1]  # [n, h]
        cols = torch.arange(w, device=x.device) + r + d[:, 1:]  # [n, w]
        batch = torch.arange(n, device=x.device).view(n, 1, 1)
        # Advanced indices around a slice: the result is [n, h, w, C].
        out = padded[batch, :, rows.unsqueeze(2), cols.unsqueeze(1)]
        return out.permute(0, 3, 1, 2)


def _bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    # antialias: a real downscale low-passes (cv2 INTER_AREA); plain bilinear would alias.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def jpeg_round_trip(x: Tensor, qualities: list[int]) -> Tensor:
    """Each [0,1] image through uint8 → JPEG at its quality → back (no gradient)."""
    u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    pairs = zip(u8, qualities, strict=True)
    coded = np.stack([jpeg(np.ascontiguousarray(img), int(q)) for img, q in pairs])
    return torch.from_numpy(coded).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255
