"""The attack-variety additions (issue 16): PGD restarts, MI-FGSM, DLR loss, DDN (L2), EOT-PGD.

Same tiny detector as test_attacks.py (fake = faint checkerboard, real = smooth), trained here.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from app.models.registry import ModelSpec, Preprocess
from app.models.wrappers import Detector
from app.training.attacks import ATTACKS, BLACK_BOX, AttackResult, run_attack
from app.training.attacks.base import attack_loss, dlr_loss, l2, margin, margin_loss
from app.training.attacks.eot import _UploadPath, jpeg_round_trip
from tests.training.test_attacks import SIZE, _fit, _images, _p_real, _tiny_cnn

EPS = 16 / 255
EPS_L2 = 3.0  # on 32 px crops: an RMS change of ≈ 14/255 per value
NEW = {  # small budgets: the whole file runs in seconds on one CPU thread
    "pgd_rs": {"iters": 20},
    "mifgsm": {},
    "ddn": {"iters": 40, "eps_l2": EPS_L2},
    "eot_pgd": {"iters": 30, "samples": 4},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
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
    _fit(model, lambda: F.cross_entropy(model(x), y, label_smoothing=0.1), steps=60)
    return model.eval()


@pytest.fixture(scope="module")
def fakes(g: Detector) -> Tensor:
    """Held-out fakes g calls fake, on the uint8 grid (as crops read from PNG are)."""
    x = torch.round(_images(24, True, torch.Generator().manual_seed(1)) * 255) / 255
    with torch.no_grad():
        x = x[margin(g(x)) < 0]
    assert x.shape[0] >= 16
    return x


def test_registry_has_the_new_attacks() -> None:
    assert {"pgd_rs", "mifgsm", "ddn", "eot_pgd"} <= set(ATTACKS)
    assert {"nes", "square"} == BLACK_BOX
    # attack_set reads defaults from signatures: pgd_rs must show its random start there.
    assert inspect.signature(ATTACKS["pgd_rs"]).parameters["random_start"].default is True
    assert "max_queries" in inspect.signature(ATTACKS["nes"]).parameters
    assert "max_queries" in inspect.signature(ATTACKS["square"]).parameters


@pytest.mark.parametrize("name", sorted(NEW))
def test_new_attack_respects_its_ball_and_moves_toward_real(
    name: str, g: Detector, fakes: Tensor
) -> None:
    res = run_attack(name, g, fakes, **NEW[name])
    assert isinstance(res, AttackResult) and res.x_adv.shape == fakes.shape
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    if name == "ddn":
        assert res.norm == "l2" and res.eps == EPS_L2 and res.max_l2 <= EPS_L2 + 1e-4
    else:
        assert res.norm == "linf" and res.eps == pytest.approx(EPS) and res.max_linf <= EPS + 1e-6
    assert torch.allclose(res.l2, l2(res.x_adv, fakes))
    with torch.no_grad():
        before, after = margin_loss(g(fakes)).mean(), margin_loss(g(res.x_adv)).mean()
    assert after < before
    assert float(_p_real(g, res.x_adv).mean() - _p_real(g, fakes).mean()) > 0.1
    assert torch.equal(res.success, margin(g(res.x_adv)).detach() > 0)
    assert res.success_rate > 0.5
    summary = res.summary()
    assert summary["norm"] == res.norm and summary["max_l2"] == pytest.approx(res.max_l2)
    assert summary["mean_queries"] is not None and summary["mean_queries"] >= 1


def test_every_result_reports_l2_and_its_ball(g: Detector, fakes: Tensor) -> None:
    res = run_attack("fgsm", g, fakes)
    assert res.l2 is not None and res.mean_l2 is not None and res.mean_l2 > 0
    assert res.summary()["eps"] == pytest.approx(EPS) and res.summary()["norm"] == "linf"
    assert "mean_linf" in res.summary()  # the L∞ fields callers use are still there
    chunked = run_attack("ddn", g, fakes[:6], batch_size=4, iters=5)
    assert chunked.l2 is not None and chunked.l2.shape == (6,) and chunked.norm == "l2"
    with pytest.raises(ValueError, match="L2"):
        AttackResult.cat([res, chunked])
    mixed = AttackResult.cat([res, run_attack("fgsm", g, fakes, eps=8 / 255)])
    assert mixed.norm == "linf" and mixed.eps is None  # radii differ: no single bound


def test_pgd_restarts_never_lose_and_only_rerun_failures(g: Detector, fakes: Tensor) -> None:
    kw = {"iters": 12, "random_start": True, "seed": 0}  # a budget where restarts matter
    one = run_attack("pgd", g, fakes, **kw)
    four = run_attack("pgd", g, fakes, restarts=4, **kw)
    assert four.success_rate >= one.success_rate and four.max_linf <= EPS + 1e-6
    # Restart 0 is the same run; samples it fooled are not attacked again.
    assert torch.equal(four.x_adv[one.success], one.x_adv[one.success])
    assert (four.queries[one.success] == one.queries[one.success]).all()
    assert (four.queries[~one.success] > one.queries[~one.success]).all()
    assert int(four.queries.max()) <= 4 * (12 + 1)
    # Without random_start, restart 0 is eq. 2 from the clean crop: restarts=1 is plain pgd.
    plain = run_attack("pgd", g, fakes, iters=10)
    assert torch.equal(plain.x_adv, run_attack("pgd", g, fakes, iters=10, restarts=1).x_adv)
    with pytest.raises(ValueError, match="restarts"):
        run_attack("pgd", g, fakes, restarts=0)


def test_dlr_loss_sign_scale_invariance_and_gradient() -> None:
    logits = torch.tensor([[2.0, -1.0], [-1.0, 2.0]])  # called real, called fake
    assert dlr_loss(logits).tolist() == pytest.approx([-1.0, 1.0])  # < 0 once real wins
    assert torch.allclose(dlr_loss(7.0 * logits), dlr_loss(logits))
    assert torch.allclose(attack_loss(logits, "dlr"), dlr_loss(logits))
    # [-z, z] logits (EfficientNetB4ST): the live ratio −m/(|Z_r|+|Z_f|) would be sign(z), with
    # no gradient; scaled by the clean logits the loss keeps the margin's gradient.
    z = torch.tensor([1.5, -0.5], requires_grad=True)
    clean = torch.stack([-z, z], dim=1).detach()
    (grad,) = torch.autograd.grad(dlr_loss(torch.stack([-z, z], dim=1), clean).sum(), z)
    assert (grad > 0).all()  # raising the fake logit raises the loss
    assert dlr_loss(clean, clean)[0] == pytest.approx(1.0)  # a clean fake starts at 1


@pytest.mark.parametrize(
    ("name", "kw"),
    [("pgd", {"iters": 20}), ("apgd", {"iters": 20, "restarts": 1}), ("mifgsm", {})],
)
def test_dlr_loss_drives_the_white_box_attacks(
    name: str, kw: dict[str, int], g: Detector, fakes: Tensor
) -> None:
    res = run_attack(name, g, fakes, loss="dlr", **kw)
    assert res.success_rate > 0.5 and res.max_linf <= EPS + 1e-6
    with torch.no_grad():
        assert float(dlr_loss(g(res.x_adv), g(fakes)).mean()) < float(dlr_loss(g(fakes)).mean())


def test_nes_caps_total_queries(g: Detector, fakes: Tensor) -> None:
    kw = {"iters": 10, "restarts": 2, "n_pairs": 5}
    capped = run_attack("nes", g, fakes[:4], max_queries=40, **kw)
    assert int(capped.queries.max()) <= 40 and capped.max_linf <= EPS + 1e-6
    free = run_attack("nes", g, fakes[:4], iters=3, restarts=1, n_pairs=5)  # default: no cap
    assert int(free.queries.max()) == 1 + 3 * 11
    dlr = run_attack("nes", g, fakes[:4], loss="dlr", iters=3, restarts=1, n_pairs=5)
    assert dlr.max_linf <= EPS + 1e-6


def test_mifgsm_defaults(g: Detector, fakes: Tensor) -> None:
    params = inspect.signature(ATTACKS["mifgsm"]).parameters
    assert params["mu"].default == 1.0 and params["iters"].default == 10
    res = run_attack("mifgsm", g, fakes)
    assert int(res.queries.max()) <= 10 + 1  # early stop: 10 steps and one last evaluation
    assert res.max_linf <= EPS + 1e-6


def test_ddn_finds_small_norms_and_leaves_reals_alone(g: Detector, fakes: Tensor) -> None:
    res = run_attack("ddn", g, fakes, **NEW["ddn"])
    won = res.success
    assert won.any() and (res.l2[won] < EPS_L2).all()  # DDN shrinks the norm after success
    tight = run_attack("ddn", g, fakes, iters=40, eps_l2=1.0)
    assert tight.max_l2 <= 1.0 + 1e-4
    reals = _images(8, False, torch.Generator().manual_seed(2))
    reals = reals[margin(g(reals)).detach() > 0]
    kept = run_attack("ddn", g, reals, iters=5)
    assert torch.equal(kept.x_adv, reals) and kept.queries.tolist() == [1] * reals.shape[0]


def test_quantized_ddn_lands_on_the_uint8_grid_inside_its_ball(g: Detector, fakes: Tensor) -> None:
    res = run_attack("ddn", g, fakes, iters=30, eps_l2=2.0, quantize=True)
    grid = res.x_adv * 255
    assert torch.allclose(grid, grid.round(), atol=1e-4)  # an upload keeps it exactly
    assert res.max_l2 <= 2.0 + 1e-4 and res.success.any()


def test_upload_path_jpeg_is_straight_through() -> None:
    path = _UploadPath((90, 90), (1.0, 1.0), 0.0, 0.5, torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    y = path.jpeg(x)
    assert torch.allclose(y, jpeg_round_trip(x, [90, 90]))  # forward: the real codec
    (grad,) = torch.autograd.grad((y * 3).sum(), x)
    assert torch.allclose(grad, torch.full_like(x, 3.0))  # backward: identity
    assert torch.equal(path(x), y)  # scale 1 and no shift leave only the JPEG


def test_upload_path_shift_and_resize_keep_shape_and_gradient() -> None:
    path = _UploadPath((75, 95), (0.9, 1.1), 0.1, 1.0, torch.Generator().manual_seed(0))
    x = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    shifted = path.shift(x)
    assert shifted.shape == x.shape
    moved = [not torch.equal(shifted[i], x[i]) for i in range(6)]
    assert any(moved)
    (grad,) = torch.autograd.grad(path.resize(x).sum(), x)
    assert grad.abs().sum() > 0


def test_eot_survives_jpeg90(g: Detector, fakes: Tensor) -> None:
    res = run_attack("eot_pgd", g, fakes, iters=30, samples=8)
    survives = res.info["survives_jpeg90"]
    again = margin(g(jpeg_round_trip(res.x_adv, [90] * fakes.shape[0]))).detach() > 0
    assert torch.equal(survives, again)
    grid = res.x_adv * 255
    assert (grid - grid.round()).abs().max() < 1e-3  # on the uint8 grid (up to float error)
    assert res.success_rate > 0.5
    assert float((survives & res.success).float().sum() / res.success.sum()) >= 0.75
    assert res.summary()["survives_jpeg90_rate"] == pytest.approx(float(survives.float().mean()))
