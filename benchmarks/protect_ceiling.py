"""White-box ceiling of stage 1: the project's interruption PGD run straight on the generator's
64 px input (no photo crop, no EOT, no JPEG, output MSE only), so no protection written
through a photo can distort that generator more.

    uv run python benchmarks/protect_ceiling.py --eps 0.025 --eps 0.05 --steps 100

Faces: one real crop per test-split identity of the demo corpus (no generator saw them).
Prints, per generator and eps, the mean L2_mask and the share above the 0.05 success rule.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from app.protect.budget import quantise
from app.protect.crop import Eot
from app.protect.generators import FaceGenerator, load_generators
from app.protect.interrupt import GEN_SIZE, PgdConfig, interruption
from app.protect.metrics import SUCCESS_L2, edited_mask, l2_mask
from app.protect.train_generator import load_identity_faces
from app.training.data import read_index


def faces(data_root: Path, n: int) -> torch.Tensor:
    """[n,3,64,64] in [0,1] (8-bit values): the first real crop of ``n`` test identities."""
    idents = sorted({r["identity"] for r in read_index(data_root)
                     if r["split"] == "test" and r["label"] == 0})[:n]
    return torch.cat([t[:1] for t in load_identity_faces(data_root, tuple(idents), GEN_SIZE,
                                                         split="test")])


def ceiling(gen: FaceGenerator, x: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """Per-face L2_mask after stage 1 on each whole 64 px face, rounded to 8 bits."""
    cfg = PgdConfig(eps=eps, steps=steps, eot=Eot.none(), feature_weight=0.0)
    box = (0, 0, GEN_SIZE, GEN_SIZE)
    mask = torch.ones(1, 1, GEN_SIZE, GEN_SIZE)
    adv = torch.cat([
        quantise((face * 255).round().to(torch.uint8),
                 interruption(face, [box], [gen], cfg, mask)[0]).float() / 255
        for face in x.split(1)])
    with torch.no_grad():
        ref = gen(x)
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
