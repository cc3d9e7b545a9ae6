"""In-house batched-torch attack suite: every attack pushes g toward "real" inside a norm ball.

``run_attack("pgd", g, x)`` or ``get_attack("square", max_queries=300)(g, x)``; every attack
returns an :class:`AttackResult` (success, L∞ and L2 distances, the ball's norm and radius).
All are L∞ (eps 16/255) except ``ddn`` (L2, ``eps_l2``). The paper trains d on PGD alone
(``--train-attacks pgd``); the served d trains on a mix of them (``attack_mix.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import Tensor, nn

from app.training.attacks.adaptive import adaptive_eq3, adaptive_eq4
from app.training.attacks.apgd import apgd
from app.training.attacks.base import AttackResult, dlr_loss, margin, margin_loss
from app.training.attacks.ddn import ddn
from app.training.attacks.eot import eot_pgd
from app.training.attacks.fgsm import fgsm
from app.training.attacks.mifgsm import mifgsm
from app.training.attacks.nes import nes
from app.training.attacks.pgd import pgd
from app.training.attacks.square import square

Attack = Callable[..., AttackResult]

ATTACKS: dict[str, Attack] = {
    "pgd": pgd,
    # Madry's uniform random start: the default of the common attack libraries.
    "pgd_rs": partial(pgd, random_start=True),
    "fgsm": fgsm,
    "mifgsm": mifgsm,
    "apgd": apgd,
    "ddn": ddn,
    "eot_pgd": eot_pgd,
    "nes": nes,
    "square": square,
    "adaptive_eq3": adaptive_eq3,
    "adaptive_eq4": adaptive_eq4,
}
# Score-only attacks: they never call autograd on the model.
BLACK_BOX: frozenset[str] = frozenset({"nes", "square"})


def get_attack(name: str, **overrides: Any) -> Attack:
    """The attack ``name`` as ``f(model, x, **kw)``; ``overrides`` replace its defaults."""
    try:
        fn = ATTACKS[name]
    except KeyError:
        raise KeyError(f"unknown attack {name!r}; available: {', '.join(ATTACKS)}") from None
    return partial(fn, **overrides) if overrides else fn


def run_attack(
    name: str, model: nn.Module, x: Tensor, batch_size: int | None = None, **kwargs: Any
) -> AttackResult:
    """Run ``name`` on x, in chunks of ``batch_size`` (each chunk uses the same seed).

    The adaptive attacks need the adversarial detector: ``detector=d``.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    attack = get_attack(name, **kwargs)
    if batch_size is None or x.shape[0] <= batch_size:
        return attack(model, x)
    return AttackResult.cat([attack(model, chunk) for chunk in x.split(batch_size)])


__all__ = [
    "ATTACKS",
    "BLACK_BOX",
    "AttackResult",
    "adaptive_eq3",
    "adaptive_eq4",
    "apgd",
    "ddn",
    "dlr_loss",
    "eot_pgd",
    "fgsm",
    "get_attack",
    "margin",
    "margin_loss",
    "mifgsm",
    "nes",
    "pgd",
    "run_attack",
    "square",
]
