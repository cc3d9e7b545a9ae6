"""L∞ PGD on the pixels of a whole image, through the service's crop + resize, toward "real".

The perturbation lives in the full image: the loss is g's margin on each face crop cut from
the perturbed image exactly as the service cuts it (``geometry.crop_resize``), so the gradient
reaches the image pixels under every face's crop box. Pixels no crop can see get a zero
gradient and never change; only the window around the faces is therefore held as a tensor.

Target. The service calls a face fake when p_fake ≥ tau_fake, i.e. when the margin
m = Z_real − Z_fake is at most log((1 − tau)/tau). The loss pushes m past that point plus
``kappa`` (slack that the upload path — re-detection, JPEG — eats into).

Steps are ``step`` = 1/255 from the clean uint8 image, so every iterate sits on 8-bit levels:
the PNG that is saved is exactly the point that was optimised.

Variants: ``pgd`` optimises the exact crop; ``eot`` (expectation over transformation)
averages the loss over the exact crop and ``Eot.samples`` random views per face (JPEG,
rescale, box shift; see ``geometry.eot_crop``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from app.redteam import VARIANTS, Control, Variant
from app.redteam.geometry import CropBox, Eot, crop_resize, eot_crop
from app.training.attacks.base import frozen, margin, project_linf

CHECK_VIEWS = 16  # fresh random views per face to measure how well a result survives EOT


@dataclass(frozen=True)
class AttackConfig:
    eps: float = 16 / 255
    step: float = 1 / 255
    iters: int = 100
    # Logits beyond the service's decision point; 2 as in the attack sets that train d.
    kappa: float = 2.0
    eot: Eot = field(default_factory=Eot)
    seed: int = 0


@dataclass
class ImageAttack:
    """One variant's result on one image."""

    variant: Variant | Control
    image: np.ndarray  # uint8 HxWx3 RGB, the adversarial full image (the clean one: control)
    p_fake_before: list[float]  # per attacked face, on its exact service crop
    p_fake_after: list[float]
    views_real: float | None  # EOT check: share of fresh random views g calls real
    iters: int  # gradient steps taken (early stop once every face passes)
    linf: int  # largest change of any pixel, in 8-bit levels


def margin_needed(tau_fake: float, kappa: float) -> float:
    """Margin Z_real − Z_fake above which p_fake < tau_fake, plus ``kappa``."""
    tau = min(max(tau_fake, 1e-6), 1 - 1e-6)
    return math.log((1 - tau) / tau) + kappa


def to_tensor(rgb: np.ndarray, device: torch.device) -> Tensor:
    # A copy: decoded frames may be read-only views, which torch refuses to wrap safely.
    return torch.from_numpy(np.array(rgb)).to(device).permute(2, 0, 1)[None] / 255


def to_uint8(x: Tensor) -> np.ndarray:
    return (x[0].detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def _window(boxes: list[CropBox], shape: tuple[int, int], eot: Eot) -> CropBox:
    """Bounding box of every face's crop plus the EOT views' reach, inside the image."""
    height, width = shape
    pad = max(math.ceil((b[2] - b[0]) * (eot.shift + eot.resize)) + 2 for b in boxes)
    return (max(min(b[0] for b in boxes) - pad, 0), max(min(b[1] for b in boxes) - pad, 0),
            min(max(b[2] for b in boxes) + pad, width), min(max(b[3] for b in boxes) + pad,
                                                         height))


def _shift(box: CropBox, win: CropBox) -> CropBox:
    return box[0] - win[0], box[1] - win[1], box[2] - win[0], box[3] - win[1]


def _crops(x: Tensor, boxes: list[CropBox], size: int, views: int, eot: Eot,
           rng: np.random.Generator) -> Tensor:
    """Each face's exact crop, then ``views`` random EOT views of each face."""
    exact = [crop_resize(x, b, size) for b in boxes]
    random = [eot_crop(x, b, size, eot, rng) for b in boxes for _ in range(views)]
    return torch.cat(exact + random)


def _p_fake(g: nn.Module, crops: Tensor) -> Tensor:
    with torch.no_grad():
        return g(crops).float().softmax(dim=1)[:, 1]


def attack_image(
    g: nn.Module, image: np.ndarray, boxes: list[CropBox], tau_fake: float, variant: Variant,
    cfg: AttackConfig | None = None,
) -> ImageAttack:
    """Whole-image PGD (or EOT-PGD) making g call every face in ``boxes`` real."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
    if not boxes:
        raise ValueError("no face boxes to attack")
    cfg = cfg or AttackConfig()
    device = next(g.parameters()).device
    size = int(g.input_size)
    win = _window(boxes, image.shape[:2], cfg.eot)
    local = [_shift(b, win) for b in boxes]
    x0 = to_tensor(image[win[1]:win[3], win[0]:win[2]], device)
    views = cfg.eot.samples if variant == "eot" else 0
    rng = np.random.default_rng(cfg.seed)
    with frozen(g):
        before = _p_fake(g, _crops(x0, local, size, 0, cfg.eot, rng)).tolist()
        x_adv, iters = _pgd(g, x0, local, size, views, margin_needed(tau_fake, cfg.kappa),
                            cfg, rng)
        after = _p_fake(g, _crops(x_adv, local, size, 0, cfg.eot, rng)).tolist()
        check = np.random.default_rng(cfg.seed + 1)
        views_p = _p_fake(g, _crops(x_adv, local, size, CHECK_VIEWS, cfg.eot, check))
        views_real = float((views_p[len(local):] < tau_fake).float().mean())
    out = image.copy()
    out[win[1]:win[3], win[0]:win[2]] = to_uint8(x_adv)
    linf = int(np.abs(out.astype(np.int16) - image.astype(np.int16)).max())
    return ImageAttack(variant, out, before, after, views_real, iters, linf)


def _pgd(
    g: nn.Module, x0: Tensor, boxes: list[CropBox], size: int, views: int, target: float,
    cfg: AttackConfig, rng: np.random.Generator,
) -> tuple[Tensor, int]:
    """Signed-gradient steps until every crop (and view) clears ``target``, or ``iters``."""
    x_adv = x0.clone()
    for it in range(cfg.iters + 1):
        with torch.enable_grad():
            xa = x_adv.detach().requires_grad_(True)
            m = margin(g(_crops(xa, boxes, size, views, cfg.eot, rng)))
            if it == cfg.iters or bool((m > target).all()):
                return x_adv.detach(), it
            # Mean over views, sum over faces: each face pulls with the same weight.
            loss = torch.relu(target - m).sum() / (1 + views)
            (grad,) = torch.autograd.grad(loss, xa)
        x_adv = project_linf(x_adv - cfg.step * grad.sign(), x0, cfg.eps)
    return x_adv.detach(), cfg.iters
