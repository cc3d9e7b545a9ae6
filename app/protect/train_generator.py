"""``dfshield train generator``: train the bundled face-swap autoencoders on the demo corpus.

Only *train*-split identities are used (the corpus splits by identity), so every face the
protection is evaluated on belongs to a person no generator has seen. Augmentation follows the
original deepfakes recipe in spirit: the decoder must reconstruct the clean (flipped / shifted)
face from a randomly *warped* copy, which forces the shared encoder to code pose and expression
rather than memorise pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from app.protect.generators import FaceGenerator

# Colour identities of the demo corpus's train split; decoder i belongs to IDENTITIES[i].
# obama (decoder 0) is the identity every bundled generator swaps faces into.
IDENTITIES = ("obama", "pexels_woman", "biden", "astronaut")
Progress = Callable[[int, int], None]


@dataclass
class GeneratorTrainConfig:
    data_root: Path
    arch: str = "faceswap_ae64_w16"
    steps: int = 3000
    batch_per_identity: int = 8
    lr: float = 5e-4
    seed: int = 0
    warp: float = 0.04  # displacement of the random warp, in [-1,1] grid units
    identities: tuple[str, ...] = IDENTITIES
    time_limit_s: float = 14 * 60  # the CPU is shared: stop early rather than overrun
    extra: dict[str, Any] = field(default_factory=dict)


def load_identity_faces(data_root: Path, identities: tuple[str, ...], size: int = 64,
                        split: str = "train") -> list[torch.Tensor]:
    """Real crops of each identity as [N,3,size,size] float tensors in [0,1]."""
    from app.training.data import load_rgb, read_index

    records = [r for r in read_index(data_root) if r["label"] == 0]
    out = []
    for ident in identities:
        rows = [r for r in records if r["identity"] == ident]
        wrong = {r["split"] for r in rows} - {split}
        if wrong:
            raise ValueError(f"identity {ident!r} appears in split(s) {sorted(wrong)} of "
                             f"{data_root}; generators may only train on {split!r} identities")
        if not rows:
            raise ValueError(f"no real crops of {ident!r} in {data_root}; build the demo "
                             "corpus with `dfshield train demo-data`")
        imgs = [cv2.resize(load_rgb(data_root / r["path"]), (size, size),
                           interpolation=cv2.INTER_AREA) for r in rows]
        out.append(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0)
    return out


def augment(batch: torch.Tensor, gen: torch.Generator,
            warp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(warped input, clean target): a shared random flip/affine, then a smooth warp on the
    input only."""
    n = batch.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
    angle = (torch.rand(n, generator=gen) - 0.5) * 0.35  # about ±10 degrees
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.1
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    target = F.grid_sample(batch, grid, padding_mode="border", align_corners=False)
    coarse = (torch.rand(n, 2, 5, 5, generator=gen) - 0.5) * 2 * warp
    flow = F.interpolate(coarse, size=batch.shape[-2:], mode="bicubic", align_corners=False)
    warped = F.grid_sample(target, grid_identity(batch) + flow.permute(0, 2, 3, 1),
                           padding_mode="border", align_corners=False)
    return warped, target


def grid_identity(batch: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(2, 3).unsqueeze(0).expand(batch.shape[0], 2, 3)
    return F.affine_grid(eye, list(batch.shape), align_corners=False)


def train_steps(model: FaceGenerator, faces: list[torch.Tensor | None], steps: int,
                cfg: GeneratorTrainConfig, gen: torch.Generator,
                progress: Progress | None = None,
                params: list[torch.nn.Parameter] | None = None) -> list[float]:
    """Reconstruction training of decoder i on ``faces[i]`` (None: decoder i is skipped);
    the encoder is shared. Also what the persistence protocol's attacker runs to fine-tune."""
    net = model.net.train()
    opt = torch.optim.Adam(params or list(net.parameters()), lr=cfg.lr, betas=(0.5, 0.999))
    losses, t0 = [], time.monotonic()
    for step in range(steps):
        loss = torch.zeros(())
        for ident, pool in enumerate(faces):
            if pool is None or len(pool) == 0:
                continue
            idx = torch.randint(len(pool), (cfg.batch_per_identity,), generator=gen)
            x_in, target = augment(pool[idx], gen, cfg.warp)
            out = net.reconstruct(F.interpolate(x_in, size=net.size, mode="area"), ident)
            loss = loss + F.l1_loss(out, F.interpolate(target, size=net.size, mode="area"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, steps)
        if time.monotonic() - t0 > cfg.time_limit_s:
            break
    net.eval()
    return losses


@torch.no_grad()
def reconstruction_l1(model: FaceGenerator, faces: list[torch.Tensor]) -> dict[str, float]:
    return {ident: round(float(F.l1_loss(model.net.reconstruct(x, i), x)), 4)
            for i, (ident, x) in enumerate(zip(IDENTITIES, faces, strict=False))}


def train_generator(cfg: GeneratorTrainConfig,
                    progress: Progress | None = None) -> tuple[FaceGenerator, dict[str, Any]]:
    """Train one generator → (model, record for the manifest's ``training``/``metrics``)."""
    from app.models.registry import create_model

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = create_model(cfg.arch)
    assert isinstance(model, FaceGenerator)
    faces = load_identity_faces(cfg.data_root, cfg.identities)
    t0 = time.monotonic()
    losses = train_steps(model, list(faces), cfg.steps, cfg, gen, progress)
    record = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "steps_done": len(losses), "seconds": round(time.monotonic() - t0, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "faces_per_identity": {i: len(f) for i, f in zip(cfg.identities, faces, strict=True)},
        "reconstruction_l1_train": reconstruction_l1(model, faces),
    }
    return model, record


def publish_generator(model: FaceGenerator, record: dict[str, Any], models_dir: Path,
                      name: str, held_out: bool) -> str:
    """Write the weights (float16, a few MB) + manifest entry with role ``generator``."""
    from app.models.publishing import write_entry

    version = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    cfg = record["config"]
    entry = write_entry(
        models_dir, model, name, version=version, dtype="float16",
        description=(f"face-swap autoencoder ({cfg['arch']}, seed {cfg['seed']}) trained by "
                     f"dfshield on demo-corpus train identities; swaps into "
                     f"{cfg['identities'][0]}; "
                     + ("held out: transfer check only" if held_out else "protected against")),
        training={"kind": "generator", "identities": list(cfg["identities"]), "swap_to": 0,
                  "held_out": held_out, "seed": cfg["seed"], "steps": record["steps_done"],
                  "data_root": cfg["data_root"], "seconds": record["seconds"]},
        metrics={"final_loss": record["final_loss"],
                 "reconstruction_l1_train": record["reconstruction_l1_train"],
                 "faces_per_identity": record["faces_per_identity"]},
    )
    return entry.file
