"""Face-manipulation generators that ``dfshield protect`` defends against.

Pretrained face-swap models cannot be had offline, so dfshield bundles the classic face-swap
autoencoder (one shared encoder, one decoder per identity; swapping = encoding a face of anyone
and decoding it with another identity's decoder) trained here on the demo corpus. Anything that
satisfies :class:`Generator` can be protected against too (a user's StarGAN/SimSwap-class model
wrapped to take and return [0,1] faces).

Contract: faces are float tensors in [0,1], NCHW RGB, any square size (resized inside);
``forward`` is differentiable (protection back-propagates through it) and returns the
manipulated face at the input's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from app.models.registry import Preprocess, register_model
from app.models.wrappers import Wrapped

# [0,1] in and out: the generator's own preprocessing is identity (no ImageNet normalisation).
GEN_PREPROCESS = Preprocess(input_size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                            class_names=())
N_IDENTITIES = 4  # decoders per bundled generator (see train_generator.IDENTITIES)
LATENT = 128


@runtime_checkable
class Generator(Protocol):
    """A differentiable face manipulation: [B,3,S,S] in [0,1] → [B,3,S,S] in [0,1]."""

    name: str

    def __call__(self, face: torch.Tensor) -> torch.Tensor: ...

    def features(self, face: torch.Tensor) -> torch.Tensor:
        """An internal representation whose distortion also counts (TSDF's feature term)."""
        ...


def _down(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride=2, padding=k // 2),
                         nn.LeakyReLU(0.1, inplace=True))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    # Pixel-shuffle upscaling as in the original deepfakes autoencoder (no checkerboard).
    return nn.Sequential(nn.Conv2d(c_in, 4 * c_out, 3, padding=1),
                         nn.LeakyReLU(0.1, inplace=True), nn.PixelShuffle(2))


class Encoder(nn.Module):
    """64 px face → 8x8x(4w) code through a dense bottleneck (the identity-agnostic part)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.convs = nn.Sequential(_down(3, w, 5), _down(w, 2 * w, 5), _down(2 * w, 4 * w, 3),
                                   _down(4 * w, 8 * w, 3))
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(8 * w * 16, LATENT),
                                   nn.Linear(LATENT, 8 * w * 16))
        self.up = _up(8 * w, 4 * w)
        self.width = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.dense(self.convs(x)).view(-1, 8 * self.width, 4, 4)
        return self.up(z)


class Decoder(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(_up(4 * w, 2 * w), _up(2 * w, w), _up(w, w),
                                  nn.Conv2d(w, 3, 5, padding=2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(z))


class FaceSwapAE(nn.Module):
    """Shared encoder + one decoder per identity; ``forward`` swaps into ``swap_to``."""

    def __init__(self, width: int = 16, n_identities: int = N_IDENTITIES, swap_to: int = 0,
                 size: int = 64) -> None:
        super().__init__()
        if not 0 <= swap_to < n_identities:
            raise ValueError(f"swap_to must be in [0, {n_identities}), got {swap_to}")
        self.encoder = Encoder(width)
        self.decoders = nn.ModuleList(Decoder(width) for _ in range(n_identities))
        self.swap_to = swap_to
        self.size = size

    def reconstruct(self, x: torch.Tensor, identity: int) -> torch.Tensor:
        return self.decoders[identity](self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x, self.swap_to)


class FaceGenerator(Wrapped):
    """A registry generator as published: [0,1] face of any size → swapped face, same size."""

    entry_name: str | None = None  # the manifest name once loaded from the store

    @property
    def name(self) -> str:
        return self.entry_name or self.spec.name

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        out = self.net(self.prep(face))
        if out.shape[-2:] != face.shape[-2:]:
            out = F.interpolate(out, size=face.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def features(self, face: torch.Tensor) -> torch.Tensor:
        return self.net.encoder(self.prep(face))


@register_model("faceswap_ae64_w16", "generator", GEN_PREPROCESS,
                "face-swap autoencoder, 64 px, width 16, 4 identity decoders (bundled)")
def faceswap_ae64_w16(**kw: int) -> FaceSwapAE:
    return FaceSwapAE(width=16, **kw)


@register_model("faceswap_ae64_w12", "generator", GEN_PREPROCESS,
                "face-swap autoencoder, 64 px, width 12, 4 identity decoders (held out)")
def faceswap_ae64_w12(**kw: int) -> FaceSwapAE:
    return FaceSwapAE(width=12, **kw)


def load_generators(models_dir: Path, names: list[str] | None = None,
                    held_out: bool | None = False) -> list[FaceGenerator]:
    """Verified generators from the model store (all with role ``generator`` by default).

    ``held_out``: False → only those meant for protection, True → only the transfer ones
    (``training.held_out`` in the manifest), None → both.
    """
    from app.models.store import ModelStoreError, load_manifest, load_model

    entries = [m for m in load_manifest(models_dir).models if m.role == "generator"]
    if names is not None:
        entries = [m for m in entries if m.name in names]
    elif held_out is not None:
        entries = [m for m in entries if bool(m.training.get("held_out")) == held_out]
    if not entries:
        raise ModelStoreError(f"no generator in {models_dir} matches (names={names}, "
                              f"held_out={held_out}); train one with `dfshield train generator`")
    gens = []
    for entry in entries:
        g = load_model(models_dir, entry)
        assert isinstance(g, FaceGenerator)
        g.net.swap_to = int(entry.training.get("swap_to", 0))
        g.entry_name = entry.name
        for p in g.parameters():
            p.requires_grad_(False)  # protection differentiates w.r.t. the image only
        gens.append(g)
    return gens
