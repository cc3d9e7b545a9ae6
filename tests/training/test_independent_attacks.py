"""torchattacks' PGD, MIFGSM, APGD and Square against a tiny g trained here, and the promise
that serving never imports torchattacks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.config import REPO_ROOT
from app.models.registry import ModelSpec, Preprocess
from app.models.wrappers import Detector
from app.training.attacks.base import AttackResult, margin
from app.training.independent import (
    INDEPENDENT_ATTACKS,
    TorchattacksMissing,
    run_all_independent,
    run_independent,
)

pytest.importorskip("torchattacks", reason="evaluation group not installed: uv sync --group eval")

EPS = 16 / 255
SIZE = 24
SMALL = {  # budgets that run in about a second each on one CPU thread
    "ta_pgd": {"steps": 20},
    "ta_mifgsm": {"steps": 10},
    "ta_apgd": {"steps": 20, "n_restarts": 1},
    "ta_square": {"n_queries": 300},
}


def _faces(n: int, fake: bool, gen: torch.Generator) -> Tensor:
    """Smooth grey fields; "fakes" carry a faint red cast (a colour-blending artefact).

    A low-frequency artefact on purpose: Square's big early squares can cancel it, so every
    library attack, the black-box one included, gets through on a small budget.
    """
    low = torch.rand(n, 1, 3, 3, generator=gen).expand(n, 3, 3, 3)
    x = 0.2 + 0.6 * F.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    if fake:
        cast = 0.04 + 0.04 * torch.rand(n, 1, 1, 1, generator=gen)
        x = x + cast * torch.tensor([1.0, -0.5, -0.5]).view(1, 3, 1, 1)
    return x.clamp(0, 1)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def train_tiny_g() -> Detector:
    """A tiny g: right on the stripes, yet not so sure that small budgets cannot move it."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([_faces(80, False, gen), _faces(80, True, gen)])
    y = torch.cat([torch.zeros(80), torch.ones(80)]).long()
    model = Detector(ModelSpec("tiny_ta", "detector", Preprocess(SIZE), build=_net), _net())
    velocity = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(80):  # plain momentum SGD: torch.optim's first step imports torch._dynamo
        model.zero_grad()
        F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
        with torch.no_grad():
            for p, v in zip(model.parameters(), velocity, strict=True):
                p.sub_(0.05 * v.mul_(0.9).add_(p.grad))
    return model.eval()


@pytest.fixture(scope="module")
def g() -> Detector:
    return train_tiny_g()


@pytest.fixture(scope="module")
def fakes(g: Detector) -> Tensor:
    x = _faces(16, True, torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = x[margin(g(x)) < 0]  # the fakes g gets right
    assert x.shape[0] >= 8
    return x


def _p_real(g: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return g(x).softmax(dim=1)[:, 0]


@pytest.mark.parametrize("name", sorted(INDEPENDENT_ATTACKS))
def test_attack_respects_eps_and_raises_p_real(name: str, g: Detector, fakes: Tensor) -> None:
    before = torch.get_rng_state()
    res = run_independent(name, g, fakes, eps=EPS, **SMALL[name])
    assert torch.equal(torch.get_rng_state(), before), "the caller's RNG stream is untouched"
    assert isinstance(res, AttackResult) and res.x_adv.shape == fakes.shape
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.max_linf <= EPS + 1e-6
    assert torch.allclose(res.linf, (res.x_adv - fakes).abs().flatten(1).amax(1))
    assert float(res.info["p_real"].mean()) > float(_p_real(g, fakes).mean()) + 0.05
    assert torch.equal(res.success, margin(g(res.x_adv)).detach() > 0)
    assert res.success_rate > 0  # a tiny g and eps 16/255: every library attack gets through
    assert not g.training and all(p.requires_grad for p in g.parameters())


def test_same_seed_same_result(g: Detector, fakes: Tensor) -> None:
    a = run_independent("ta_pgd", g, fakes, seed=3, steps=5)
    b = run_independent("ta_pgd", g, fakes, seed=3, steps=5)
    assert torch.equal(a.x_adv, b.x_adv)


def test_all_and_errors(g: Detector, fakes: Tensor) -> None:
    out = run_all_independent(g, fakes[:2], params=SMALL)
    assert set(out) == set(INDEPENDENT_ATTACKS)
    with pytest.raises(KeyError, match="available"):
        run_independent("ta_cw", g, fakes)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        run_independent("ta_pgd", g, fakes * 2)


_BLOCKED = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torchattacks" or name.startswith("torchattacks."):
                raise ImportError(f"{name} is blocked by the test")
            return None

    sys.meta_path.insert(0, Block())
    import app.api.main, app.worker.main, app.service, app.cli  # noqa: E401
    import app.training.independent as ind
    assert "torchattacks" not in sys.modules, "serving imported torchattacks"
    try:
        ind.run_independent("ta_pgd", None, None)
    except ind.TorchattacksMissing as exc:
        assert "uv sync --group eval" in str(exc), exc
    else:
        raise AssertionError("no error without torchattacks")
    print("ok")
""")


def test_serving_never_imports_torchattacks() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFSHIELD_")}
    out = subprocess.run([sys.executable, "-c", _BLOCKED], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, env={**env, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_missing_library_error_is_an_import_error() -> None:
    assert issubclass(TorchattacksMissing, ImportError)
