"""The attacker's learned purifier: a small residual denoiser (AntiPure's concern, reduced).

AntiPure asks whether a protective perturbation survives the attacker *cleaning* the photo
before using it. Diffusion purifiers cannot be had offline, so dfshield trains its own small
DnCNN-style denoiser (Zhang et al. 2017: conv + ReLU layers that predict the noise, which is
subtracted) on real demo-corpus faces with adversarial-looking high-frequency noise
(``dfshield train denoiser``, :mod:`app.protect.train_denoiser`). It is used twice: as one of
the purifiers of the purification evaluation, and optionally inside stage 1's EOT so the
perturbation is optimised to survive it.

Fully convolutional: it runs on a photo or a crop of any size at its native resolution (the
wrapper never resizes; ``Preprocess.input_size`` only records the training patch size).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.models.registry import Preprocess, register_model
from app.models.wrappers import Wrapped

PURIFIER_PREPROCESS = Preprocess(input_size=48, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                 class_names=())


class DnCNN(nn.Module):
    """``depth`` 3x3 convolutions (ReLU between), ``width`` channels, predicting the residual."""

    def __init__(self, depth: int = 7, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        self.body = nn.Sequential(*layers)
        # He init keeps the ReLU stack's activations alive (PyTorch's default shrinks them
        # layer by layer, and training then collapsed to a zero residual); the last layer
        # starts near zero, so the net starts near the identity map.
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.body[-1].weight, std=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Denoiser(Wrapped):
    """[B,3,H,W] in [0,1] → the denoised image, same size, in [0,1]; differentiable."""

    entry_name: str | None = None

    @property
    def name(self) -> str:
        return self.entry_name or self.spec.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Preprocessing is the identity and the net is fully convolutional: no resize.
        return (x - self.net(x)).clamp(0.0, 1.0)

    @torch.no_grad()
    def purify_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 → denoised HxWx3 uint8 (what the attacker would save)."""
        x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
        out = self(x)[0].permute(1, 2, 0).numpy()
        return np.ascontiguousarray((out * 255.0).round().clip(0, 255).astype(np.uint8))


@register_model("dncnn7_w32", "purifier", PURIFIER_PREPROCESS,
                "residual denoiser, 7 conv layers, 32 channels (the attacker's purifier)")
def dncnn7_w32() -> DnCNN:
    return DnCNN(depth=7, width=32)


def load_denoiser(models_dir: Path, name: str | None = None) -> Denoiser | None:
    """The published purifier ``name`` (default: the first with role ``purifier``), frozen;
    None when the store has none (the purification evaluation then skips it)."""
    from app.models.store import load_manifest, load_model

    manifest_path = Path(models_dir) / "manifest.json"
    if not manifest_path.is_file():
        return None
    entries = [m for m in load_manifest(models_dir).models
               if m.role == "purifier" and (name is None or m.name == name)]
    if not entries:
        return None
    model = load_model(models_dir, entries[0])
    assert isinstance(model, Denoiser)
    model.entry_name = entries[0].name
    for p in model.parameters():
        p.requires_grad_(False)  # optimisation through it differentiates the image only
    return model
