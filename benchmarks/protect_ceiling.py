"""White-box ceiling of stage 1: PGD straight on the generator's 64 px input (no photo crop,
no EOT, no JPEG), so no protection through a photo can distort the generator more.

    uv run python benchmarks/protect_ceiling.py --eps 0.025 --eps 0.05 --steps 100

Faces: the first frame of each test-split identity of the demo corpus (no generator saw them).
Prints, per generator and eps, the mean L2_mask and the share above the 0.05 success rule.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from app.protect.generators import FaceGenerator, load_generators
from app.protect.metrics import SUCCESS_L2, edited_mask, l2_mask


def faces(data_root: Path, n: int) -> torch.Tensor:
    files = sorted((data_root / "crops" / "test" / "real").glob("*_0_0.png"))[:n]
    arr = [np.asarray(Image.open(f).convert("RGB").resize((64, 64), Image.BILINEAR))
           for f in files]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float() / 255.0


def ceiling(gen: FaceGenerator, x: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """Per-face L2_mask after sign-PGD on output MSE (random start, 8-bit rounding)."""
    with torch.no_grad():
        ref = gen(x)
    delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.mse_loss(gen((x + delta).clamp(0, 1)), ref, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = ((x + (delta + 2.5 * eps / steps * grad.sign()).clamp(-eps, eps))
                     .clamp(0, 1) - x)
    with torch.no_grad():
        adv = ((x + delta) * 255).round() / 255
        return l2_mask(gen(adv), ref, edited_mask(x, ref))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("runs/data"))
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--eps", type=float, action="append")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--faces", type=int, default=12)
    args = ap.parse_args()
    x = faces(args.data, args.faces)
    for gen in load_generators(args.models_dir, held_out=None):
        for eps in args.eps or [0.025, 0.05]:
            l2 = ceiling(gen, x, eps, args.steps)
            print(f"{gen.name}  eps {eps:g}  faces {len(x)}  mean L2_mask {l2.mean():.4f}  "
                  f"success {(l2 > SUCCESS_L2).float().mean():.0%}")


if __name__ == "__main__":
    main()
