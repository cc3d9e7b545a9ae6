"""Attack suite on a tiny detector trained here (fake = high-frequency pattern, real = smooth)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.models.registry import ModelSpec, Preprocess
from app.models.wrappers import AdversarialDetector, Detector
from app.pipeline.explain import Explainer, attribution_to_map
from app.training.attacks import ATTACKS, BLACK_BOX, AttackResult, get_attack, run_attack
from app.training.attacks.adaptive import differentiable_map, saliency_map
from app.training.attacks.apgd import apgd_checkpoints
from app.training.attacks.base import ce_loss, margin, margin_loss, project_linf
from app.training.attacks.square import square_p

EPS = 16 / 255
SIZE = 32
# Small budgets so the whole file runs in seconds on 2 CPU cores.
SMALL = {
    "pgd": {"iters": 20},
    "fgsm": {},
    "apgd": {"iters": 20, "restarts": 1},
    "nes": {"iters": 20, "restarts": 1, "n_pairs": 10},
    "square": {"max_queries": 300},
}


def _images(n: int, fake: bool, gen: torch.Generator) -> Tensor:
    """Smooth random colour fields; fakes carry a faint checkerboard (the 'blending artefact')."""
    low = torch.rand(n, 3, 4, 4, generator=gen)
    x = F.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = 0.2 + 0.6 * x
    if fake:
        yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
        checker = ((yy + xx) % 2).float() * 2 - 1
        amp = 0.05 + 0.05 * torch.rand(n, 1, 1, 1, generator=gen)
        x = x + amp * checker
    return x.clamp(0, 1)


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


class _TinyDetectNet(nn.Module):
    """d's raw net: (crop_n, map_n) → logits, shared conv trunk like Detect-ResNet."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(16, 2)

    def forward(self, crop_n: Tensor, map_n: Tensor) -> Tensor:
        emb = self.trunk(torch.cat([crop_n, map_n]))
        return self.head(torch.cat([emb[: crop_n.shape[0]], emb[crop_n.shape[0] :]], dim=1))


def _fit(model: nn.Module, loss_fn: Callable[[], Tensor], steps: int) -> None:
    """Full-batch momentum SGD. Hand-written: torch.optim's first step imports torch._dynamo,
    ~15 s on a machine that does not cache bytecode."""
    velocity = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(steps):
        model.zero_grad()
        loss_fn().backward()
        with torch.no_grad():
            for p, v in zip(model.parameters(), velocity, strict=True):
                p.sub_(0.05 * v.mul_(0.9).add_(p.grad))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny convolutions on a shared 2-core box: a second intra-op thread only adds contention.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def g() -> Detector:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([_images(100, False, gen), _images(100, True, gen)])
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    spec = ModelSpec("tiny", "detector", Preprocess(SIZE), build=_tiny_cnn)
    model = Detector(spec, _tiny_cnn())
    # Label smoothing caps the converged logit gap near log(0.95/0.05) ≈ 3: g is right but not
    # so confident that small black-box budgets cannot move it.
    _fit(model, lambda: F.cross_entropy(model(x), y, label_smoothing=0.1), steps=60)
    return model.eval()


@pytest.fixture(scope="module")
def fakes(g: Detector) -> Tensor:
    """Held-out fakes that g gets right (called fake)."""
    x = _images(24, True, torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = x[margin(g(x)) < 0]
    assert x.shape[0] >= 16
    return x


@pytest.fixture(scope="module")
def d(g: Detector) -> AdversarialDetector:
    """A tiny d trained as in the paper: clean = real faces, attacked = fakes that PGD turned
    "real" for g; both with their Saliency maps."""
    torch.manual_seed(1)
    pre = Preprocess(SIZE, class_names=("clean", "attacked"))
    spec = ModelSpec("tinyd", "adversarial", pre, build=_TinyDetectNet)
    model = AdversarialDetector(spec, _TinyDetectNet())
    gen = torch.Generator().manual_seed(5)
    pgd_res = run_attack("pgd", g, _images(48, True, gen), iters=20)
    attacked = pgd_res.x_adv[pgd_res.success]
    crops = torch.cat([_images(48, False, gen), attacked])
    maps, _ = saliency_map(g, crops, create_graph=False)
    y = torch.cat([torch.zeros(48), torch.ones(attacked.shape[0])]).long()
    _fit(model, lambda: F.cross_entropy(model(crops, maps), y, label_smoothing=0.1), steps=60)
    return model.eval()


def _p_real(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).softmax(dim=1)[:, 0]


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        raise RuntimeError("gradient requested from a black-box model")


class ScoresOnly(nn.Module):
    """The detector as a scores-only oracle: any backward through it raises."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_mode_at_call: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.grad_mode_at_call.append(torch.is_grad_enabled())
        return self.model(_NoBackward.apply(x))


def test_loss_direction_and_projection() -> None:
    logits = torch.tensor([[2.0, -1.0], [-1.0, 2.0]])  # called real, called fake
    assert margin(logits).tolist() == [3.0, -3.0]
    assert margin_loss(logits).tolist() == [0.0, 3.0]  # zero once real wins
    assert margin_loss(logits, kappa=4.0).tolist() == [1.0, 7.0]
    assert ce_loss(logits)[0] < ce_loss(logits)[1]
    x = torch.full((1, 3, 4, 4), 0.99)
    p = project_linf(x + torch.randn_like(x), x, EPS)
    assert (p - x).abs().max() <= EPS + 1e-6 and p.max() <= 1.0


def test_schedules_follow_the_papers() -> None:
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    schedule = [square_p(0.8, it, 10000) for it in (0, 10, 11, 51, 8001)]
    assert schedule == [0.8, 0.8, 0.4, 0.2, 0.8 / 512]
    assert square_p(0.8, 20, 5000) == 0.4  # budget-rescaled: it 20 of 5000 ≡ 40 of 10000


def test_registry() -> None:
    assert {"pgd", "fgsm", "apgd", "nes", "square", "adaptive_eq3", "adaptive_eq4"} <= set(ATTACKS)
    assert {"nes", "square"} == BLACK_BOX
    with pytest.raises(KeyError, match="available"):
        get_attack("cw")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_attack_respects_ball_and_moves_toward_real(name: str, g: Detector, fakes: Tensor) -> None:
    res = run_attack(name, g, fakes, **SMALL[name])
    assert isinstance(res, AttackResult) and res.x_adv.shape == fakes.shape
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.max_linf <= EPS + 1e-6
    gain = float(_p_real(g, res.x_adv).mean() - _p_real(g, fakes).mean())
    assert gain > (0.0 if name in BLACK_BOX else 0.1)
    assert torch.equal(res.success, margin(g(res.x_adv)).detach() > 0)
    summary = res.summary()
    assert summary["n"] == fakes.shape[0] and summary["max_linf"] <= EPS + 1e-6
    assert summary["mean_queries"] is not None and summary["mean_queries"] >= 1
    if name not in BLACK_BOX:
        assert res.success_rate > 0


def test_black_box_attacks_use_scores_only(g: Detector, fakes: Tensor) -> None:
    for name in sorted(BLACK_BOX):
        oracle = ScoresOnly(g)
        res = run_attack(name, oracle, fakes[:4], **SMALL[name])
        assert res.max_linf <= EPS + 1e-6
        assert oracle.grad_mode_at_call and not any(oracle.grad_mode_at_call)
    with pytest.raises(RuntimeError, match="black-box"):
        run_attack("pgd", ScoresOnly(g), fakes[:4], iters=2)


class Brightness(nn.Module):
    """A low-frequency 'detector': fake iff the mean intensity is above 0.5 (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        z = 20.0 * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-z, z], dim=1)


@pytest.mark.parametrize("name", sorted(BLACK_BOX))
def test_black_box_attacks_succeed_on_an_easy_model(name: str) -> None:
    # 8×8 keeps NES's 10-pair gradient estimate informative (its quality falls with dimension).
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True) + 0.51).clamp(0, 1)
    assert (margin(Brightness()(x)) < 0).all()  # all called fake (mean ≈ 0.51)
    res = run_attack(name, Brightness(), x, **SMALL[name])
    assert res.success_rate > 0.5 and res.max_linf <= EPS + 1e-6


@pytest.mark.parametrize("name", sorted(BLACK_BOX))
def test_black_box_determinism(name: str, g: Detector, fakes: Tensor) -> None:
    kw = {"nes": {"iters": 4, "restarts": 1, "n_pairs": 5}, "square": {"max_queries": 60}}[name]
    kw = {**kw, "seed": 7}
    a, b = run_attack(name, g, fakes[:4], **kw), run_attack(name, g, fakes[:4], **kw)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    c = run_attack(name, g, fakes[:4], **{**kw, "seed": 8})
    assert not torch.equal(a.x_adv, c.x_adv)


def test_early_stop_and_query_counts(g: Detector, fakes: Tensor) -> None:
    reals = _images(8, False, torch.Generator().manual_seed(2))
    reals = reals[margin(g(reals)).detach() > 0]
    assert reals.shape[0] > 0
    for name, kw in SMALL.items():  # already real: one evaluation, returned untouched
        res = run_attack(name, g, reals, **kw)
        assert torch.equal(res.x_adv, reals) and res.queries.tolist() == [1] * reals.shape[0]
    sq = run_attack("square", g, fakes, max_queries=300)
    assert int(sq.queries.max()) <= 300
    assert (sq.queries[sq.success] < 300).all()  # successful samples stopped spending queries
    nes_res = run_attack("nes", g, fakes[:4], iters=3, restarts=2, n_pairs=5)
    assert int(nes_res.queries.max()) <= 1 + 2 * 3 * (2 * 5 + 1)


def test_pgd_options(g: Detector, fakes: Tensor) -> None:
    with torch.no_grad():  # white-box attacks re-enable autograd for themselves
        ce = run_attack("pgd", g, fakes, iters=20, loss="ce", random_start=True, seed=3)
    assert ce.success_rate > 0 and ce.max_linf <= EPS + 1e-6
    kappa = 1.0
    res = run_attack("pgd", g, fakes, iters=20, kappa=kappa)
    stopped = res.queries <= 20  # stopped before the last evaluation: margin beat kappa
    assert stopped.any()
    assert (margin(g(res.x_adv[stopped])) > kappa).all()
    with pytest.raises(ValueError, match="loss"):
        run_attack("pgd", g, fakes, iters=1, loss="hinge")


def test_nes_result_does_not_depend_on_chunking(g: Detector, fakes: Tensor) -> None:
    kw = {"iters": 3, "restarts": 1, "n_pairs": 4, "seed": 1}
    whole = run_attack("nes", g, fakes[:3], **kw)
    chunked = run_attack("nes", g, fakes[:3], max_batch=5, **kw)
    assert torch.allclose(whole.x_adv, chunked.x_adv, atol=1e-6)


def test_fgsm_default_step_is_eps_and_chunking_matches(g: Detector, fakes: Tensor) -> None:
    res = get_attack("fgsm")(g, fakes)
    assert res.max_linf == pytest.approx(EPS, abs=1e-6)
    small = run_attack("fgsm", g, fakes, step=1 / 255)  # the paper code's step
    assert small.max_linf == pytest.approx(1 / 255, abs=1e-6)
    chunked = run_attack("fgsm", g, fakes, batch_size=5)
    assert torch.allclose(chunked.x_adv, res.x_adv, atol=1e-6)


def test_attacks_restore_model_state(g: Detector, fakes: Tensor) -> None:
    g.train()
    try:
        run_attack("apgd", g, fakes[:2], iters=3, restarts=1)
        assert g.training and all(p.requires_grad for p in g.parameters())
    finally:
        g.eval()


def test_differentiable_map_matches_serving_rule(g: Detector, fakes: Tensor) -> None:
    attr = torch.randn(3, 3, 16, 16)
    attr[2] = 0.0
    assert torch.allclose(differentiable_map(attr), attribution_to_map(attr), atol=1e-6)
    ours, _ = saliency_map(g, fakes[:4], create_graph=False)
    served = Explainer(g, "saliency").maps(fakes[:4])
    assert torch.allclose(ours, served, atol=1e-5)


def test_map_gradient_vanishes_on_relu_nets_unless_smoothed(g: Detector, fakes: Tensor) -> None:
    x = fakes[:2].clone().requires_grad_(True)
    xai, _ = saliency_map(g, x)
    (grad,) = torch.autograd.grad(xai.sum(), x, allow_unused=True)
    assert grad is None or grad.abs().max() == 0  # piecewise-linear g: no second-order signal
    x = fakes[:2].clone().requires_grad_(True)
    xai, _ = saliency_map(g, x, softplus_beta=10.0)
    (grad,) = torch.autograd.grad(xai.sum(), x)
    assert grad.abs().max() > 0
    assert all(isinstance(m, nn.ReLU) for m in (g.net[1], g.net[3]))  # restored


def _eq3_loss(g: Detector, d: AdversarialDetector, x: Tensor) -> Tensor:
    xai, logits = saliency_map(g, x, create_graph=False)
    with torch.no_grad():
        return ce_loss(logits) + ce_loss(d(x, xai))


def test_adaptive_eq3(g: Detector, d: AdversarialDetector, fakes: Tensor) -> None:
    x = fakes[:12]
    pgd_res = run_attack("pgd", g, x, iters=15)
    pgd_maps, _ = saliency_map(g, pgd_res.x_adv, create_graph=False)
    with torch.no_grad():
        pgd_clean = float((margin(d(pgd_res.x_adv, pgd_maps)) > 0).float().mean())
    assert pgd_res.success_rate > 0.5 and pgd_clean < 0.3  # d catches plain PGD
    # ReLU g: d is only reachable through its crop input unless the map is smoothed.
    res = run_attack("adaptive_eq3", g, x, detector=d, iters=15, softplus_beta=10.0)
    assert res.max_linf <= EPS + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert _eq3_loss(g, d, res.x_adv).mean() < _eq3_loss(g, d, x).mean()
    assert torch.equal(res.success, res.info["g_real"] & res.info["d_clean"])
    assert res.success_rate > 0 and res.summary()["d_clean_rate"] > pgd_clean


def _eq4_loss(g: Detector, x: Tensor, x_adv: Tensor, lam: float) -> Tensor:
    ref, _ = saliency_map(g, x, create_graph=False)
    xai, logits = saliency_map(g, x_adv, create_graph=False)
    return ce_loss(logits) + lam * torch.linalg.vector_norm((xai - ref).flatten(1), dim=1)


def test_adaptive_eq4(g: Detector, d: AdversarialDetector, fakes: Tensor) -> None:
    x = fakes[:6]
    # The map term needs the softplus surrogate: g is a ReLU net (see the test above).
    res = run_attack("adaptive_eq4", g, x, detector=d, iters=15, lam=0.1, softplus_beta=10.0)
    assert res.max_linf <= EPS + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert _eq4_loss(g, x, res.x_adv, 0.1).mean() < _eq4_loss(g, x, x, 0.1).mean()
    assert torch.equal(res.success, res.info["g_real"]) and "d_clean" in res.info
    # λ = 0 leaves plain BCE-PGD on g; the XAI term is what keeps the map close.
    plain = run_attack("adaptive_eq4", g, x, iters=15, lam=0.0)
    assert plain.success_rate > 0 and "d_clean" not in plain.info
    assert res.info["map_l2"].mean() < plain.info["map_l2"].mean()
