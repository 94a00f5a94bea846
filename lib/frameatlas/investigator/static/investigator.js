// frameatlas investigator: a video player beside the similarity of prompts over time.
// Used by the offline pages (plots/investigate_<video>.html, data embedded) and by
// `frameatlas serve` (data from its JSON API). Plain JS; needs Plotly loaded first.
(function () {
  "use strict";

  const CURSOR = 0; // shapes[0] is the playback cursor, shapes[1] the threshold line
  const $ = (id) => document.getElementById(id);

  function formatTime(seconds) {
    if (!isFinite(seconds)) return "--:--";
    const m = Math.floor(seconds / 60);
    const s = seconds - 60 * m;
    return String(m).padStart(2, "0") + ":" + s.toFixed(2).padStart(5, "0");
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  // ------------------------------------------------------------------ player + chart

  class Viewer {
    constructor(video, chart, options) {
      this.video = video;
      this.chart = chart;
      this.threshold = options.threshold || 0.9;
      this.onSelect = options.onSelect || null;
      this.curves = null;
      this.lastCursor = -1;
      this.plotted = false;
      video.addEventListener("timeupdate", () => this.moveCursor());
      video.addEventListener("seeked", () => this.moveCursor());
      video.addEventListener("play", () => this.follow());
      video.addEventListener("ended", () => this.moveCursor());
    }

    times() {
      return this.curves ? this.curves.x : [];
    }

    // Every line's best score, the threshold relative to it, and the frames at or above it.
    thresholdValue() {
      let best = -Infinity;
      for (const line of this.curves.lines) for (const y of line.y) if (y !== null && y > best) best = y;
      if (!isFinite(best)) return null;
      return best > 0 ? this.threshold * best : best; // negative scores: only the best frame
    }

    shading(cut) {
      const x = this.curves.x;
      const above = x.map((_, i) => this.curves.lines.some((line) => line.y[i] !== null && line.y[i] >= cut - 1e-9));
      const step = x.length > 1 ? x[x.length - 1] - x[x.length - 2] : 0.5;
      const shapes = [];
      let start = null;
      for (let i = 0; i <= x.length; i++) {
        if (i < x.length && above[i]) {
          if (start === null) start = x[i];
        } else if (start !== null) {
          const end = i < x.length ? x[i] : x[x.length - 1] + step;
          shapes.push({ type: "rect", xref: "x", yref: "paper", x0: start, x1: end, y0: 0, y1: 1,
                        fillcolor: "rgba(255, 170, 0, 0.18)", line: { width: 0 }, layer: "below" });
          start = null;
        }
      }
      return shapes;
    }

    draw(curves) {
      this.curves = curves;
      const traces = curves.lines.map((line) => ({
        x: curves.x, y: line.y, name: line.label, type: "scatter", mode: "lines+markers", connectgaps: false,
        customdata: curves.frame_keys, marker: { size: 5 },
        hovertemplate: "%{x:.2f} s: %{y:.4f}<extra>" + line.label.replace(/</g, "&lt;") + "</extra>",
      }));
      const shapes = [{ type: "line", xref: "x", yref: "paper", x0: this.video.currentTime || 0,
                        x1: this.video.currentTime || 0, y0: 0, y1: 1, line: { color: "#d62728", width: 2 } }];
      const cut = curves.lines.length ? this.thresholdValue() : null;
      if (cut !== null) {
        shapes.push({ type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: cut, y1: cut,
                      line: { color: "#555", width: 1, dash: "dash" } });
        shapes.push(...this.shading(cut));
      }
      const last = curves.x.length ? curves.x[curves.x.length - 1] : 1;
      const layout = {
        margin: { l: 50, r: 10, t: 10, b: 40 }, height: 300, dragmode: "select", selectdirection: "h",
        hovermode: "x", showlegend: true, legend: { orientation: "h", y: -0.25 },
        xaxis: { title: { text: "time (s)" }, range: [0, Math.max(last, curves.duration || 0, 0.1)] },
        yaxis: { title: { text: "similarity" } }, shapes: shapes,
      };
      const config = { displaylogo: false, responsive: true };
      Plotly.react(this.chart, traces, layout, config);
      if (!this.plotted) {
        this.plotted = true;
        this.chart.on("plotly_click", (event) => {
          if (event && event.points && event.points.length) this.seek(event.points[0].x);
        });
        // plotly_click needs the hover that a mouse move computes first; a click that comes before it
        // (touch, a fast click) still seeks: the plot area's pixel -> time, snapped to the nearest sample.
        this.chart.addEventListener("click", (event) => {
          const area = event.target;
          if (!area.classList || !area.classList.contains("nsewdrag") || !this.chart._fullLayout) return;
          const t = this.chart._fullLayout.xaxis.p2l(event.clientX - area.getBoundingClientRect().left);
          if (isFinite(t)) this.seek(this.nearest(t));
        });
        this.chart.on("plotly_selected", (event) => {
          if (this.onSelect && event && event.range && event.range.x) this.onSelect(event.range.x[0], event.range.x[1]);
        });
      }
      const status = { threshold: cut, lines: curves.lines.length };
      this.chart.dataset.threshold = cut === null ? "" : String(cut);
      return status;
    }

    nearest(t) {
      const x = this.times();
      let best = 0;
      for (let i = 1; i < x.length; i++) if (Math.abs(x[i] - t) < Math.abs(x[best] - t)) best = i;
      return x.length ? x[best] : t;
    }

    moveCursor() {
      if (!this.plotted) return;
      const t = this.video.currentTime;
      if (Math.abs(t - this.lastCursor) < 1e-3) return;
      this.lastCursor = t;
      Plotly.relayout(this.chart, { ["shapes[" + CURSOR + "].x0"]: t, ["shapes[" + CURSOR + "].x1"]: t });
      const label = $("fa-time");
      if (label) label.textContent = formatTime(t) + " / " + formatTime(this.video.duration);
    }

    follow() {
      // timeupdate fires ~4 times a second: follow playback more smoothly, ~10 times a second
      const tick = () => {
        if (this.video.paused || this.video.ended) return;
        this.moveCursor();
        setTimeout(tick, 100);
      };
      tick();
    }

    seek(t) {
      const duration = this.video.duration;
      this.video.currentTime = isFinite(duration) ? Math.min(Math.max(0, t), duration) : Math.max(0, t);
      this.moveCursor();
    }

    toggle() {
      if (!this.video.paused) {
        this.video.pause();
        return;
      }
      // play() returns a promise that rejects with AbortError when a pause
      // (the viewer's own next key press) lands before playback starts: that
      // is the viewer's choice, not an error. Anything else (autoplay policy,
      // an unplayable file) is reported.
      const playing = this.video.play();
      if (playing) {
        playing.catch((error) => {
          if (error.name !== "AbortError") console.error("frameatlas: cannot play:", error.message);
        });
      }
    }

    // One sampled frame back (-1) or forward (+1) from the current time.
    step(direction) {
      const x = this.times();
      if (!x.length) return;
      const t = this.video.currentTime;
      let i = 0;
      while (i + 1 < x.length && x[i + 1] <= t + 1e-3) i++;
      let target;
      if (direction > 0) target = x[Math.min(i + 1, x.length - 1)];
      else target = t - x[i] > 0.05 ? x[i] : x[Math.max(i - 1, 0)];
      this.video.pause();
      this.seek(target);
    }

    keyboard() {
      document.addEventListener("keydown", (event) => {
        const tag = (event.target && event.target.tagName) || "";
        if (["INPUT", "TEXTAREA", "SELECT"].includes(tag)) return; // typing
        if (tag === "BUTTON" && event.key === " ") return; // space presses the focused button
        if (event.key === " ") { this.toggle(); event.preventDefault(); }
        else if (event.key === "ArrowLeft") { this.step(-1); event.preventDefault(); }
        else if (event.key === "ArrowRight") { this.step(1); event.preventDefault(); }
        else if (event.key === "Home") { this.video.pause(); this.seek(0); event.preventDefault(); }
      });
    }
  }

  // ------------------------------------------------------------------ subtitles

  // What is said, as the video's <track kind="subtitles">: `button` (and the key C) shows or hides it,
  // and stays hidden while the video has no such track. Returns apply(), which puts a track added
  // later (the app's next video) in the chosen state.
  function subtitles(video, button) {
    const state = { on: true };
    const tracks = () => [...video.textTracks].filter((t) => t.kind === "subtitles");
    const label = () => {
      const any = tracks().length > 0;
      button.hidden = !any;
      button.textContent = "Subtitles: " + (state.on ? "on" : "off");
      button.setAttribute("aria-pressed", state.on ? "true" : "false");
    };
    const apply = () => {
      for (const track of tracks()) track.mode = state.on ? "showing" : "hidden";
      label();
    };
    const toggle = () => { state.on = !state.on; apply(); };
    button.addEventListener("click", toggle);
    document.addEventListener("keydown", (event) => {
      const tag = (event.target && event.target.tagName) || "";
      if (["INPUT", "TEXTAREA", "SELECT"].includes(tag) || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.key === "c" || event.key === "C") { toggle(); event.preventDefault(); }
    });
    video.textTracks.addEventListener("change", () => { // the player's own captions menu
      const shown = tracks().some((t) => t.mode === "showing");
      if (tracks().length && shown !== state.on) { state.on = shown; label(); }
    });
    video.textTracks.addEventListener("addtrack", label);
    video.textTracks.addEventListener("removetrack", label);
    apply();
    return apply;
  }

  // ------------------------------------------------------------------ offline page

  function offline(data) {
    const video = $("fa-video");
    const viewer = new Viewer(video, $("fa-chart"), { threshold: data.threshold });
    viewer.keyboard();
    $("fa-play").addEventListener("click", () => viewer.toggle());
    $("fa-reset").addEventListener("click", () => { video.pause(); viewer.seek(0); });
    video.addEventListener("play", () => { $("fa-play").textContent = "Pause"; });
    video.addEventListener("pause", () => { $("fa-play").textContent = "Play"; });
    if ($("fa-subtitles")) subtitles(video, $("fa-subtitles"));
    if (data.curves.lines.length) viewer.draw(data.curves);
    else { viewer.curves = data.curves; $("fa-chart").textContent = data.reason; $("fa-chart").classList.add("fa-reason"); }
    window.frameatlasViewer = viewer;
    return viewer;
  }

  // ------------------------------------------------------------------ the served app

  async function api(path, options) {
    const response = await fetch(path, options);
    const body = (response.headers.get("content-type") || "").includes("json") ? await response.json() : {};
    if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
    return body;
  }

  class App {
    constructor(run) {
      this.run = run;
      this.configured = run.queries.map((text) => ({ text: text, negative: "", weight: 1 }));
      this.prompts = this.configured.slice();
      this.current = null;
      this.query = null; // the run-wide search shown in the grid: URLSearchParams
      this.page = 0;
      this.perPage = 12;
      this.selection = null;
      this.viewer = new Viewer($("fa-video"), $("fa-chart"), {
        threshold: run.threshold, onSelect: (a, b) => this.select(a, b),
      });
      this.viewer.keyboard();
      this.showSubtitles = subtitles($("fa-video"), $("fa-subtitles"));
      this.bind();
      this.listVideos();
      const wanted = new URLSearchParams(window.location.search).get("video");
      const first = run.videos.find((v) => v.playable && v.video_id === wanted) || run.videos.find((v) => v.playable);
      if (first) this.open(first.video_id, 0);
    }

    status(text, isError) {
      const node = $("fa-status");
      node.textContent = text || "";
      node.classList.toggle("fa-error", !!isError);
    }

    bind() {
      const video = $("fa-video");
      $("fa-play").addEventListener("click", () => this.viewer.toggle());
      video.addEventListener("play", () => { $("fa-play").textContent = "Pause"; });
      video.addEventListener("pause", () => { $("fa-play").textContent = "Play"; });
      $("fa-reset").addEventListener("click", () => this.reset());
      $("fa-prompt-form").addEventListener("submit", (event) => { event.preventDefault(); this.addPrompt(); });
      $("fa-threshold").addEventListener("input", () => {
        this.viewer.threshold = Number($("fa-threshold").value) / 100;
        $("fa-threshold-label").textContent = $("fa-threshold").value + "% of best";
        if (this.viewer.curves) this.viewer.draw(this.viewer.curves);
      });
      $("fa-threshold").value = Math.round(this.run.threshold * 100);
      $("fa-threshold-label").textContent = $("fa-threshold").value + "% of best";
      $("fa-search-form").addEventListener("submit", (event) => {
        event.preventDefault();
        const text = $("fa-search-text").value.trim();
        if (text) this.search(new URLSearchParams({ text: text }));
      });
      $("fa-search-image").addEventListener("change", () => this.searchImage());
      $("fa-like-this").addEventListener("click", () => this.likeThis());
      $("fa-page-prev").addEventListener("click", () => this.showPage(this.page - 1));
      $("fa-page-next").addEventListener("click", () => this.showPage(this.page + 1));
      $("fa-export-selection").addEventListener("click", () => {
        if (this.selection) this.exportClip({ video_id: this.current.video_id, start: this.selection[0], end: this.selection[1] });
      });
    }

    listVideos() {
      const list = $("fa-videos");
      list.replaceChildren();
      for (const video of this.run.videos) {
        const item = el("li", { class: "fa-video-item", "data-video": video.video_id, title: video.problem || video.name }, [
          video.poster_frame ? el("img", { src: "/media/thumb/" + encodeURIComponent(video.poster_frame), alt: "" }) : "",
          el("span", { text: video.name }),
          el("small", { text: formatTime(video.duration) + (video.playable ? "" : " (source missing)") }),
        ]);
        if (video.playable) item.addEventListener("click", () => this.open(video.video_id, 0));
        else item.classList.add("fa-disabled");
        list.append(item);
      }
    }

    async open(videoId, time, extraPrompt) {
      const video = this.run.videos.find((v) => v.video_id === videoId);
      if (!video) return;
      if (extraPrompt && !this.prompts.some((p) => p.text === extraPrompt && !p.negative)) {
        this.prompts.push({ text: extraPrompt, negative: "", weight: 1 });
      }
      const player = $("fa-video");
      if (!this.current || this.current.video_id !== videoId) {
        this.current = video;
        this.selection = null;
        $("fa-export-selection").disabled = true;
        player.src = "/media/video/" + encodeURIComponent(videoId);
        for (const old of player.querySelectorAll("track")) old.remove();
        if (video.subtitles) { // what is said in it (subtitles/<video>.vtt, served by the app)
          player.append(el("track", { kind: "subtitles", label: "Speech", srclang: video.language || "en", src: video.subtitles }));
        }
        this.showSubtitles();
        $("fa-title").textContent = video.name;
        for (const item of document.querySelectorAll(".fa-video-item")) {
          item.classList.toggle("fa-active", item.dataset.video === videoId);
        }
      }
      const seekTo = () => this.viewer.seek(time || 0);
      if (player.readyState >= 1) seekTo();
      else player.addEventListener("loadedmetadata", seekTo, { once: true });
      await this.plot();
    }

    async plot() {
      if (!this.current) return;
      this.renderPrompts();
      try {
        const curves = await api("/api/curves", {
          method: "POST", headers: { "content-type": "application/json" },
          body: JSON.stringify({ video_id: this.current.video_id, prompts: this.prompts }),
        });
        const chart = $("fa-chart");
        if (curves.lines.length || !this.prompts.length) {
          chart.classList.remove("fa-reason");
          this.viewer.draw(curves);
        } else {
          Plotly.purge(chart);
          this.viewer.plotted = false;
          this.viewer.curves = curves;
          chart.textContent = "No channel can score these prompts: " + curves.notes.join("; ");
          chart.classList.add("fa-reason");
        }
        const channels = [...new Set(curves.lines.map((l) => l.channel))];
        $("fa-notes").textContent = (channels.length ? "scored by: " + channels.join(", ") + ". " : "") +
          curves.notes.join(" ");
        this.status("");
      } catch (error) {
        this.status(error.message, true);
      }
    }

    renderPrompts() {
      const list = $("fa-prompts");
      list.replaceChildren();
      this.prompts.forEach((prompt, index) => {
        const label = prompt.text + (prompt.negative ? " − " + (prompt.weight !== 1 ? prompt.weight + "·" : "") + prompt.negative : "");
        list.append(el("li", { class: "fa-prompt" }, [
          el("span", { text: label }),
          el("button", { type: "button", class: "fa-remove", title: "remove", "aria-label": "remove " + label, text: "×",
                         onclick: () => { this.prompts.splice(index, 1); this.plot(); } }),
        ]));
      });
    }

    addPrompt() {
      const text = $("fa-prompt-text").value.trim();
      if (!text) return;
      const negative = $("fa-prompt-negative").value.trim();
      const weight = Number($("fa-prompt-weight").value || 1);
      this.prompts.push({ text: text, negative: negative, weight: weight });
      $("fa-prompt-text").value = "";
      $("fa-prompt-negative").value = "";
      this.plot();
    }

    reset() {
      $("fa-video").pause();
      this.viewer.seek(0);
      this.prompts = this.configured.slice();
      this.plot();
    }

    select(start, end) {
      const duration = this.current ? this.current.duration : Infinity;
      this.selection = [Math.max(0, Math.min(start, end)), Math.min(Math.max(start, end), duration)];
      const button = $("fa-export-selection");
      button.disabled = false;
      button.textContent = "Export clip " + formatTime(this.selection[0]) + "–" + formatTime(this.selection[1]);
    }

    // ---------------------------------------------------------------- run-wide search

    async search(params) {
      this.query = params;
      this.page = 0;
      await this.showPage(0);
    }

    async searchImage() {
      const file = $("fa-search-image").files[0];
      if (!file) return;
      try {
        const uploaded = await api("/api/upload", { method: "POST", headers: { "content-type": file.type || "application/octet-stream" }, body: file });
        await this.search(new URLSearchParams({ image: uploaded.image_id }));
      } catch (error) {
        this.status(error.message, true);
      }
    }

    async likeThis() {
      if (!this.current) return;
      const x = this.viewer.times();
      const keys = this.viewer.curves ? this.viewer.curves.frame_keys : [];
      if (!x.length) return;
      const t = $("fa-video").currentTime;
      let best = 0;
      x.forEach((value, i) => { if (Math.abs(value - t) < Math.abs(x[best] - t)) best = i; });
      await this.search(new URLSearchParams({ frame: keys[best] }));
    }

    async showPage(page) {
      if (!this.query || page < 0) return;
      const params = new URLSearchParams(this.query);
      params.set("page", page);
      params.set("per_page", this.perPage);
      try {
        const result = await api("/api/search?" + params);
        this.page = page;
        this.renderHits(result);
        const csv = new URLSearchParams(this.query);
        $("fa-csv").href = "/api/search.csv?" + csv;
        $("fa-csv").hidden = false;
      } catch (error) {
        $("fa-results").replaceChildren(el("p", { class: "fa-error", text: error.message }));
      }
    }

    renderHits(result) {
      const grid = $("fa-results");
      grid.replaceChildren();
      $("fa-search-summary").textContent = result.query + ": " + result.total + " hits (channels: " +
        result.channels.join(", ") + ")" + (result.notes.length ? ". " + result.notes.join("; ") : "");
      for (const hit of result.hits) {
        const scores = Object.entries(hit.scores).map(([c, s]) => c + " " + (s === null ? "–" : s.toFixed(3))).join(" · ");
        const open = () => this.open(hit.video_id, hit.said ? hit.said.start : hit.timestamp, result.text || null);
        const tile = el("figure", { class: "fa-hit", "data-frame": hit.frame_key, "data-rank": hit.rank }, [
          el("img", { src: "/media/thumb/" + encodeURIComponent(hit.frame_key), alt: hit.video_name + " " + formatTime(hit.timestamp),
                      onclick: open }),
          el("figcaption", {}, [
            el("b", { text: "#" + hit.rank + " " }), el("span", { text: hit.video_name + " " + formatTime(hit.timestamp) }),
            el("br"), el("small", { text: "score " + hit.score.toFixed(4) + (scores ? " · " + scores : "") }), el("br"),
            hit.said ? el("q", { class: "fa-said", text: hit.said.text,
                                 title: "said " + formatTime(hit.said.start) + "–" + formatTime(hit.said.end) }) : "",
            hit.said ? el("small", { text: " " + formatTime(hit.said.start) + "–" + formatTime(hit.said.end) }) : "",
            hit.said ? el("br") : "",
            el("button", { type: "button", class: "fa-open", text: "open", onclick: open }),
            el("button", { type: "button", class: "fa-export-hit", text: "export clip", // a speech hit: its whole utterance
                           onclick: () => this.exportClip(hit.said && hit.said.segment_id
                             ? { frame_key: hit.frame_key, segment_id: hit.said.segment_id } : { frame_key: hit.frame_key }) }),
          ]),
        ]);
        grid.append(tile);
      }
      const pages = Math.max(1, Math.ceil(result.total / this.perPage));
      $("fa-page").textContent = "page " + (this.page + 1) + " of " + pages;
      $("fa-page-prev").disabled = this.page <= 0;
      $("fa-page-next").disabled = this.page + 1 >= pages;
    }

    // ---------------------------------------------------------------- export

    async exportClip(request) {
      this.status("exporting clip…");
      try {
        const clip = await api("/api/export", {
          method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(request),
        });
        const item = el("li", {}, [
          el("a", { href: clip.url, download: clip.name, text: clip.name }),
          el("span", { text: " " + clip.duration.toFixed(1) + " s" }), el("br"),
          el("video", { src: clip.url, controls: "", preload: "metadata", width: "240" }),
        ]);
        $("fa-exports").prepend(item);
        this.status("exported " + clip.name);
      } catch (error) {
        this.status(error.message, true);
      }
    }
  }

  async function app() {
    try {
      const run = await api("/api/run");
      document.title = "frameatlas · " + run.name;
      $("fa-run").textContent = run.name;
      window.frameatlasApp = new App(run);
      window.frameatlasViewer = window.frameatlasApp.viewer;
    } catch (error) {
      $("fa-status").textContent = error.message;
    }
  }

  window.FrameAtlasInvestigator = { Viewer: Viewer, offline: offline, app: app, formatTime: formatTime, subtitles: subtitles };
})();
