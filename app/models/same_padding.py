"""TensorFlow "SAME" padding frozen at build time, as ``efficientnet_pytorch`` does it.

``efficientnet_pytorch`` (the library icpr2020dfdc trained EfficientNetB4ST with) pads each
strided convolution with a fixed ``ZeroPad2d`` computed for the model's nominal image size
(380 px for B4), whatever size it is later fed. timm's ``tf_`` EfficientNets compute the same
padding from the *actual* input instead; at 224 px the two differ in one layer (stage 3's first
depthwise conv: 95 px there is odd, 56 px here is even). Pinning the padding the way
``efficientnet_pytorch`` does reproduces the published network exactly at every input size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Pad4 = tuple[int, int, int, int]  # left, right, top, bottom (F.pad order)


def tf_same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" zero padding (before, after) of one axis of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class FixedPadConv2d(nn.Conv2d):
    """A Conv2d behind a fixed zero padding; same parameters (and state-dict keys) as Conv2d."""

    def __init__(self, conv: nn.Conv2d, pad: Pad4) -> None:
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
            conv.dilation, conv.groups, conv.bias is not None,
        )
        self.pad = pad
        self.load_state_dict(conv.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(F.pad(x, self.pad), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fixed_pad={self.pad}"


def _pin(conv: nn.Conv2d, size: int) -> tuple[nn.Conv2d, int]:
    """(conv with its padding pinned for an input of ``size``, its output size)."""
    kernel, stride, dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    if stride == 1:
        # Odd kernel, stride 1: SAME is symmetric and size-independent, as timm already pads.
        return conv, size
    before, after = tf_same_pad(size, kernel, stride, dilation)
    return FixedPadConv2d(conv, (before, after, before, after)), math.ceil(size / stride)


def pin_same_padding(net: nn.Module, image_size: int) -> nn.Module:
    """Pin the padding of a timm ``tf_efficientnet_*`` (stem + depthwise convs) for ``image_size``.

    Only the stem and the depthwise convs stride; 1x1 convs never pad. Returns ``net``.
    """
    net.conv_stem, size = _pin(net.conv_stem, image_size)
    for stage in net.blocks:
        for block in stage:
            block.conv_dw, size = _pin(block.conv_dw, size)
    return net
