"""A client generated from the OpenAPI document drives a real analysis, typed end to end.

``openapi-python-client`` (offline: the live service's ``openapi.json`` saved to a file, no
post-hooks) generates ``dfshield_client`` into a temporary directory; the test imports it and,
against the live service with API keys on, submits the bundled portrait, polls until done,
lists the frames and fetches the face crop PNG, every answer a generated model. The generator
must print no warning: each operation, body and response is understood.

The one generator setting beyond defaults, ``content_type_overrides: {image/png:
application/octet-stream}``, is how openapi-python-client is told that a media type it does not
know is bytes; without it the two PNG operations lose their 200 (it knows only JSON, text and
``application/octet-stream``, whatever the schema says).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis

from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings

KEY = "client-key-" + "k" * 24
PACKAGE = "dfshield_client"
GENERATOR_CONFIG = """\
post_hooks: []
package_name_override: dfshield_client
content_type_overrides:
  image/png: application/octet-stream
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def generate(spec: Path, out: Path) -> str:
    """Run the generator; its console output (warnings included)."""
    config = spec.with_name("generator.yaml")
    config.write_text(GENERATOR_CONFIG)
    proc = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec),
         "--output-path", str(out / PACKAGE), "--config", str(config), "--meta", "none"],
        capture_output=True, text=True, timeout=300, cwd=out)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


@pytest.fixture
def client_pkg(tmp_path: Path) -> Iterator[Callable[[Path], ModuleType]]:
    """Import a generated package from a directory; forgotten again afterwards."""

    def load(root: Path) -> ModuleType:
        sys.path.insert(0, str(root))
        return importlib.import_module(PACKAGE)

    yield load
    sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def test_generated_client_drives_an_analysis(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
    client_pkg: Callable[[Path], ModuleType],
) -> None:
    s = make_settings(tmp_path / "data", redis_server.url, api_keys=f"{KEY}:submit+read",
                      rate_limit_per_min=0)
    live = api_factory(s, redis_client, worker_factory(s, redis_client))
    spec = tmp_path / "openapi.json"
    spec.write_text(live.client.get("/openapi.json").text)
    output = generate(spec, tmp_path)
    print(output)
    assert "WARNING" not in output.upper(), output
    client_pkg(tmp_path)

    from dfshield_client import AuthenticatedClient, Client  # type: ignore[import-not-found]
    from dfshield_client.api.analyses import (  # type: ignore[import-not-found]
        analyze,
        get_analysis,
        get_face_crop,
        list_frames,
    )
    from dfshield_client.models import (  # type: ignore[import-not-found]
        AnalysisAccepted,
        AnalysisCreate,
        AnalysisPublic,
        FramePage,
        JobStatus,
        Problem,
    )
    from dfshield_client.types import File  # type: ignore[import-not-found]

    with AuthenticatedClient(base_url=live.url, token=KEY) as api:
        body = AnalysisCreate(file=File(payload=IMAGE.open("rb"), file_name=IMAGE.name,
                                        mime_type="image/jpeg"), max_frames=1)
        submitted = analyze.sync_detailed(client=api, body=body)
        assert submitted.status_code == 202, submitted.content
        accepted = submitted.parsed
        assert isinstance(accepted, AnalysisAccepted) and accepted.status == JobStatus.QUEUED
        assert submitted.headers["location"] == accepted.links.analysis

        deadline = time.monotonic() + 60
        while True:
            analysis = get_analysis.sync(accepted.id, client=api)
            assert isinstance(analysis, AnalysisPublic), analysis
            if analysis.status in (JobStatus.DONE, JobStatus.FAILED) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert analysis.status == JobStatus.DONE, analysis
        counts = analysis.summary.faces  # a generated VerdictCounts model
        assert counts.real + counts.fake + counts.attacked + counts.uncertain >= 1, counts
        assert analysis.media.kind.value == "image" and analysis.summary.verdict.value

        page = list_frames.sync(accepted.id, client=api)
        assert isinstance(page, FramePage) and page.total == 1
        face = page.items[0].faces[0]
        assert face.verdict.value in ("real", "fake", "attacked", "uncertain")

        crop = get_face_crop.sync(accepted.id, page.items[0].index, face.index, client=api)
        assert isinstance(crop, File)
        assert crop.payload.read().startswith(PNG_MAGIC)

        missing = get_analysis.sync_detailed("0" * 32, client=api)  # errors are typed too
        assert missing.status_code == 404 and isinstance(missing.parsed, Problem)
        assert missing.parsed.code == "not_found"

    with Client(base_url=live.url) as anonymous:
        refused = get_analysis.sync_detailed(accepted.id, client=anonymous)
        assert refused.status_code == 401 and refused.parsed.code == "unauthorized"
