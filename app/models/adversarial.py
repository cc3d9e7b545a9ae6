"""Adversarial detector architectures (d): (normalised crop, normalised XAI map) → logits [B,2].

"Detect-ResNet" (DESIGN §2): ONE shared backbone embeds crop and map, run as a single batch of
2B; the two embeddings are concatenated → Linear(2F, hidden) → ReLU → Linear(hidden, 2),
index 1 = attacked. ``AdversarialDetector`` in wrappers.py does the resize + normalise.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from app.models.detectors import disable_inplace_relu, small_resnet_backbone
from app.models.registry import IMAGENET_MEAN, IMAGENET_STD, Preprocess, register_model

ADV_CLASSES = ("clean", "attacked")


class DetectNet(nn.Module):
    """Shared-backbone two-input classifier.

    ``freeze_backbone`` is the paper's second training mode: only the head learns, and the
    backbone also stays in eval mode under ``.train()`` so its BatchNorm statistics are frozen
    too (requires_grad=False alone would still let them drift).
    """

    def __init__(
        self, backbone: nn.Module, hidden: int = 512, freeze_backbone: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        feat = int(backbone.num_features)
        self.head = nn.Sequential(
            nn.Linear(2 * feat, hidden), nn.ReLU(inplace=False), nn.Linear(hidden, 2)
        )
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> DetectNet:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, crop_n: torch.Tensor, map_n: torch.Tensor) -> torch.Tensor:
        b = crop_n.shape[0]
        # One pass over 2B images: the backbone sees crops and maps in the same batch.
        emb = self.backbone(torch.cat([crop_n, map_n], dim=0))
        return self.head(torch.cat([emb[:b], emb[b:]], dim=1))


@register_model(
    "detect_resnet50",
    "adversarial",
    Preprocess(224, mean=IMAGENET_MEAN, std=IMAGENET_STD, class_names=ADV_CLASSES),
    "Detect-ResNet50: shared ResNet50 over crop + XAI map (2B batch) → 4096 → 512 → 2",
)
def detect_resnet50(freeze_backbone: bool = False) -> nn.Module:
    backbone = disable_inplace_relu(timm.create_model("resnet50", pretrained=False, num_classes=0))
    return DetectNet(backbone, hidden=512, freeze_backbone=freeze_backbone)


@register_model(
    "detect_resnet10t",
    "adversarial",
    Preprocess(128, mean=IMAGENET_MEAN, std=IMAGENET_STD, class_names=ADV_CLASSES),
    "Small Detect-ResNet: shared half-width ResNet-10-T over crop + XAI map → 512 → 256 → 2",
)
def detect_resnet10t(freeze_backbone: bool = False) -> nn.Module:
    return DetectNet(small_resnet_backbone(), hidden=256, freeze_backbone=freeze_backbone)
