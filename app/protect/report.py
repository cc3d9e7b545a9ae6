"""The protection report: what was done, what it was measured against, and its limits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Mode = Literal["interrupt", "tsdf"]

CAVEATS = (
    "Measured only against the generators and face detectors named in measured_against, on "
    "this image as written (lossless PNG). A different face-manipulation model or face "
    "detector may not be affected at all.",
    "JPEG re-compression, heavy resizing, blurring or screenshots can weaken or remove the "
    "protection; keep and share the PNG as it is.",
    "This is not a guarantee that the photo cannot be manipulated; it raises the cost for the "
    "models it was tested on.",
)


class GeneratorEffect(BaseModel):
    name: str
    l2_mask: float = Field(description="output change over the edited region, [-1,1] scale")
    success: bool = Field(description="l2_mask > 0.05 (TSDF / disrupting-deepfakes rule)")


class FaceReport(BaseModel):
    box: tuple[float, float, float, float] = Field(description="MTCNN box on the original")
    crop_box: tuple[int, int, int, int] = Field(description="1.3x square crop, perturbed")
    generators: list[GeneratorEffect]
    mtcnn_found_after: bool = Field(description="MTCNN still finds it at IoU >= 0.7")
    mtcnn_prob_after: float | None
    haar_found_before: bool
    haar_found_after: bool = Field(description="the cascade still finds its own box at IoU >= 0.7")
    psnr_db: float = Field(description="PSNR of the crop region, protected vs original")
    ssim: float


class MeasuredAgainst(BaseModel):
    generators: list[str]
    face_detector: str = "facenet-pytorch MTCNN (white box, the project's detection settings)"
    transfer_check: str = ("OpenCV LBP frontal-face cascade via scikit-image (black box, never "
                           "optimised against; stands in for Haar, absent from opencv 5)")


class ProtectReport(BaseModel):
    mode: Mode
    eps: float = Field(description="L-inf budget on [0,1]")
    linf: float = Field(description="largest change actually written, on [0,1]")
    width: int
    height: int
    faces: list[FaceReport]
    psnr_db: float = Field(description="whole image, protected vs original")
    ssim: float
    steps: int
    steps_done: int
    deadline_hit: bool
    seconds: float
    measured_against: MeasuredAgainst
    caveats: list[str] = Field(default_factory=lambda: list(CAVEATS))
