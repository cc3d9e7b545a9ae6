"""The training-only mask head: hooks g's stride-16 features, learns, leaves g unchanged."""

from __future__ import annotations

import pytest
import torch

from app.models.registry import create_model
from app.training.crop_augment import JpegAt
from app.training.mask_head import MaskHead


@pytest.mark.parametrize("name", ["resnet10t_df", "efficientnet_b4_st"])
def test_mask_head_hooks_a_stride_16_layer(name: str) -> None:
    g = create_model(name)
    head = MaskHead(g.net)
    size = g.input_size
    g.eval()
    with torch.no_grad():
        g(torch.rand(1, 3, size, size))
    feats = head._features
    assert feats is not None and feats.shape[1] == head.conv.in_channels
    assert feats.shape[-1] == -(-size // 16)  # stride 16 (rounded up)
    head.remove()


def test_mask_head_loss_trains_head_and_backbone_then_unhooks() -> None:
    torch.manual_seed(0)
    g = create_model("resnet10t_df")
    head = MaskHead(g.net)
    with pytest.raises(RuntimeError, match="forward pass"):
        head.loss(torch.zeros(2, 1, 128, 128))
    x = torch.rand(2, 3, 128, 128)
    masks = torch.zeros(2, 1, 128, 128)
    masks[1, :, 32:96, 32:96] = 1.0
    opt = torch.optim.SGD([*g.parameters(), *head.parameters()], lr=0.1)
    losses = []
    for _ in range(8):
        g(x)
        loss = head.loss(masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]  # it learns where the blend is
    assert g.net.layer1[0].conv1.weight.grad is not None  # through g's own layers
    head.remove()
    g(x)
    assert head._features is None  # unhooked: g no longer feeds the head


def test_jpeg_at_is_deterministic_and_lossy() -> None:
    x = torch.rand(3, 64, 64)
    a, b = JpegAt(75)(x), JpegAt(75)(x)
    assert torch.equal(a, b) and not torch.allclose(a, x, atol=1 / 255)
