"""timm-style registry: ``create_model(name)`` for detectors (g) and adversarial detectors (d).

Each entry carries its preprocessing so that weights, serving and training agree on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

# "backbone": a pretrained trunk that g and d start from; never served as g or d itself.
# "generator": a face-manipulation model that `dfshield protect` defends against (app.protect).
# "purifier": the attacker's learned denoiser that protection must survive (app.protect).
Role = Literal["detector", "adversarial", "backbone", "generator", "purifier"]
IMAGE_TO_IMAGE: tuple[Role, ...] = ("generator", "purifier")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a [0,1] RGB crop becomes the tensor the network sees."""

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, ...] = ("real", "fake")  # () for a backbone (no classes)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    role: Role
    preprocess: Preprocess
    build: Callable[..., nn.Module] = field(repr=False)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, role: Role, preprocess: Preprocess, description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder returning the *raw* network (normalised input → 2 logits)."""

    def deco(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, role, preprocess, build, description)
        return build

    return deco


def _ensure_loaded() -> None:
    # Importing the architecture modules runs their @register_model decorators.
    from app.models import adversarial, detectors, face_resnet  # noqa: F401
    from app.protect import denoiser, generators  # noqa: F401


def get_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown model {name!r}; registered models: {known}") from None


def list_models(role: Role | None = None) -> list[str]:
    """Registered names of ``role``; with no role, every network that scores or embeds a crop.
    Generators and purifiers (image in, image out) are listed only when asked for by role."""
    _ensure_loaded()
    return sorted(n for n, s in _REGISTRY.items()
                  if s.role == role or (role is None and s.role not in IMAGE_TO_IMAGE))


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a wrapped model (resize + normalise inside), random init, eval mode, on CPU."""
    from app.models.wrappers import AdversarialDetector, Detector, Embedder
    from app.protect.denoiser import Denoiser
    from app.protect.generators import FaceGenerator

    spec = get_spec(name)
    net = spec.build(**kwargs)
    wrapper_cls = {"detector": Detector, "adversarial": AdversarialDetector,
                   "backbone": Embedder, "generator": FaceGenerator,
                   "purifier": Denoiser}[spec.role]
    return wrapper_cls(spec, net).eval()
