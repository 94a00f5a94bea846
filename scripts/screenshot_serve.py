"""A screenshot of `frameatlas serve` on a run, taken in real Chromium (for the README).

    python scripts/screenshot_serve.py [RUN_DIR] [--out docs/investigator.png] [--prompt "a red car"] [--search TEXT]

Starts the app on RUN_DIR (default outputs/demo) on a free port, opens it in headless Chromium
(Debian's chromium through Playwright, as the tests do), plays the first video for a moment,
adds `--prompt` if given, searches `--search` (default: the first configured query), and saves a
full-page screenshot. The server is stopped at the end.
"""

from __future__ import annotations

import argparse
import io
import re
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default="outputs/demo")
    parser.add_argument("--out", type=Path, default=Path("docs/investigator.png"))
    parser.add_argument("--prompt", help="a prompt to add to the chart")
    parser.add_argument("--search", help="text to search the run for (default: the first configured query)")
    parser.add_argument("--seconds", type=float, default=2.0, help="how long to play before the shot")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    server = subprocess.Popen([sys.executable, "-m", "frameatlas.cli", "serve", args.run_dir, "--port", "0"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = server.stdout.readline()
        found = re.search(r" at (http://\S+/) ", line)
        if not found:
            print(f"error: the app did not start on {args.run_dir}", file=sys.stderr)
            return 1
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox",
                                                 "--autoplay-policy=no-user-gesture-required"])  # fmt: skip
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(found.group(1))
            page.wait_for_function("window.frameatlasViewer && window.frameatlasViewer.plotted", timeout=120_000)
            if args.prompt:
                page.fill("#fa-prompt-text", args.prompt)
                page.press("#fa-prompt-text", "Enter")
                page.wait_for_timeout(1500)
            page.evaluate("document.getElementById('fa-video').muted = true")
            page.click("#fa-play")
            page.wait_for_timeout(int(args.seconds * 1000))
            page.click("#fa-play")
            query = args.search or page.evaluate("window.frameatlasApp.run.queries[0] || ''")
            if query:
                page.fill("#fa-search-text", query)
                page.click("#fa-search-go")
                page.wait_for_selector(".fa-hit", timeout=60_000)
                page.wait_for_timeout(800)  # thumbnails
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
            shot.quantize(256).save(args.out, optimize=True)  # a palette PNG keeps the repository small
            browser.close()
        print(args.out)
        return 0
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
