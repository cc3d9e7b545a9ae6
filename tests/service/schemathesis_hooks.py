"""Schemathesis hooks for ``test_schemathesis.py`` (loaded by the CLI through its config file).

A schema-valid ``POST /v1/analyze`` body is almost never a valid *submission*: its ``file`` is
random bytes (415 ``unsupported_media``). So the stateful phase would rarely create an analysis,
and the links from ``analyze`` (analysis, frames, face images, delete) would lead nowhere. In the
stateful phase only, the file of a positive submission becomes the bundled portrait (one real
face); its other fields stay as generated. Coverage and fuzzing keep their bodies untouched.

The bytes are swapped inside schemathesis's ``Binary`` wrapper: replacing the field would make
schemathesis 4.32 re-validate the body, and a body carrying bytes never validates, so the case
would be relabelled negative (and its 202 reported as a wrongly accepted invalid request).
"""

from __future__ import annotations

from pathlib import Path

import schemathesis
from schemathesis.generation.meta import TestPhase
from schemathesis.transport.serialization import Binary

# tests.service.live.IMAGE, without importing the app (and torch) into the CLI's process.
_PORTRAIT = (Path(__file__).resolve().parents[1] / "data" / "obama.jpg").read_bytes()


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    operation, meta = context.operation, case.meta
    if (operation is not None and operation.label == "POST /v1/analyze" and meta is not None
            and meta.phase.name == TestPhase.STATEFUL
            and meta.generation.mode == schemathesis.GenerationMode.POSITIVE
            and isinstance(case.body, dict) and isinstance(case.body.get("file"), Binary)):
        case.body["file"].data = _PORTRAIT
    return case
