"""Peak RSS of the API process while a 2 GiB upload is refused: ``uv run python
benchmarks/hostile_upload_rss.py [--cap-mb 200] [--redis-url redis://…]``.

Starts ``dfshield api`` as its own process (against an embedded Redis unless ``--redis-url``)
and sends the 2 GiB body four ways (httpx chunked; a socket chunked, with the true
Content-Length, and with a lying one), sampling the API's VmRSS every 10 ms. The test
``tests/service/test_hostile_corpus.py`` asserts the bound; this prints the figures.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import socket
import tempfile
from pathlib import Path

from app.redis_conn import EmbeddedRedis
from tests.hostile.upload import Measured, MiB, measure, proc_status, spawn_api


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _print(rows: list[Measured], hwm: int, cap_mb: float) -> None:
    print(f"API upload cap {cap_mb:g} MB; {platform.machine()}, Python {platform.python_version()}")
    print(f"{'variant':<40} {'answer':>6} {'code':<18} {'MiB taken':>9} {'s':>6} "
          f"{'RSS before':>10} {'peak':>6} {'growth':>6}")
    for r in rows:
        o = r.outcome
        code = (o.body or {}).get("code") or ("(uvicorn)" if o.status else o.error or "-")
        print(f"{r.variant.name:<40} {o.status or '-':>6} {code:<18} {o.sent / MiB:>9.0f} "
              f"{o.seconds:>6.2f} {r.rss_before / MiB:>9.0f}M {r.rss_peak / MiB:>5.0f}M "
              f"{(r.rss_peak - r.rss_before) / MiB:>5.1f}M")
    print(f"VmHWM of the API process over its whole life (startup included): {hwm / MiB:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cap-mb", type=float, default=200.0, help="DFSHIELD_MAX_UPLOAD_MB")
    ap.add_argument("--redis-url", default=None, help="default: an embedded Redis")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dfs-"))  # short: unix socket paths cap at 108 bytes
    redis = None if args.redis_url else EmbeddedRedis(root).start()
    url = args.redis_url or redis.url  # type: ignore[union-attr]
    port = _free_port()
    api = spawn_api(url, root / "data", port, root / "api.log",
                    DFSHIELD_MAX_UPLOAD_MB=f"{args.cap_mb:g}")
    try:
        rows = measure(api, port, int(args.cap_mb * MiB))
        hwm = proc_status(api.proc.pid)["VmHWM"]
    finally:
        api.stop()
        if redis is not None:
            redis.stop()
    _print(rows, hwm, args.cap_mb)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
