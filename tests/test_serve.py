"""`frameatlas serve`: a real server process over a copy of the shared finished run, driven over HTTP
and from real Chromium (play, pause, click the chart to seek, live prompts, search, export)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlencode, urlparse

import pandas as pd
import pytest
from browser import watch

ADDRESS_FILE = ".frameatlas-serve.json"


class Server:
    """`frameatlas serve RUN --port 0` in its own process; `url` once it listens."""

    def __init__(self, run: Path, log: Path, *args: str):
        self.run, self.log = run, log
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "frameatlas.cli", "serve", str(run), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self._log, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        found = re.search(r" at (http://\S+/) ", line[0]) if line else None
        if not found:
            self.stop()
            raise AssertionError(f"the server did not start: {line!r}\n{log.read_text()[-3000:]}")
        self.url = found.group(1)
        self.port = urlparse(self.url).port

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()
        return self.process.returncode


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post(url: str, body: bytes | dict, content_type: str = "application/json") -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, headers={"content-type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read())


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side normalisation of `..` or `//`)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def served_run(finished_run, tmp_path_factory) -> Path:
    """A copy of the shared run (the server writes its address file and exports into it)."""
    return Path(shutil.copytree(finished_run, tmp_path_factory.mktemp("served") / "run"))


@pytest.fixture(scope="module")
def server(served_run, tmp_path_factory):
    server = Server(served_run, tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tables(served_run):
    frames = pd.read_parquet(served_run / "tables" / "frames.parquet")
    videos = pd.read_parquet(served_run / "tables" / "videos.parquet")
    return frames, videos


# --------------------------------------------------------------------------- HTTP


@pytest.mark.slow
def test_range_requests_get_206_with_the_right_bytes(server, tables):
    _, videos = tables
    video = videos.iloc[0]
    data = Path(video.video_path).read_bytes()
    url = f"{server.url}media/video/{video.video_id}"
    status, headers, body = get(url, {"Range": "bytes=100-1099"})
    assert status == 206
    assert headers["content-range"] == f"bytes 100-1099/{len(data)}"
    assert body == data[100:1100]
    status, headers, body = get(url, {"Range": "bytes=-64"})  # the last 64 bytes (where a moov atom may sit)
    assert (status, body) == (206, data[-64:])
    status, headers, body = get(url)
    assert (status, headers["accept-ranges"], body) == (200, "bytes", data)


@pytest.mark.slow
def test_only_files_named_in_the_tables_are_served(server, served_run, tables):
    frames, _ = tables
    assert get(f"{server.url}media/thumb/{frames.frame_key.iloc[0]}")[0] == 200
    attempts = [
        "/media/video/../../config.json", "/media/video/..%2F..%2Fconfig.json", "/media/video/%2e%2e%2f%2e%2e%2fconfig.json",
        f"/media/video/{served_run}/config.json", "/media/video//etc/passwd", "/media/thumb/..%2Fconfig.json",
        "/media/thumb/%2Fetc%2Fpasswd", f"/media/thumb/{frames.thumbnail.iloc[0]}", "/media/export/..%2Fconfig.json",
        "/static/..%2Fdata.py", "/static/app.html", "/static/../../config.json", "//etc/passwd", "/config.json",
        "/tables/frames.parquet", "/media/video/not-a-video-id",
    ]  # fmt: skip
    answers = {path: raw_get(server.port, path) for path in attempts}
    assert {path: status for path, (status, _) in answers.items()} == {path: 404 for path in attempts}
    assert all(b"run_dir" not in body and b"root:" not in body for _, body in answers.values())


@pytest.mark.slow
def test_bad_parameters_get_400_with_the_reason_and_no_traceback(server, tables):
    frames, _ = tables
    cases = [
        (get(f"{server.url}api/search?text=a&top_k=abc"), "top_k"),
        (get(f"{server.url}api/search?text=a&top_k=0"), "top_k"),
        (get(f"{server.url}api/search"), "exactly one"),
        (get(f"{server.url}api/search?frame=no-such-frame"), "no-such-frame"),
        (get(f"{server.url}api/search?image=unknown"), "upload"),
        (get(f"{server.url}api/search?text=a&threshold=2"), "threshold"),
    ]
    posts = [
        (post(f"{server.url}api/curves", {"video_id": "nope", "prompts": ["a"]}), "video_id"),
        (post(f"{server.url}api/curves", {"video_id": frames.video_id.iloc[0], "prompts": [{"text": ""}]}), "prompts[0].text"),
        (post(f"{server.url}api/curves", {"video_id": frames.video_id.iloc[0], "prompts": [{"text": "a", "weight": "x"}]}),
         "weight"),
        (post(f"{server.url}api/curves", b"{not json"), "JSON"),
        (post(f"{server.url}api/upload", b"not an image", "image/png"), "not a readable image"),
        (post(f"{server.url}api/export", {"video_id": frames.video_id.iloc[0], "start": 2, "end": 1}), "before start"),
    ]  # fmt: skip
    for (status, _, body), expected in cases:
        assert status == 400 and expected in json.loads(body)["error"], body
        assert b"Traceback" not in body
    for (status, body), expected in posts:
        assert status == 400 and expected in body["error"], body
        assert "Traceback" not in json.dumps(body)


@pytest.mark.slow
def test_hits_export_as_csv_with_every_channel_score(server):
    status, headers, body = get(f"{server.url}api/search.csv?" + urlencode({"text": "a red square"}))
    assert status == 200 and headers["content-type"].startswith("text/csv")
    lines = body.decode().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["rank", "score", "score_visual"]
    ranks = [int(line.split(",")[0]) for line in lines[1:]]
    assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) >= 20
    _, _, page = get(f"{server.url}api/search?" + urlencode({"text": "a red square", "per_page": 5, "page": 1}))
    page = json.loads(page)
    assert page["total"] == len(ranks) and [hit["rank"] for hit in page["hits"]] == [6, 7, 8, 9, 10]


@pytest.mark.slow
def test_a_folder_that_is_not_a_run_is_refused_by_name(tmp_path):
    folder = tmp_path / "holiday videos"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "frameatlas.cli", "serve", str(folder), "--port", "0"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert f"{folder}: not a frameatlas run" in done.stderr and "config.json" in done.stderr
    assert list(folder.iterdir()) == [folder / "clip.mp4"]  # nothing written


@pytest.mark.slow
def test_the_address_file_names_the_running_app_and_goes_when_it_stops(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    started = Server(run, tmp_path / "serve.log")
    try:
        address = json.loads((run / ADDRESS_FILE).read_text())
        assert (address["url"], address["pid"]) == (started.url, started.process.pid)
        from frameatlas.investigator.jupyter import running_app

        assert running_app(run)["url"] == started.url
    finally:
        assert started.stop() == 130  # Ctrl-C: stopped, with the shell's status for it and no traceback
    assert not (run / ADDRESS_FILE).exists()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


# --------------------------------------------------------------------------- the app in Chromium


@pytest.fixture
def app_page(browser, server):
    page = browser.new_page()
    seen = watch(page)
    page.goto(server.url)
    page.wait_for_function("window.frameatlasViewer && window.frameatlasViewer.plotted")
    page.wait_for_function("document.getElementById('fa-video').readyState >= 1")
    yield page, seen
    page.close()


def video_time(page) -> float:
    page.wait_for_function("!document.getElementById('fa-video').seeking")
    return page.evaluate("document.getElementById('fa-video').currentTime")


def click_chart_at(page, t: float) -> None:
    page.locator("#fa-chart").scroll_into_view_if_needed()
    box = page.locator("#fa-chart .nsewdrag").first.bounding_box()
    x = page.evaluate(f"document.getElementById('fa-chart')._fullLayout.xaxis.l2p({t})")
    page.mouse.click(box["x"] + x, box["y"] + box["height"] / 2)


def trace_names(page) -> list[str]:
    return page.evaluate("document.getElementById('fa-chart').data.map((trace) => trace.name)")


@pytest.mark.slow
def test_the_app_loads_plays_and_pauses(app_page, served_run):
    page, seen = app_page
    queries = json.loads((served_run / "config.json").read_text())["search"]["queries"]
    assert trace_names(page) == queries
    page.click("#fa-play")
    page.wait_for_function("document.getElementById('fa-video').currentTime > 0.4")
    page.click("#fa-play")
    paused_at = video_time(page)
    page.wait_for_timeout(400)
    assert page.evaluate("document.getElementById('fa-video').paused") is True
    assert video_time(page) == paused_at
    cursor = page.evaluate("document.getElementById('fa-chart').layout.shapes[0].x0")
    assert abs(cursor - paused_at) < 0.3  # the playback cursor followed
    assert seen.problems() == []


@pytest.mark.slow
def test_clicking_the_chart_seeks_within_one_sampled_frame(app_page, tables):
    page, seen = app_page
    times = page.evaluate("window.frameatlasViewer.curves.x")
    step = times[1] - times[0]
    for target in (times[-1] * 0.8, times[1] + step / 3, times[-1] * 0.35):  # forward, backward, between samples
        click_chart_at(page, target)
        page.wait_for_function(f"Math.abs(document.getElementById('fa-video').currentTime - {target}) <= {step}")
        assert abs(video_time(page) - target) <= step
    assert seen.problems() == []


@pytest.mark.slow
def test_keyboard_steps_one_sampled_frame_plays_and_goes_home(app_page):
    page, seen = app_page
    times = page.evaluate("window.frameatlasViewer.curves.x")
    page.keyboard.press("Home")
    page.wait_for_function("document.getElementById('fa-video').currentTime === 0")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.getElementById('fa-video').currentTime > {times[1] - 0.01}")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"Math.abs(document.getElementById('fa-video').currentTime - {times[2]}) < 0.01")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"Math.abs(document.getElementById('fa-video').currentTime - {times[1]}) < 0.01")
    page.keyboard.press(" ")
    page.wait_for_function("!document.getElementById('fa-video').paused")
    page.keyboard.press(" ")
    page.wait_for_function("document.getElementById('fa-video').paused")
    page.keyboard.press("Home")
    page.wait_for_function("document.getElementById('fa-video').currentTime === 0")
    assert seen.problems() == []


@pytest.mark.slow
def test_typing_a_prompt_adds_a_trace_and_reset_restores_the_configured_ones(app_page, served_run):
    page, seen = app_page
    queries = json.loads((served_run / "config.json").read_text())["search"]["queries"]
    page.fill("#fa-prompt-text", "a green circle")
    page.press("#fa-prompt-text", "Enter")
    page.wait_for_function(f"document.getElementById('fa-chart').data.length === {len(queries) + 1}")
    assert trace_names(page) == [*queries, "a green circle"]
    page.fill("#fa-prompt-text", "a red square")
    page.fill("#fa-prompt-negative", "a blue sky")
    page.fill("#fa-prompt-weight", "0.5")
    page.click("#fa-prompt-add")
    page.wait_for_function(f"document.getElementById('fa-chart').data.length === {len(queries) + 2}")
    assert trace_names(page)[-1] == "a red square − 0.5·a blue sky"
    page.locator(".fa-remove").first.click()  # remove the first configured prompt
    page.wait_for_function(f"document.getElementById('fa-chart').data.length === {len(queries) + 1}")
    assert trace_names(page)[0] == (queries[1] if len(queries) > 1 else "a green circle")
    page.click("#fa-reset")
    page.wait_for_function(f"document.getElementById('fa-chart').data.length === {len(queries)}")
    assert trace_names(page) == queries
    assert video_time(page) == 0
    assert seen.problems() == []


@pytest.mark.slow
def test_searching_a_frames_own_image_returns_it_first(app_page, served_run, tables):
    page, seen = app_page
    frames, _ = tables
    frame = frames.iloc[len(frames) // 2]
    page.set_input_files("#fa-search-image", str(served_run / frame.thumbnail))
    page.wait_for_selector(".fa-hit")
    assert page.locator(".fa-hit").first.get_attribute("data-frame") == frame.frame_key
    assert page.locator(".fa-hit").count() == 12  # one page
    page.click("#fa-page-next")
    page.wait_for_function("document.querySelector('.fa-hit').dataset.rank === '13'")
    # "more like this frame": the frame on screen comes back first
    click_chart_at(page, page.evaluate("window.frameatlasViewer.curves.x[2]"))
    page.wait_for_function("!document.getElementById('fa-video').seeking")
    page.click("#fa-like-this")
    page.wait_for_function("document.querySelector('.fa-hit').dataset.rank === '1'")
    on_screen = page.evaluate("""(() => { const v = window.frameatlasViewer, t = document.getElementById('fa-video').currentTime;
        let best = 0; v.curves.x.forEach((x, i) => { if (Math.abs(x - t) < Math.abs(v.curves.x[best] - t)) best = i; });
        return v.curves.frame_keys[best]; })()""")  # fmt: skip
    assert page.locator(".fa-hit").first.get_attribute("data-frame") == on_screen
    assert seen.problems() == []


@pytest.mark.slow
def test_an_exported_clip_plays(app_page, served_run):
    page, seen = app_page
    page.fill("#fa-search-text", "a red square")
    page.click("#fa-search-go")
    page.wait_for_selector(".fa-hit")
    page.locator(".fa-hit .fa-export-hit").first.click()
    page.wait_for_selector("#fa-exports video", timeout=120_000)
    name = page.locator("#fa-exports a").first.text_content()
    exported = served_run / "exports" / name
    assert exported.is_file() and exported.stat().st_size > 1000
    page.evaluate("document.querySelector('#fa-exports video').muted = true")
    page.evaluate("document.querySelector('#fa-exports video').play()")
    page.wait_for_function("document.querySelector('#fa-exports video').currentTime > 0.2")
    assert not (served_run / ".frameatlas.lock").read_text()  # the export's lock was released
    assert seen.problems() == []


@pytest.mark.slow
def test_a_selection_on_the_chart_exports_that_stretch_with_padding(app_page, served_run, tables):
    page, seen = app_page
    frames, videos = tables
    alpha = frames[frames.video_name == "alpha.mp4"].sort_values("timestamp").timestamp.to_numpy()
    chosen = alpha[(alpha >= 0.9) & (alpha <= 2.1)]
    after = alpha[alpha > chosen[-1]][0]  # the last chosen sample lasts until the next one
    page.locator("#fa-chart").scroll_into_view_if_needed()
    box = page.locator("#fa-chart .nsewdrag").first.bounding_box()
    x1, x2 = (page.evaluate(f"document.getElementById('fa-chart')._fullLayout.xaxis.l2p({t})") for t in (0.9, 2.1))
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + x1, y)
    page.mouse.down()
    page.mouse.move(box["x"] + x2, y, steps=8)
    page.mouse.up()
    page.wait_for_function("!document.getElementById('fa-export-selection').disabled")
    page.click("#fa-export-selection")
    page.wait_for_selector("#fa-exports video", timeout=120_000)
    name = page.locator("#fa-exports a").first.text_content()
    found = re.fullmatch(r"alpha_(\d+)_(\d\d)-(\d+)_(\d\d)s\.mp4", name)
    start, end = float(f"{found[1]}.{found[2]}"), float(f"{found[3]}.{found[4]}")
    assert start == pytest.approx(chosen[0] - 0.5, abs=0.006) and end == pytest.approx(after + 0.5, abs=0.006)  # padding 0.5 s
    assert (served_run / "exports" / name).is_file()
    assert seen.problems() == []
