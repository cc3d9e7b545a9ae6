"""Settings of ``dfshield protect`` (environment ``DFSHIELD_PROTECT_<NAME>``).

Kept apart from ``app.config.Settings`` so that the active-defence knobs live with the code
that reads them; everything the service shares (models dir, upload and image limits, face
detection) still comes from ``app.config``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProtectSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DFSHIELD_PROTECT_", env_file=".env",
                                      extra="ignore")

    mode: Literal["interrupt", "tsdf"] = Field("tsdf", description="default protection mode")
    eps: float = Field(0.025, gt=0, le=0.1, description="L-inf budget on [0,1] (6.4/255)")
    eps_max: float = Field(0.05, gt=0, le=0.2, description="largest eps a caller may ask for")
    steps: int = Field(100, ge=1, le=500, description="PGD steps of stage 1")
    poison_steps: int = Field(100, ge=1, le=500, description="PGD steps of stage 2 (tsdf)")
    eot_samples: int = Field(1, ge=1, le=16, description="random views per face and step")
    interruption_share: float = Field(
        0.5, gt=0, le=1, description="tsdf: stage 1's share of eps (the rest hosts the poison)")
    purifier_eot: bool = Field(
        False, description="stage 1 also optimises through the learned denoiser (role "
        "purifier; `dfshield train denoiser`) on half its views; about doubles stage 1's time")
    hf_weight: float = Field(
        0.0, ge=0, le=10, description="with purifier_eot: weight of the patch-wise "
        "high-frequency guidance on the perturbation surviving the denoiser (AntiPure)")
    feature_weight: float = Field(
        0.1, ge=0, le=10, description="stage 1: weight of TSDF's feature term (the generator's "
        "internal code) beside the output MSE")
    deadline_s: float = Field(60.0, gt=0, description="POST /v1/protect: optimisation deadline")
    max_pixels: int = Field(12_000_000, ge=256, description="largest photo /v1/protect takes")
    max_faces: int = Field(8, ge=1, description="faces protected per photo, largest first")
    concurrency: int = Field(1, ge=1, description="protections running at once in the API")


@lru_cache(maxsize=1)
def get_protect_settings() -> ProtectSettings:
    return ProtectSettings()
