"""Explainer: real captum passes over tiny ReLU / SiLU detectors built here (not the registry)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import GuidedBackprop
from torch import nn
from torch.nn.modules import module as module_globals

from app.models.registry import ModelSpec, Preprocess
from app.models.wrappers import Detector
from app.pipeline.explain import (
    XAI_METHODS,
    Explainer,
    attribution_to_map,
    image_to_map,
    map_to_heatmap,
    map_to_image,
)

S = 64  # detector input size; crops are fed at another size so the resize is exercised


class HookProbe(nn.Module):
    """Identity that records, at forward time, the hooks and inplace flags of watched ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.watch: list[nn.Module] = []  # a plain list: not registered as submodules
        self.hooks_seen: list[int] = []
        self.inplace_seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.hooks_seen.append(sum(_hooks_on(m) for m in self.watch))
        self.inplace_seen.extend(m.inplace for m in self.watch if isinstance(m, nn.ReLU))
        return x


class TinyNet(nn.Module):
    """conv-BN-act-conv-act-(probe)-head; ``flat_size`` swaps the pooled head for a flat one."""

    def __init__(self, act: str, flat_size: int | None = None) -> None:
        super().__init__()
        self.act1 = nn.ReLU(inplace=True) if act == "relu" else nn.SiLU()
        self.act2 = nn.ReLU(inplace=True) if act == "relu" else nn.SiLU()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), self.act1,
            nn.Conv2d(8, 8, 3, stride=4, padding=1), self.act2,
        )  # fmt: skip
        self.probe = HookProbe()
        self.probe.watch = [self.act1, self.act2]
        pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        flat = nn.Sequential(nn.Flatten(), nn.Linear(8 * (flat_size or 4) ** 2 // 16, 2))
        self.head = flat if flat_size else pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.probe(self.body(x)))


def make_detector(act: str, flat_size: int | None = None, size: int = S) -> Detector:
    torch.manual_seed(0)
    net = TinyNet(act, flat_size)
    with torch.no_grad():  # non-trivial BN statistics, so eval vs train mode matters
        bn = net.body[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return Detector(ModelSpec(f"tiny_{act}", "detector", Preprocess(size), build=lambda: net), net)


def crops(n: int = 3, size: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hooks_on(m: nn.Module) -> int:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, n, {})) for n in names)


def hook_count(net: nn.Module) -> int:
    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    global_hooks = sum(len(getattr(module_globals, n, {})) for n in names)
    return global_hooks + sum(_hooks_on(m) for m in net.modules())


def plain_gradient(det: Detector, x: torch.Tensor, logit: int = Detector.REAL) -> torch.Tensor:
    """d logit / d normalised input, by hand (the real logit unless told)."""
    det.eval()
    x_n = det.prep(x).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(det.net(x_n)[:, logit].sum(), x_n)
    return grad


@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("method", XAI_METHODS)
def test_every_method_gives_finite_attribution_at_input_size(method: str, act: str) -> None:
    det = make_detector(act).eval()
    attr = Explainer(det, method, ig_steps=8, internal_batch_size=8).attribute(crops())
    assert attr.shape == (3, 3, S, S)
    assert attr.dtype == torch.float32 and not attr.requires_grad
    assert torch.isfinite(attr).all() and attr.abs().sum() > 0


@pytest.mark.parametrize("method", XAI_METHODS)
def test_batch_attribution_equals_per_sample(method: str) -> None:
    explainer = Explainer(make_detector("relu").eval(), method, ig_steps=8, internal_batch_size=5)
    x = crops(3)
    batch = explainer.attribute(x)
    single = torch.cat([explainer.attribute(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-6)


def test_saliency_is_abs_gradient_of_real_logit_wrt_the_tensor_g_sees() -> None:
    det = make_detector("relu")
    x = crops()
    expected = plain_gradient(det, x).abs()
    torch.testing.assert_close(Explainer(det, "saliency").attribute(x), expected)


def test_fake_target_explains_the_fake_logit_not_the_real_one() -> None:
    det = make_detector("relu")
    x = crops()
    fake = Explainer(det, "saliency", target="fake").attribute(x)
    torch.testing.assert_close(fake, plain_gradient(det, x, Detector.FAKE).abs())
    real = Explainer(det, "saliency").attribute(x)
    assert not torch.allclose(fake, real)  # two logits, two different gradients
    with pytest.raises(ValueError, match="unknown XAI target 'both'"):
        Explainer(det, "saliency", target="both")


def test_guided_backprop_is_plain_gradient_on_silu_but_not_on_relu() -> None:
    x = crops()
    silu, relu = make_detector("silu"), make_detector("relu")
    gb_silu = Explainer(silu, "guided_backprop").attribute(x)
    torch.testing.assert_close(gb_silu, plain_gradient(silu, x))
    gb_relu = Explainer(relu, "guided_backprop").attribute(x)
    grad_relu = plain_gradient(relu, x)
    assert not torch.allclose(gb_relu, grad_relu, atol=1e-6)


def test_out_of_place_pass_does_not_change_guided_backprop() -> None:
    # The docstring's claim: with captum 0.9, in-place ReLUs already give the same result.
    det = make_detector("relu").eval()
    x = crops()
    x_n = det.prep(x).detach().requires_grad_(True)
    with pytest.warns(UserWarning, match="Setting backward hooks"):
        raw = GuidedBackprop(det.net).attribute(x_n, target=Detector.REAL)
    assert det.net.act1.inplace and det.net.act2.inplace
    torch.testing.assert_close(Explainer(det, "guided_backprop").attribute(x), raw)


def test_integrated_gradients_baseline_is_zero_in_normalised_space() -> None:
    # Completeness: IG attributions sum to f(x_n) - f(0) for the real logit.
    det = make_detector("silu").eval()
    x = crops(2)
    attr = Explainer(det, "integrated_gradients", ig_steps=64).attribute(x)
    with torch.no_grad():
        x_n = det.prep(x)
        delta = det.net(x_n)[:, 0] - det.net(torch.zeros_like(x_n))[:, 0]
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), delta, rtol=2e-2, atol=2e-3)


def test_guided_backprop_hooks_removed_and_user_hook_kept() -> None:
    det = make_detector("relu")
    user_hook = det.net.body.register_forward_hook(lambda *_: None)
    before = hook_count(det)
    det.net.probe.hooks_seen.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # captum's per-call hook warning is silenced
        Explainer(det, "guided_backprop").attribute(crops())
    assert max(det.net.probe.hooks_seen) > 0  # captum did hook the ReLUs during the pass
    assert hook_count(det) == before  # ... and every one of its hooks is gone
    assert len(det.net.body._forward_hooks) == 1  # the user's own hook survived
    user_hook.remove()
    assert hook_count(det) == 0


@pytest.mark.parametrize("method", XAI_METHODS)
def test_hooks_and_state_restored_when_attribution_raises(method: str) -> None:
    # The flat head is sized for 64 px but the spec feeds 48: the net raises mid-attribution.
    det = make_detector("relu", flat_size=S, size=48).train()
    frozen = det.net.body[0].bias
    frozen.requires_grad_(False)
    det.net.probe.hooks_seen.clear()
    with pytest.raises(RuntimeError):
        Explainer(det, method, ig_steps=4).attribute(crops())
    if method == "guided_backprop":
        assert max(det.net.probe.hooks_seen) > 0  # it failed *after* captum hooked the ReLUs
    assert hook_count(det) == 0
    assert all(m.training for m in det.modules())
    assert [p.requires_grad for p in det.parameters()] == [
        p is not frozen for p in det.parameters()
    ]
    assert det.net.act1.inplace and det.net.act2.inplace


@pytest.mark.parametrize("method", XAI_METHODS)
def test_eval_mode_during_attribution_and_state_restored(method: str) -> None:
    det = make_detector("relu")
    x = crops()
    explainer = Explainer(det, method, ig_steps=4)
    expected = explainer.attribute(x)  # from eval mode
    det.train()
    bn = det.net.body[1]
    stats = bn.running_mean.clone()
    det.net.probe.inplace_seen.clear()
    got = explainer.attribute(x)
    torch.testing.assert_close(got, expected)  # BN used running stats: eval mode
    torch.testing.assert_close(bn.running_mean, stats)  # and did not update them
    assert all(m.training for m in det.modules())
    assert all(p.requires_grad for p in det.parameters())
    assert det.net.act1.inplace and det.net.act2.inplace
    # guided backprop runs with out-of-place ReLUs; the other methods leave them alone
    assert set(det.net.probe.inplace_seen) == {method != "guided_backprop"}


def test_attribute_works_inside_no_grad_and_on_inference_tensors() -> None:
    explainer = Explainer(make_detector("relu"))
    with torch.inference_mode():
        x = crops()
    expected = explainer.attribute(x.clone())
    with torch.no_grad():
        torch.testing.assert_close(explainer.attribute(x), expected)


def test_bad_arguments_are_rejected() -> None:
    det = make_detector("relu")
    with pytest.raises(ValueError, match="saliency"):
        Explainer(det, "gradcam")
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        Explainer(det).attribute(torch.rand(3, 48, 48))
    with pytest.raises(ValueError, match="percentile"):
        attribution_to_map(torch.rand(1, 3, 4, 4), percentile=0)


def test_attribution_to_map_rule() -> None:
    attr = torch.randn(4, 3, 16, 16)
    attr[1] *= 1000.0  # per-sample scaling: magnitude does not leak across the batch
    attr[2] = 0.0
    maps = attribution_to_map(attr)
    assert maps.shape == attr.shape
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert (maps[2] == 0).all()
    torch.testing.assert_close(maps[1], attribution_to_map(attr[1:2] / 1000.0)[0])
    # nearest-rank percentile: values 1..100 → divided by 99, the top value clipped
    ramp = -torch.arange(1.0, 101.0).view(1, 1, 10, 10)
    ramp_map = attribution_to_map(ramp, percentile=99.0).flatten()
    torch.testing.assert_close(ramp_map[49], torch.tensor(50.0 / 99.0))
    assert ramp_map[98] == 1.0 and ramp_map[99] == 1.0
    # sparse attribution whose percentile is 0: the max is used, not a blow-up to 1 everywhere
    sparse = torch.zeros(1, 3, 16, 16)  # 2 non-zeros among 768 values: the 99th pct is 0
    sparse[0, 0, 0, 0], sparse[0, 1, 0, 0] = 4.0, 2.0
    assert sorted(attribution_to_map(sparse).unique().tolist()) == [0.0, 0.5, 1.0]


def test_maps_end_to_end_and_images() -> None:
    maps = Explainer(make_detector("silu")).maps(crops(2))
    assert maps.shape == (2, 3, S, S) and maps.min() >= 0 and maps.max() <= 1
    img = map_to_image(maps[0])
    assert img.shape == (S, S, 3) and img.dtype == np.uint8
    assert (image_to_map(img) - maps[0]).abs().max() <= 0.5 / 255 + 1e-6
    crop = np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    heat = map_to_heatmap(maps[0], crop)
    assert heat.shape == crop.shape and heat.dtype == np.uint8
    assert not np.array_equal(heat, crop)
    np.testing.assert_array_equal(map_to_heatmap(img, crop, alpha=0.0), crop)
    # a hot map paints the crop red-ish (JET's top), a cold one blue-ish
    hot = map_to_heatmap(torch.ones(3, 8, 8), np.zeros((8, 8, 3), np.uint8), alpha=1.0)
    cold = map_to_heatmap(torch.zeros(1, 3, 8, 8), np.zeros((8, 8, 3), np.uint8), alpha=1.0)
    assert hot[..., 0].mean() > hot[..., 2].mean() and cold[..., 2].mean() > cold[..., 0].mean()
