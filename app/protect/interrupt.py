"""Stage 1, interruption: PGD that maximises how much every generator's output changes.

Loss per face and generator (TSDF, after Ruiz et al.'s disrupting-deepfakes): the MSE between
the generator's output on the protected crop and on the original crop, plus a feature term (the
generator's internal code, normalised by its clean energy so that both terms are of one scale;
weight 0.1: on the bundled generators a larger weight lowered the output distortion measured
by ``L2_mask``). Generators are weighted equally. Each step averages over ``eot_samples``
random views (``crop.Eot``): the perturbation must survive a rescale, another crop box, JPEG.

Optionally (``purifier``, off by default) a view also goes, with probability ``p_purify``,
through the attacker's learned denoiser (:mod:`app.protect.denoiser`) at photo resolution
before the generator, so the perturbation is optimised to distort the generator *after*
purification; the reference is then the generator's output on the purified original, as in
the purification evaluation. AntiPure's patch-wise frequency guidance, reduced to this
setting: ``hf_weight`` adds the mean high-band FFT magnitude, per ``hf_patch`` px patch, of
the perturbation that survives the denoiser (in units of eps), so PGD favours perturbations
the denoiser cannot smooth away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from app.protect.budget import project
from app.protect.crop import CropBox, Eot, region_view, sample_view, to_size
from app.protect.generators import Generator

Progress = Callable[[int, int], None]
GEN_SIZE = 64
FEATURE_WEIGHT = 0.1


@dataclass(frozen=True)
class PgdConfig:
    eps: float = 0.025
    steps: int = 100
    step_size: float | None = None  # default 2.5 * eps / steps (Madry et al.)
    eot_samples: int = 1  # a fresh random view every step: EOT across steps
    eot: Eot = field(default_factory=Eot)
    seed: int = 0
    purifier: Callable[[torch.Tensor], torch.Tensor] | None = None  # the attacker's denoiser
    p_purify: float = 0.5  # share of views that go through it (the rest: no purification)
    hf_weight: float = 0.0  # patch-wise high-frequency guidance (with a purifier only)
    hf_patch: int = 8
    feature_weight: float = FEATURE_WEIGHT  # TSDF's feature term, relative to output MSE

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


def distortion(gens: Sequence[Generator], adv: torch.Tensor, clean: torch.Tensor,
               feature_weight: float = FEATURE_WEIGHT) -> torch.Tensor:
    """Mean over generators of output MSE + normalised feature MSE (to be maximised)."""
    total = torch.zeros(())
    for g in gens:
        with torch.no_grad():
            out_c, feat_c = g(clean), g.features(clean)
        loss = F.mse_loss(g(adv), out_c)
        if feature_weight:
            feat = F.mse_loss(g.features(adv), feat_c) / feat_c.pow(2).mean().clamp_min(1e-8)
            loss = loss + feature_weight * feat
        total = total + loss
    return total / max(len(gens), 1)


def patch_high_freq(residual: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """Mean magnitude of the high band (above a quarter of the patch's Nyquist frequency in
    either axis) of ``residual``'s orthonormal 2-D FFT, per ``patch`` x ``patch`` patch,
    averaged over patches; differentiable."""
    _, c, h, w = residual.shape
    h, w = h - h % patch, w - w % patch
    if h == 0 or w == 0:
        return residual.new_zeros(())
    tiles = residual[:, :, :h, :w].unfold(2, patch, patch).unfold(3, patch, patch)
    spec = torch.fft.fft2(tiles, norm="ortho").abs()  # [..., patch, patch]
    f = torch.fft.fftfreq(patch).abs()
    high = (f.view(-1, 1) > 0.125) | (f.view(1, -1) > 0.125)
    return spec[..., high].mean()


def view_loss(image: torch.Tensor, adv: torch.Tensor, boxes: Sequence[CropBox],
              gens: Sequence[Generator], cfg: PgdConfig, rng: np.random.Generator) -> torch.Tensor:
    """Distortion of every generator over ``cfg.eot_samples`` random views of each face."""
    loss = torch.zeros(())
    for box in boxes:
        for _ in range(cfg.eot_samples):
            jbox, scale, quality = sample_view(image, box, cfg.eot, rng)
            clean = region_view(image, jbox, scale, quality)
            moved = region_view(adv, jbox, scale, quality)
            # Drawn only with a purifier: the default EOT's random stream stays as it was.
            if cfg.purifier is not None and rng.random() < cfg.p_purify:
                with torch.no_grad():
                    clean = cfg.purifier(clean)
                moved = cfg.purifier(moved)
                if cfg.hf_weight:
                    hf = patch_high_freq(moved - clean, cfg.hf_patch) / cfg.eps
                    loss = loss + cfg.hf_weight * hf
            loss = loss + distortion(gens, to_size(moved, GEN_SIZE), to_size(clean, GEN_SIZE),
                                     cfg.feature_weight)
    return loss


def interruption(image: torch.Tensor, boxes: Sequence[CropBox], gens: Sequence[Generator],
                 cfg: PgdConfig, mask: torch.Tensor, eps_map: torch.Tensor | float | None = None,
                 progress: Progress | None = None,
                 stop: Callable[[], bool] | None = None) -> tuple[torch.Tensor, int]:
    """PGD on ``image`` ([1,3,H,W], [0,1]) → (perturbation within ``eps_map`` (default eps)
    inside ``mask``, steps done); crops of ``boxes`` go through every generator. ``stop()``
    true ends the optimisation early (the deadline of a synchronous request)."""
    rng = np.random.default_rng(cfg.seed)
    limit = cfg.eps if eps_map is None else eps_map
    start = (torch.rand(image.shape, generator=torch.Generator().manual_seed(cfg.seed)) * 2 - 1)
    delta = project(start * torch.as_tensor(limit), image, limit, mask)
    done = 0
    for step in range(cfg.steps):
        if stop is not None and stop():
            break
        delta.requires_grad_(True)
        loss = view_loss(image, image + delta, boxes, gens, cfg, rng)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = project(delta + cfg.alpha * grad.sign(), image, limit, mask)
        done = step + 1
        if progress:
            progress(done, cfg.steps)
    return delta.detach(), done
