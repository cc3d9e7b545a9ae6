"""Attacks from an independent library (torchattacks), for evaluation only.

d is trained on our own PGD; whether it generalises is only convincing against attack code we
did not write. This module runs torchattacks' PGD, MIFGSM, APGD and Square against a dfshield
g (a wrapped detector: [0,1] crops in, logits [real, fake] out) *toward "real"* and returns the
same :class:`AttackResult` as the in-house suite, so evaluation code can mix both.

torchattacks lives in the ``eval`` dependency group and is imported inside the functions, so
nothing in serving (``app.api``, ``app.worker``, ``app.pipeline``, ``app.models``,
``app.service``) can pull it in (a test blocks the import and loads those packages).

Targeting. PGD, MIFGSM and Square run in torchattacks' targeted mode with target label 0
(real). torchattacks' APGD has no targeted mode (its APGDT uses a targeted DLR loss that needs
at least 4 classes), so APGD runs *untargeted away from label 1 (fake)*: with two classes,
raising the cross-entropy of "fake" is exactly pushing toward "real".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from app.training.attacks.base import (
    DEFAULT_EPS,
    DEFAULT_STEP,
    FAKE,
    REAL,
    AttackResult,
    check_input,
    frozen,
    make_result,
    scores,
)

INSTALL_HINT = "install the evaluation group: `uv sync --group eval` (torchattacks)"


class TorchattacksMissing(ImportError):
    """torchattacks is not installed (it is an evaluation-only dependency)."""


def _torchattacks() -> ModuleType:
    # Lazy on purpose: importing this module must not need (or load) torchattacks.
    try:
        import torchattacks
    except ImportError as exc:
        raise TorchattacksMissing(f"the independent attacks need torchattacks; {INSTALL_HINT}"
                                  ) from exc
    return torchattacks


def _pgd(ta: ModuleType, model: nn.Module, eps: float, steps: int = 100,
         alpha: float = DEFAULT_STEP) -> Any:
    # The paper's PGD budget (100 steps of 1/255) with Madry's uniform random start.
    return ta.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)


def _mifgsm(ta: ModuleType, model: nn.Module, eps: float, steps: int = 10,
            alpha: float | None = None, decay: float = 1.0) -> Any:
    # Dong et al.'s schedule: T steps of eps / T, momentum decay 1.
    return ta.MIFGSM(model, eps=eps, alpha=alpha if alpha is not None else eps / steps,
                     steps=steps, decay=decay)


def _apgd(ta: ModuleType, model: nn.Module, eps: float, steps: int = 100,
          n_restarts: int = 5, seed: int = 0) -> Any:
    # loss='ce' only: torchattacks' DLR loss divides by the 3rd-largest logit (needs >= 3).
    return ta.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=n_restarts,
                   seed=seed, loss="ce")


def _square(ta: ModuleType, model: nn.Module, eps: float, n_queries: int = 5000,
            p_init: float = 0.8, n_restarts: int = 1, seed: int = 0) -> Any:
    return ta.Square(model, norm="Linf", eps=eps, n_queries=n_queries, p_init=p_init,
                     n_restarts=n_restarts, loss="margin", seed=seed)


Factory = Callable[..., Any]
# name -> (builder, runs targeted toward REAL; False = untargeted away from FAKE)
INDEPENDENT_ATTACKS: dict[str, tuple[Factory, bool]] = {
    "ta_pgd": (_pgd, True),
    "ta_mifgsm": (_mifgsm, True),
    "ta_apgd": (_apgd, False),
    "ta_square": (_square, True),
}
SEEDED = frozenset({"ta_apgd", "ta_square"})  # take a ``seed`` of their own


@contextmanager
def _private_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG for the attack, then give the caller its own state back.

    torchattacks draws random starts from (and APGD/Square reseed) the global generator;
    forking keeps evaluation runs reproducible without disturbing anyone else's stream.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def run_independent(
    name: str, model: nn.Module, x: Tensor, eps: float = DEFAULT_EPS, seed: int = 0,
    **params: Any,
) -> AttackResult:
    """torchattacks' ``name`` on crops ``x`` ([B,3,H,W] in [0,1]) toward "real".

    ``params`` override the attack's budget (``steps``, ``alpha``, ``n_restarts``,
    ``n_queries``, ...). ``success``: g's argmax is real on the returned point; ``linf``:
    per-sample L∞ distance; ``info["p_real"]``: g's softmax of "real" there.
    """
    if name not in INDEPENDENT_ATTACKS:
        raise KeyError(f"unknown independent attack {name!r}; available: "
                       f"{', '.join(INDEPENDENT_ATTACKS)}")
    ta = _torchattacks()
    x = check_input(x, eps)
    build, targeted = INDEPENDENT_ATTACKS[name]
    if name in SEEDED:
        params.setdefault("seed", seed)
    with frozen(model), _private_rng(seed, x.device):
        attack = build(ta, model, eps, **params)
        if targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        labels = torch.full((x.shape[0],), REAL if targeted else FAKE, dtype=torch.long,
                            device=x.device)
        x_adv = attack(x, labels).detach().to(x.device)
    p_real = scores(model, x_adv).softmax(dim=1)[:, REAL]
    return make_result(model, x, x_adv, None, info={"p_real": p_real})


def run_all_independent(
    model: nn.Module, x: Tensor, eps: float = DEFAULT_EPS, seed: int = 0,
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, AttackResult]:
    """Every independent attack on the same crops; ``params[name]`` overrides its budget."""
    params = params or {}
    return {name: run_independent(name, model, x, eps, seed, **params.get(name, {}))
            for name in INDEPENDENT_ATTACKS}
