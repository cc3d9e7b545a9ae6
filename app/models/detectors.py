"""Deepfake detector architectures (g): normalised crop → logits [B,2], index 1 = fake.

Builders return the *raw* network; ``app.models.wrappers.Detector`` adds resize + normalise.
Backbones come from timm with ``pretrained=False``: weights only ever come from the model store.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from app.models.registry import IMAGENET_MEAN, IMAGENET_STD, Preprocess, register_model
from app.models.same_padding import pin_same_padding

HALF = (0.5, 0.5, 0.5)
# efficientnet_pytorch builds EfficientNet-B4 for 380 px and pins its "SAME" padding for it.
EFFICIENTNET_PYTORCH_B4_SIZE = 380
# Narrow ResNet-10-T: ~1.2 M parameters, trainable from scratch on CPU in minutes.
SMALL_RESNET_CHANNELS = (32, 64, 128, 256)


def disable_inplace_relu(module: nn.Module) -> nn.Module:
    """Make every ``nn.ReLU`` out-of-place; returns ``module`` for chaining.

    captum's GuidedBackprop hooks ``nn.ReLU`` modules with backward hooks, and autograd refuses
    in-place ops on a hooked module's output; out-of-place ReLU computes the same values.
    """
    for m in module.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return module


def small_resnet_backbone(num_classes: int = 0, drop_rate: float = 0.0) -> nn.Module:
    """The CPU-friendly ResNet-10-T at half width (ReLU, BatchNorm, global average pool)."""
    net = timm.create_model(
        "resnet10t",
        pretrained=False,
        num_classes=num_classes,
        channels=SMALL_RESNET_CHANNELS,
        drop_rate=drop_rate,
    )
    return disable_inplace_relu(net)


@register_model(
    "xception",
    "detector",
    Preprocess(299, mean=HALF, std=HALF),
    "FaceForensics++ Xception (Chollet's original, timm legacy_xception) with a 2-class head",
)
def xception(drop_rate: float = 0.5) -> nn.Module:
    # FaceForensics++ trained its Xception head with dropout 0.5; it is a no-op in eval mode.
    net = timm.create_model("legacy_xception", pretrained=False, num_classes=2, drop_rate=drop_rate)
    return disable_inplace_relu(net)


class EfficientNetB4ST(nn.Module):
    """Bonettini et al.'s EfficientNetB4ST: features → BatchNorm1d → Linear → one logit z.

    The reference forward computes the features under ``no_grad``; here gradients reach the
    input, because XAI maps and attacks differentiate through g.
    """

    def __init__(self, drop_path_rate: float = 0.2, features: nn.Module | None = None) -> None:
        super().__init__()
        # 0.2 = efficientnet_pytorch's drop-connect default that the reference trained with;
        # it only acts in train mode.
        if features is None:
            features = timm.create_model(
                "efficientnet_b4", pretrained=False, num_classes=0, drop_path_rate=drop_path_rate
            )
        self.features = features
        n = self.features.num_features
        self.classifier = nn.Sequential(nn.BatchNorm1d(n), nn.Linear(n, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.classifier(self.features(x))[:, 0]
        # z > 0 means fake; softmax([-z, z]) gives p_fake = sigmoid(2z), same decision boundary.
        return torch.stack([-z, z], dim=1)


@register_model(
    "efficientnet_b4_st",
    "detector",
    Preprocess(224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "Bonettini et al. EfficientNetB4ST (EfficientNet-B4 → BN1d → Linear(1792,1)); logits [-z, z]",
)
def efficientnet_b4_st(drop_path_rate: float = 0.2) -> nn.Module:
    return disable_inplace_relu(EfficientNetB4ST(drop_path_rate))


def efficientnet_pytorch_b4_features(drop_path_rate: float = 0.2) -> nn.Module:
    """EfficientNet-B4 features computing exactly what ``efficientnet_pytorch``'s B4 computes.

    timm's ``tf_efficientnet_b4`` has its layout (TF "SAME" padding, BN eps 1e-3); the padding
    is then pinned for 380 px as efficientnet_pytorch pins it (``app.models.same_padding``), and
    BN momentum is its 0.01. No dropout before the classifier: EfficientNetB4ST has none.
    """
    net = timm.create_model(
        "tf_efficientnet_b4", pretrained=False, num_classes=0, drop_rate=0.0,
        drop_path_rate=drop_path_rate, bn_momentum=0.01,
    )
    return pin_same_padding(net, EFFICIENTNET_PYTORCH_B4_SIZE)


@register_model(
    "efficientnet_b4_st_tf",
    "detector",
    Preprocess(224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "EfficientNetB4ST in efficientnet_pytorch's exact layout (TF 'SAME' padding pinned for "
    "380 px, BN eps 1e-3): the target of icpr2020dfdc imports; logits [-z, z]",
)
def efficientnet_b4_st_tf(drop_path_rate: float = 0.2) -> nn.Module:
    features = efficientnet_pytorch_b4_features(drop_path_rate)
    return disable_inplace_relu(EfficientNetB4ST(drop_path_rate, features=features))


@register_model(
    "resnet10t_df",
    "detector",
    Preprocess(128, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "Small CPU-friendly detector: timm ResNet-10-T at half width (~1.2 M params), ReLU",
)
def resnet10t_df(drop_rate: float = 0.0) -> nn.Module:
    return small_resnet_backbone(num_classes=2, drop_rate=drop_rate)


@register_model(
    "regnetx002_df",
    "detector",
    Preprocess(128, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "Second small detector, another family (timm RegNetX-200MF, grouped convs, ReLU, ~2.3 M "
    "params): the demo's transfer target (Table 8)",
)
def regnetx002_df(drop_rate: float = 0.0) -> nn.Module:
    net = timm.create_model("regnetx_002", pretrained=False, num_classes=2, drop_rate=drop_rate)
    return disable_inplace_relu(net)
