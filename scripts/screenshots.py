#!/usr/bin/env python
"""Screenshots for the README, taken in real Chromium from a finished run.

    .venv/bin/python scripts/screenshots.py outputs/demo            # writes docs/dashboard.png, docs/map.png
    .venv/bin/python scripts/screenshots.py RUN --out docs --map umap

The dashboard is shot from its top (summary, banner, next steps, stages) and the clusters gallery;
the map is the run's 3D map page once Plotly has drawn it. Each image is kept under `--max-kb`
(palette PNG, else JPEG) so the repository stays small. Chromium is Debian's (`/usr/bin/chromium`,
or FRAMEATLAS_CHROMIUM), driven by Playwright; pages are opened from disk and nothing is fetched
from the network.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from PIL import Image

CHROMIUM = os.environ.get("FRAMEATLAS_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 860}


def small_image(png: bytes, dest: Path, max_kb: int) -> Path:
    """Save a screenshot at most `max_kb`: a 256-colour PNG when that fits, else a JPEG (same stem)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    dest.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
    if buffer.tell() <= max_kb * 1024:
        path = dest.with_suffix(".png")
    else:
        path = dest.with_suffix(".jpg")
        for quality in (85, 75, 65, 55):
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=quality, optimize=True, progressive=True)
            if buffer.tell() <= max_kb * 1024:
                break
        else:
            raise SystemExit(f"{dest}: cannot get under {max_kb} KB; take a smaller area")
    path.write_bytes(buffer.getvalue())
    for other in {dest.with_suffix(".png"), dest.with_suffix(".jpg")} - {path}:
        other.unlink(missing_ok=True)  # a shot of the other format from an earlier run
    return path


def _offline(page) -> list[str]:
    """Abort anything that would leave the machine; return the list it fills."""
    blocked: list[str] = []

    def route(route):
        if route.request.url.startswith(("file:", "data:", "blob:", "about:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", route)
    return blocked


def shoot_dashboard(browser, run: Path, out: Path, max_kb: int) -> list[Path]:
    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
    blocked = _offline(page)
    page.goto((run / "index.html").as_uri())
    page.wait_for_load_state("load")
    shots = [small_image(page.screenshot(full_page=False), out / "dashboard", max_kb)]
    clusters = page.locator("#clusters")
    if clusters.count():
        clusters.scroll_into_view_if_needed()
        page.evaluate("document.querySelector('#clusters').previousElementSibling.scrollIntoView()")
        page.wait_for_function(
            "[...document.querySelectorAll('#clusters img')].slice(0, 6).every(i => i.complete && i.naturalWidth)"
        )
        shots.append(small_image(page.screenshot(full_page=False), out / "clusters", max_kb))
    page.close()
    if blocked:
        raise SystemExit(f"the dashboard asked for the network: {blocked[:3]}")
    return shots


def shoot_map(browser, run: Path, out: Path, method: str, max_kb: int) -> Path:
    page_path = run / "plots" / f"map_{method}.html"
    if not page_path.is_file():
        found = sorted((run / "plots").glob("map_*.html"))
        if not found:
            raise SystemExit(f"{run}/plots has no map page: run the visualize stage first")
        page_path = found[0]
    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
    blocked = _offline(page)
    page.goto(page_path.as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    page.wait_for_timeout(2500)  # WebGL (software) draws the 3D scene after the SVG frame
    shot = small_image(page.screenshot(full_page=False), out / "map", max_kb)
    page.close()
    if blocked:
        raise SystemExit(f"the map page asked for the network: {blocked[:3]}")
    return shot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run folder (with index.html and plots/map_*.html)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    parser.add_argument("--map", default="umap", help="which map page: umap, tsne or pca (default umap)")
    parser.add_argument("--max-kb", type=int, default=290, help="largest image file in KB (default 290)")
    args = parser.parse_args(argv)
    if not (args.run / "index.html").is_file():
        print(f"error: {args.run} has no index.html: give a finished run folder", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--allow-file-access-from-files", "--enable-unsafe-swiftshader"]
        )
        try:
            shots = [
                *shoot_dashboard(browser, args.run, args.out, args.max_kb),
                shoot_map(browser, args.run, args.out, args.map, args.max_kb),
            ]
        finally:
            browser.close()
    for shot in shots:
        print(f"{shot} ({shot.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
