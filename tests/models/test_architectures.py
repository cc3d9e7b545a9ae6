"""Every registered architecture: real forward + backward on CPU, plus per-architecture facts."""

from __future__ import annotations

import pytest
import torch
from captum.attr import GuidedBackprop, Saliency
from torch import nn

from app.models.adversarial import DetectNet
from app.models.registry import create_model, get_spec, list_models

NATIVE = 150  # a crop size that differs from every model's input size


def _inputs(role: str, b: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    n = 2 if role == "adversarial" else 1
    return tuple(torch.rand(b, 3, NATIVE, NATIVE, generator=g).requires_grad_() for _ in range(n))


def test_expected_models_registered() -> None:
    assert {"xception", "efficientnet_b4_st", "resnet10t_df"} <= set(list_models("detector"))
    assert {"detect_resnet50", "detect_resnet10t"} <= set(list_models("adversarial"))
    assert get_spec("xception").preprocess.input_size == 299
    assert get_spec("xception").preprocess.mean == (0.5, 0.5, 0.5)
    assert get_spec("xception").preprocess.std == (0.5, 0.5, 0.5)
    assert get_spec("efficientnet_b4_st").preprocess.input_size == 224
    assert get_spec("detect_resnet50").preprocess.input_size == 224
    for name in list_models("adversarial"):
        assert get_spec(name).preprocess.class_names == ("clean", "attacked")


def _batch(name: str) -> int:
    # Big backbones (input >= 224) get B=1 to keep this file fast on 2 shared CPU cores.
    return 1 if get_spec(name).preprocess.input_size >= 224 else 2


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_reaches_input(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    b = _batch(name)
    inputs = _inputs(get_spec(name).role, b=b)
    logits = model(*inputs)
    # A backbone publishes its descriptor (dlib's 128-d face embedding), not class logits.
    assert logits.shape == ((b, 128) if get_spec(name).role == "backbone" else (b, 2))
    assert torch.isfinite(logits).all()
    logits[:, 0].sum().backward()
    for x in inputs:  # XAI and attacks differentiate w.r.t. the native-size crop (and map)
        assert x.grad is not None and x.grad.shape == x.shape
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_models())
def test_no_inplace_relu_left(name: str) -> None:
    relus = [m for m in create_model(name).modules() if isinstance(m, nn.ReLU)]
    assert not any(m.inplace for m in relus)


@pytest.mark.parametrize("name", ["resnet10t_df", "xception"])
def test_guided_backprop_runs_on_relu_detectors(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    (x,) = _inputs("detector", b=1)
    guided = GuidedBackprop(model).attribute(x, target=0)
    plain = Saliency(model).attribute(x, target=0, abs=False)
    assert guided.shape == x.shape and torch.isfinite(guided).all()
    # On ReLU nets guided backprop really differs from the plain gradient.
    assert not torch.allclose(guided, plain)
    # captum removed its hooks: a later plain backward is unaffected.
    assert all(not m._backward_hooks for m in model.modules() if isinstance(m, nn.ReLU))


def test_efficientnet_b4_st_two_logits_are_minus_z_z() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_b4_st")
    bn, fc = model.net.classifier
    assert isinstance(bn, nn.BatchNorm1d) and bn.num_features == 1792
    assert (fc.in_features, fc.out_features) == (1792, 1)
    (x,) = _inputs("detector", b=1)
    with torch.no_grad():
        logits = model(x)
        z = model.net.classifier(model.net.features(model.prep(x)))[:, 0]
    torch.testing.assert_close(logits[:, 1], z)
    torch.testing.assert_close(logits[:, 0], -z)


def test_xception_is_legacy_xception_with_two_class_head() -> None:
    net = create_model("xception").net
    assert type(net).__name__ == "Xception"
    assert (net.fc.in_features, net.fc.out_features) == (2048, 2)


def _count_backbone_calls(net: DetectNet) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    sizes: list[int] = []
    handle = net.backbone.register_forward_hook(lambda _m, inp, _o: sizes.append(inp[0].shape[0]))
    return sizes, handle


def test_detect_resnet50_shares_one_backbone_over_2b_batch() -> None:
    torch.manual_seed(0)
    model = create_model("detect_resnet50")
    net = model.net
    assert isinstance(net, DetectNet) and net.backbone.num_features == 2048
    lin1, act, lin2 = net.head
    assert (lin1.in_features, lin1.out_features) == (4096, 512)
    assert isinstance(act, nn.ReLU)
    assert (lin2.in_features, lin2.out_features) == (512, 2)

    crop, xmap = _inputs("adversarial", b=1)
    sizes, handle = _count_backbone_calls(net)
    try:
        with torch.no_grad():
            model(crop, xmap)
    finally:
        handle.remove()
    assert sizes == [2]  # called once, on the crop and the map stacked as 2B


def test_detect_net_embeddings_are_crop_then_map() -> None:
    # Same DetectNet class as detect_resnet50, small backbone so B=2 stays cheap.
    torch.manual_seed(0)
    model = create_model("detect_resnet10t")
    net = model.net
    crop, xmap = _inputs("adversarial", b=2)
    sizes, handle = _count_backbone_calls(net)
    try:
        with torch.no_grad():
            logits = model(crop, xmap)
    finally:
        handle.remove()
    assert sizes == [4]
    # Equal to running the backbone separately (eval mode): rows pair crop i with map i.
    with torch.no_grad():
        e_crop = net.backbone(model.prep(crop))
        e_map = net.backbone(model.prep(xmap))
        expected = net.head(torch.cat([e_crop, e_map], dim=1))
        swapped = net.head(torch.cat([e_map, e_crop], dim=1))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(logits, swapped)


def test_detect_resnet50_frozen_backbone_trains_only_head() -> None:
    torch.manual_seed(0)
    model = create_model("detect_resnet50", freeze_backbone=True)
    net = model.net
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)
    assert trainable == {f"head.{n}" for n, _ in net.head.named_parameters()}

    model.train()  # frozen mode keeps BatchNorm statistics of the backbone fixed too
    assert net.head.training and not net.backbone.training
    bn = next(m for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    crop, xmap = _inputs("adversarial", b=1)
    model(crop, xmap)[:, 1].sum().backward()
    torch.testing.assert_close(bn.running_mean, before)
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.head.parameters())
    assert crop.grad.abs().sum() > 0  # adaptive attacks still differentiate through d


def test_detect_resnet10t_finetune_mode_updates_backbone() -> None:
    torch.manual_seed(0)
    model = create_model("detect_resnet10t").train()
    crop, xmap = _inputs("adversarial")
    model(crop, xmap)[:, 1].sum().backward()
    assert model.net.backbone.training
    assert all(p.grad is not None for p in model.net.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 5_000_000  # small enough for CPU training
