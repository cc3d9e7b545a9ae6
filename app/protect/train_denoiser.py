"""``dfshield train denoiser``: train the attacker's purifier on real demo-corpus faces.

Inputs are random patches of the corpus's real *train*-split crops (random rescale and flip)
with synthetic perturbations of the kinds protection writes: uniform L∞ noise up to 0.05,
Gaussian noise up to sigma 8/255, and sign patterns (±a on blocks of 1–4 px, sometimes not
saturated), the texture of sign-PGD through a downscaling crop; a share is left clean so the
denoiser learns to leave clean faces alone. Everything is quantised to 8 bits like a saved
photo. Loss: L1 to the clean patch. Held-out figures use the *val* identities' crops.

Most of the corpus's real crops are LFW faces upscaled from 25 px: smooth, with none of a
photo's grain. A denoiser trained on them mostly learned to blur (on ``grace_hopper.jpg`` it
lowered the PSNR of both clean and noisy faces), so patches come from the sharp sources
(photos, video frames) with probability ``p_sharp``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from app.protect.denoiser import Denoiser

Progress = Callable[[int, int], None]
NOISE_KINDS = ("clean", "uniform", "gaussian", "sign")
KIND_P = (0.1, 0.2, 0.2, 0.5)  # sign patterns dominate: they are what PGD writes


@dataclass
class DenoiserTrainConfig:
    data_root: Path
    arch: str = "dncnn7_w32"
    steps: int = 2500
    batch: int = 16
    patch: int = 48
    lr: float = 1e-3
    seed: int = 0
    max_uniform: float = 0.05
    max_sigma: float = 8 / 255
    max_sign: float = 0.05
    p_sharp: float = 0.8  # share of patches from sources that are not upscaled LFW
    time_limit_s: float = 7.5 * 60  # the CPU is shared: stop early rather than overrun


def load_real_crops(data_root: Path, split: str, sharp: bool | None = None,
                    limit: int | None = None) -> np.ndarray:
    """[N,H,W,3] uint8 of the corpus's real crops of ``split``; ``sharp`` True/False keeps
    only those that are not / are upscaled LFW faces (None: all)."""
    from app.training.data import load_rgb, read_index

    rows = [r for r in read_index(data_root) if r["label"] == 0 and r["split"] == split
            and (sharp is None or _is_sharp(r) == sharp)]
    if not rows:
        raise ValueError(f"no real {split} crops (sharp={sharp}) in {data_root}; build the "
                         "demo corpus with `dfshield train demo-data`")
    return np.stack([load_rgb(data_root / r["path"]) for r in rows[:limit]])


def _is_sharp(row: dict[str, Any]) -> bool:
    return not str(row.get("source", "")).startswith("lfw_subset")


def sample_patches(pools: tuple[np.ndarray, np.ndarray], n: int, size: int,
                   rng: np.random.Generator, p_sharp: float) -> torch.Tensor:
    """[n,3,size,size] in [0,1] from (sharp, upscaled) crops: random crop, rescale 0.5–1
    (faces of other sizes), flip."""
    out = []
    for _ in range(n):
        crops = pools[0] if rng.random() < p_sharp else pools[1]
        img = crops[rng.integers(len(crops))]
        scale = rng.uniform(0.5, 1.0)
        side = max(size, int(img.shape[0] * scale))
        img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        y, x = rng.integers(0, side - size + 1, size=2)
        p = img[y:y + size, x:x + size]
        out.append(p[:, ::-1] if rng.random() < 0.5 else p)
    return torch.from_numpy(np.stack(out).copy()).permute(0, 3, 1, 2).float() / 255.0


def sign_pattern(shape: torch.Size, amp: torch.Tensor, gen: torch.Generator,
                 block: int) -> torch.Tensor:
    """±amp on ``block``-px cells (nearest upsampling), channels independent or shared."""
    b, c, h, w = shape
    hc, wc = -(-h // block), -(-w // block)
    cells = torch.randn(b, c, hc, wc, generator=gen)
    if torch.rand((), generator=gen) < 0.3:
        cells = cells[:, :1].expand(b, c, hc, wc)  # luminance-only pattern
    s = F.interpolate(cells.sign(), scale_factor=block, mode="nearest")[..., :h, :w]
    if torch.rand((), generator=gen) < 0.3:
        s = s * (0.5 + 0.5 * torch.rand(s.shape, generator=gen))  # unsaturated PGD
    return s * amp


def perturb(clean: torch.Tensor, cfg: DenoiserTrainConfig, gen: torch.Generator,
            kind: int | None = None) -> torch.Tensor:
    """Noisy, 8-bit-quantised copy of ``clean``; ``kind`` indexes NOISE_KINDS (None: each
    sample draws one by KIND_P)."""
    b = clean.shape[0]
    kinds = torch.multinomial(torch.tensor(KIND_P), b, replacement=True, generator=gen) \
        if kind is None else torch.full((b,), kind)
    level = torch.rand(b, 1, 1, 1, generator=gen)
    noise = torch.zeros_like(clean)
    for k in range(1, len(NOISE_KINDS)):
        sel = kinds == k
        if not sel.any():
            continue
        shape = clean[sel].shape
        if NOISE_KINDS[k] == "uniform":
            n = (torch.rand(shape, generator=gen) * 2 - 1) * level[sel] * cfg.max_uniform
        elif NOISE_KINDS[k] == "gaussian":
            n = torch.randn(shape, generator=gen) * level[sel] * cfg.max_sigma
        else:
            block = int(torch.randint(1, 5, (), generator=gen))
            n = sign_pattern(shape, (0.1 + 0.9 * level[sel]) * cfg.max_sign, gen, block)
        noise[sel] = n
    return ((clean + noise).clamp(0, 1) * 255).round() / 255


def train_steps(model: Denoiser, pools: tuple[np.ndarray, np.ndarray],
                cfg: DenoiserTrainConfig,
                progress: Progress | None = None) -> list[float]:
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    model.train()
    losses, t0 = [], time.monotonic()
    for step in range(cfg.steps):
        clean = sample_patches(pools, cfg.batch, cfg.patch, rng, cfg.p_sharp)
        loss = F.l1_loss(model(perturb(clean, cfg, gen)), clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, cfg.steps)
        if time.monotonic() - t0 > cfg.time_limit_s:
            break
    model.eval()
    return losses


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(F.mse_loss(a, b))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


@torch.no_grad()
def held_out_psnr(model: Denoiser, crops: np.ndarray, cfg: DenoiserTrainConfig,
                  size: int = 96) -> dict[str, dict[str, float]]:
    """PSNR (dB) to the clean crop of the noisy input and of the denoised one, per noise kind,
    on the central ``size`` px of each held-out crop (each kind at a random level)."""
    h = crops.shape[1]
    o = (h - size) // 2
    clean = torch.from_numpy(crops[:, o:o + size, o:o + size].copy()).permute(0, 3, 1, 2)
    clean = clean.float() / 255.0
    out: dict[str, dict[str, float]] = {}
    for k, kind in enumerate(NOISE_KINDS):
        noisy = perturb(clean, cfg, torch.Generator().manual_seed(cfg.seed + 1000 + k), k)
        after = psnr(model(noisy), clean)
        if kind == "clean":  # what the purifier costs a clean face
            out[kind] = {"denoised_db": round(after, 2)}
            continue
        before = psnr(noisy, clean)
        out[kind] = {"noisy_db": round(before, 2), "denoised_db": round(after, 2),
                     "gain_db": round(after - before, 2)}
    return out


def train_denoiser(cfg: DenoiserTrainConfig,
                   progress: Progress | None = None) -> tuple[Denoiser, dict[str, Any]]:
    """Train one purifier → (model, record for the manifest's ``training``/``metrics``)."""
    from app.models.registry import create_model

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.arch)
    assert isinstance(model, Denoiser)
    pools = (load_real_crops(cfg.data_root, "train", sharp=True),
             load_real_crops(cfg.data_root, "train", sharp=False))
    val = {"val_sharp": load_real_crops(cfg.data_root, "val", sharp=True, limit=32),
           "val_upscaled": load_real_crops(cfg.data_root, "val", sharp=False, limit=32)}
    t0 = time.monotonic()
    losses = train_steps(model, pools, cfg, progress)
    record = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "steps_done": len(losses), "seconds": round(time.monotonic() - t0, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 5),
        "train_crops": {"sharp": len(pools[0]), "upscaled": len(pools[1])},
        "val_crops": {k: len(v) for k, v in val.items()},
        "held_out_psnr": {k: held_out_psnr(model, v, cfg) for k, v in val.items()},
    }
    return model, record


def publish_denoiser(model: Denoiser, record: dict[str, Any], models_dir: Path,
                     name: str, command: str) -> str:
    """Write the weights (float16, ~0.1 MB) + manifest entry with role ``purifier``."""
    from app.models.publishing import write_entry

    version = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    cfg = record["config"]
    entry = write_entry(
        models_dir, model, name, version=version, dtype="float16",
        description=(f"residual denoiser ({cfg['arch']}) trained by dfshield on demo-corpus "
                     "train-split real faces with uniform, Gaussian and sign-pattern noise: "
                     "the attacker's learned purifier of the purification evaluation"),
        training={"kind": "purifier", "command": command, "data_root": cfg["data_root"],
                  "split": "train", "steps": record["steps_done"], "seed": cfg["seed"],
                  "seconds": record["seconds"], "final_loss": record["final_loss"],
                  "config": cfg, "train_crops": record["train_crops"]},
        metrics={"final_loss": record["final_loss"], "held_out_split": "val",
                 "val_crops": record["val_crops"], "held_out_psnr": record["held_out_psnr"]},
    )
    return entry.file
