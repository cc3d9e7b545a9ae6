"""Training-only dense supervision for g: predict *where* a self-blend was pasted.

A binary real/fake label says little about a blend that covers part of a 128 px face; the
blend mask says exactly where the evidence is. Face X-ray (Li et al., CVPR 2020) trains on that
map; here a 1x1 convolution on g's stride-16 features predicts the (peak-normalised) blend mask,
and its loss is added to the classification loss. The head is never published: the served g
is the unchanged classifier, so serving, ONNX export and the XAI maps do not see it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _feature_info(net: nn.Module) -> tuple[list[dict[str, Any]], str]:
    """timm's ``feature_info`` of ``net`` or of its ``features`` backbone, with its prefix."""
    for prefix, module in (("", net), ("features.", getattr(net, "features", None))):
        info = getattr(module, "feature_info", None)
        if info:
            return [dict(f) for f in info], prefix
    raise ValueError(f"{type(net).__name__} has no timm feature_info: no layer for a mask head")


class MaskHead(nn.Module):
    """Hooks the feature map of ``net`` closest to ``reduction``; ``loss(masks)`` after a
    forward pass of ``net`` on the batch the masks belong to."""

    def __init__(self, net: nn.Module, reduction: int = 16) -> None:
        super().__init__()
        info, prefix = _feature_info(net)
        entry = min(info, key=lambda f: abs(f["reduction"] - reduction))
        self.layer = prefix + entry["module"]
        self.conv = nn.Conv2d(entry["num_chs"], 1, kernel_size=1)
        self._features: torch.Tensor | None = None
        self._handle = net.get_submodule(self.layer).register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self._features = output

    def loss(self, masks: torch.Tensor) -> torch.Tensor:
        """BCE between the predicted map and ``masks`` [B,1,H,W] in [0,1] pooled to its size."""
        if self._features is None:
            raise RuntimeError("MaskHead.loss needs a forward pass of the network first")
        logits = self.conv(self._features.float())
        target = F.adaptive_avg_pool2d(masks.to(logits.device, logits.dtype), logits.shape[-2:])
        self._features = None
        return F.binary_cross_entropy_with_logits(logits, target)

    def remove(self) -> None:
        self._handle.remove()
