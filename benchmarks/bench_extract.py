"""Benchmark frame extraction at 1 frame per second against a naive OpenCV loop.

Everything timed runs in this one process, one after the other, on the same file (read once
beforehand so it sits in the page cache): the numbers that matter are the ratios against the
naive baseline measured in the same run, not the wall-clock seconds.

* ``naive``: ``cv2.VideoCapture`` reads EVERY frame with ``cap.read()`` (decode + BGR
  conversion), keeps ``frame_idx % round(fps) == 0``, resizes kept frames so the long side is
  384 (INTER_AREA) and writes them as JPEG quality 90: the same output work the library does.
* ``interval`` / ``keyframes`` / ``shots``: the real ``frameatlas.frames.extract_video`` path
  (probe, decode, thumbnails, JPEGs, parquet shard) into a temp run folder.

The machine may be shared: before each timed run the script waits (up to ``--quiet-wait`` s)
for other processes to go quiet, and it reports how many cores other processes kept busy
during each run ("busy elsewhere"). Timings with more than ~0.3 cores busy elsewhere are
contended and their ratios are not comparable; use ``--repeat`` (order rotates) for medians.

Peak memory: the interval extraction is run again in fresh child processes over the first
60 s and over the whole video; each child reports its own ``ru_maxrss`` at its end. A child
that only imports the library gives the floor.

Usage:
    python benchmarks/bench_extract.py [--video PATH] [--seconds N] [--json OUT]
                                       [--repeat N] [--modes naive,interval,...] [--no-memory]

Targets (issue "foundation"): interval >= 1.5x faster than naive, keyframes >= 5x faster,
peak RSS independent of video length.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO / "data" / "demo" / "bbb.mp4"
LONG_SIDE = 384
JPEG_QUALITY = 90
EVERY_SECONDS = 1.0
MODES = ("naive", "interval", "keyframes", "shots")
TARGETS = {"interval": 1.5, "keyframes": 5.0}  # minimum naive_time / mode_time
MEMORY_SHORT_SECONDS = 60.0
MEMORY_TOLERANCE = 1.15  # long-video peak RSS may exceed the short one by at most 15 %


# --- machine and helpers ---------------------------------------------------------------------


def machine_info() -> dict:
    import av
    import cv2
    import numpy
    import PIL

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ffmpeg = getattr(av, "ffmpeg_version_info", None)
    libs = {name: ".".join(map(str, version)) for name, version in av.library_versions.items()}
    cv_avcodec = next(
        (line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines() if "avcodec:" in line), "?"
    )
    try:
        mem_total_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (ValueError, OSError):
        mem_total_mb = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_mb": mem_total_mb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyav": av.__version__,
        "pyav_ffmpeg": ffmpeg,
        "pyav_libavcodec": libs.get("libavcodec"),
        "opencv": cv2.__version__,
        "opencv_avcodec": cv_avcodec,
        "opencv_threads": cv2.getNumThreads(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "loadavg_at_start": os.getloadavg(),
    }


def video_facts(path: Path) -> dict:
    from frameatlas.frames import probe_video

    info = probe_video(path)
    return {
        "path": str(path),
        "size_mb": round(path.stat().st_size / 2**20, 1),
        "duration": info.duration,
        "fps": info.fps,
        "frame_count": info.frame_count,
        "codec": info.codec,
        "width": info.width,
        "height": info.height,
        "has_audio": info.has_audio,
    }


def cut_video(source: Path, seconds: float, dest: Path) -> Path:
    """First `seconds` of `source` by stream copy (no re-encode), with the bundled ffmpeg."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(source), "-t", f"{seconds:g}",
           "-map", "0", "-c", "copy", str(dest)]  # fmt: skip
    subprocess.run(cmd, check=True)
    return dest


def warm_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(8 << 20):
            pass


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def system_busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, threshold: float = 0.25, window: float = 2.0) -> float | None:
    """Wait (up to `max_wait` s) until other processes use < `threshold` cores; returns their load."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, cpu0 = system_busy_seconds(), cpu_seconds()
        time.sleep(window)
        busy1, cpu1 = system_busy_seconds(), cpu_seconds()
        if busy0 is None or busy1 is None:
            return None
        others = max(0.0, (busy1 - busy0 - (cpu1 - cpu0)) / window)
        if others < threshold or time.monotonic() >= deadline:
            return others


# --- the measured runs -----------------------------------------------------------------------


def run_naive(video: Path, out_dir: Path) -> dict:
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    started, cpu0 = time.perf_counter(), cpu_seconds()
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SystemExit(f"OpenCV cannot open {video}")
    fps = cap.get(cv2.CAP_PROP_FPS)
    step = max(1, round(fps))
    frame_idx = kept = 0
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if frame_idx % step == 0:
            height, width = frame.shape[:2]
            scale = min(1.0, LONG_SIDE / max(width, height))
            size = (max(2, round(width * scale)), max(2, round(height * scale)))
            small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out_dir / f"f{frame_idx:08d}.jpg"), small, params)
            kept += 1
        frame_idx += 1
    cap.release()
    return {
        "wall": time.perf_counter() - started,
        "cpu": cpu_seconds() - cpu0,
        "kept": kept,
        "decoded": frame_idx,
        "timestamps": None,
    }


def run_frameatlas(video: Path, mode: str, root: Path) -> dict:
    from frameatlas.config import ExtractConfig
    from frameatlas.corpus import VideoFile
    from frameatlas.frames import extract_video
    from frameatlas.store import RunPaths

    cfg = ExtractConfig(mode=mode, every_seconds=EVERY_SECONDS)
    stat = video.stat()
    file = VideoFile(path=video, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    run = RunPaths(root)
    started, cpu0 = time.perf_counter(), cpu_seconds()
    result = extract_video(file, "bench", cfg, run, force=True)
    wall = time.perf_counter() - started
    return {
        "wall": wall,
        "cpu": cpu_seconds() - cpu0,
        "kept": len(result.frames),
        "decoded": None,
        "timestamps": [float(t) for t in result.frames["timestamp"]],
        "problem": result.problem.reason if result.problem else None,
    }


def run_mode(video: Path, mode: str, scratch: Path) -> dict:
    """One timed run; `other_cores` is how many cores other processes kept busy meanwhile."""
    target = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=scratch))
    busy0 = system_busy_seconds()
    try:
        out = run_naive(video, target) if mode == "naive" else run_frameatlas(video, mode, target)
    finally:
        shutil.rmtree(target, ignore_errors=True)
    busy1 = system_busy_seconds()
    if busy0 is not None and busy1 is not None and out["wall"] > 0:
        out["other_cores"] = max(0.0, (busy1 - busy0 - out["cpu"]) / out["wall"])
    return out


# --- peak memory in fresh processes ------------------------------------------------------------


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_main(mode: str, video: Path | None) -> None:
    """Entry point of `--child`: one extraction, then print peak RSS as JSON on stdout."""
    import frameatlas.frames  # noqa: F401  (imports count towards the floor)

    result: dict = {"mode": mode, "after_imports_mb": _status_mb("VmRSS")}
    if mode != "imports":
        assert video is not None
        with tempfile.TemporaryDirectory(prefix="bench-child-") as scratch:
            out = run_mode(video, mode, Path(scratch))
        result |= {"wall": out["wall"], "kept": out["kept"]}
    result["end_rss_mb"] = _status_mb("VmRSS")
    result["vmhwm_mb"] = _status_mb("VmHWM")  # this process's own peak (Linux), a cross-check
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(result))


def run_child(mode: str, video: Path | None) -> dict:
    """Run `--child` in a fresh interpreter, started from a small shell rather than from here.

    Linux carries the parent's peak RSS into a child's `ru_maxrss` when the child is forked
    from this (large) process and then execs, so a direct subprocess would report this
    process's size. A shell that forks (not execs) python gives the child a clean count.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode]
    if video is not None:
        cmd += ["--video", str(video)]
    shell = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]
    done = subprocess.run(shell, check=True, capture_output=True, text=True, env={**os.environ, "FRAMEATLAS_PROGRESS": "off"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(long_video: Path, long_seconds: float, scratch: Path) -> dict:
    short_seconds = min(MEMORY_SHORT_SECONDS, long_seconds)
    short_video = cut_video(long_video, short_seconds, scratch / "short.mp4")
    short_duration = video_facts(short_video)["duration"]
    floor = run_child("imports", None)
    short = run_child("interval", short_video)
    long = run_child("interval", long_video)
    ratio = long["maxrss_mb"] / short["maxrss_mb"]
    comparable = long_seconds > short_duration * 2
    return {
        "imports_only": floor,
        "short": {"video_seconds": short_duration, **short},
        "long": {"video_seconds": long_seconds, **long},
        "long_over_short": ratio,
        "tolerance": MEMORY_TOLERANCE,
        "comparable": comparable,
        "meets_target": comparable and ratio <= MEMORY_TOLERANCE,
    }


# --- report ----------------------------------------------------------------------------------------


def expected_interval_count(facts: dict) -> int:
    """Targets 0, 1, 2, ... s up to the last frame's time (constant frame rate assumed)."""
    if facts["frame_count"] and facts["fps"]:
        last = (facts["frame_count"] - 1) / facts["fps"]
        return math.floor(last / EVERY_SECONDS + 1e-9) + 1
    return math.ceil(facts["duration"] / EVERY_SECONDS)


def summarize(runs: dict[str, list[dict]], facts: dict) -> dict:
    seconds = facts["duration"]
    source_frames = facts["frame_count"] or round(seconds * facts["fps"])
    naive_wall = statistics.median(r["wall"] for r in runs["naive"]) if runs.get("naive") else None
    naive_cpu = statistics.median(r["cpu"] for r in runs["naive"]) if runs.get("naive") else None
    table = {}
    for mode, items in runs.items():
        wall = statistics.median(r["wall"] for r in items)
        cpu = statistics.median(r["cpu"] for r in items)
        kept = items[0]["kept"]
        row = {
            "wall_s": wall,
            "wall_runs_s": [r["wall"] for r in items],
            "cpu_s": cpu,
            "kept": kept,
            "realtime_factor": seconds / wall,
            "kept_per_s": kept / wall,
            "source_frames_per_s": source_frames / wall,
            "speedup_vs_naive": naive_wall / wall if naive_wall else None,
            "cpu_ratio_vs_naive": naive_cpu / cpu if naive_cpu and cpu else None,
            "other_cores": max((r.get("other_cores") or 0.0) for r in items) if any("other_cores" in r for r in items) else None,
            "other_cores_runs": [r.get("other_cores") for r in items],
        }
        if mode in TARGETS:
            row["target"] = TARGETS[mode]
            row["meets_target"] = bool(row["speedup_vs_naive"] and row["speedup_vs_naive"] >= TARGETS[mode])
        table[mode] = row
    return table


def count_check(runs: dict[str, list[dict]], facts: dict) -> dict:
    expected = expected_interval_count(facts)
    check: dict = {"expected_interval": expected}
    if runs.get("naive"):
        check["naive"] = runs["naive"][0]["kept"]
        check["naive_decoded"] = runs["naive"][0]["decoded"]
    if runs.get("interval"):
        stamps = runs["interval"][0]["timestamps"]
        check["interval"] = len(stamps)
        # Sample k should be the frame on screen at k s: at most one frame period before it.
        period = 1 / facts["fps"] if facts["fps"] else 0.05
        offsets = [k * EVERY_SECONDS - t for k, t in enumerate(stamps)]
        check["interval_max_offset_s"] = max(offsets, default=0.0)
        check["interval_timestamps_ok"] = all(-1e-6 <= o < period + 1e-6 for o in offsets)
        check["interval_count_ok"] = len(stamps) == expected
    return check


def print_report(report: dict) -> None:
    m, v = report["machine"], report["video"]
    print()
    print(f"Machine : {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['memory_mb']} MB RAM")
    print(f"Software: Python {m['python']}, PyAV {m['pyav']} (FFmpeg {m['pyav_ffmpeg']}, libavcodec "
          f"{m['pyav_libavcodec']}), OpenCV {m['opencv']} (libavcodec {m['opencv_avcodec']}, "
          f"{m['opencv_threads']} threads)")  # fmt: skip
    print(f"Load    : {tuple(round(x, 2) for x in m['loadavg_at_start'])} at start, "
          f"{tuple(round(x, 2) for x in report['loadavg_at_end'])} at end")  # fmt: skip
    print(f"Video   : {v['path']} ({v['size_mb']} MB, {v['duration']:.1f} s, {v['width']}x{v['height']} "
          f"{v['codec']}, {v['fps']:g} fps, {v['frame_count']} frames)")  # fmt: skip
    print(f"Sampling: 1 frame / {EVERY_SECONDS:g} s, thumbnails long side {LONG_SIDE}, JPEG q{JPEG_QUALITY}; "
          f"repeats: {report['repeat']} (median shown)")  # fmt: skip
    print()
    header = f"{'mode':<10} {'wall s':>8} {'cpu s':>8} {'kept':>6} {'x realtime':>11} {'kept/s':>8} " \
             f"{'src fps':>8} {'speedup':>8} {'target':>7}  met  {'busy elsewhere':>14}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for mode, row in report["results"].items():
        speed = f"{row['speedup_vs_naive']:.2f}x" if row["speedup_vs_naive"] else "-"
        target = f">={row['target']:g}x" if "target" in row else "-"
        met = ("yes" if row["meets_target"] else "NO") if "target" in row else ""
        other = f"{row['other_cores']:.2f} cores" if row.get("other_cores") is not None else "-"
        print(f"{mode:<10} {row['wall_s']:>8.1f} {row['cpu_s']:>8.1f} {row['kept']:>6d} {row['realtime_factor']:>10.1f}x "
              f"{row['kept_per_s']:>8.1f} {row['source_frames_per_s']:>8.0f} {speed:>8} {target:>7}  {met:<3}  {other:>14}")  # fmt: skip
    if report["repeat"] > 1:
        for mode, row in report["results"].items():
            others = ", ".join("-" if o is None else f"{o:.2f}" for o in row["other_cores_runs"])
            print(f"  {mode} runs: {', '.join(f'{w:.1f}' for w in row['wall_runs_s'])} s (busy elsewhere: {others} cores)")
    print("(cpu s: this process, all threads; busy elsewhere: mean cores other processes used during the run,"
          " worst run; above ~0.3 the timings are contended)")  # fmt: skip
    c = report["counts"]
    print()
    print(f"Counts  : expected {c['expected_interval']} samples at 1/s; naive kept {c.get('naive', '-')} "
          f"(of {c.get('naive_decoded', '-')} decoded), frameatlas interval kept {c.get('interval', '-')}"
          + (f"; interval timestamps on target: {'yes' if c['interval_timestamps_ok'] else 'NO'} "
             f"(max lag {c['interval_max_offset_s'] * 1000:.1f} ms)" if "interval" in c else ""))  # fmt: skip
    mem = report.get("memory")
    if mem:
        print()
        print("Peak RSS, fresh process each (frameatlas interval extraction; MB):")
        print(f"  {'run':<18} {'ru_maxrss':>10} {'VmHWM':>8} {'after imports':>14} {'at end':>8} {'frames':>7} {'wall s':>7}")
        rows = [("imports only", mem["imports_only"])]
        rows += [(f"first {mem['short']['video_seconds']:.1f} s", mem["short"]), (f"whole {mem['long']['video_seconds']:.1f} s", mem["long"])]
        for label, row in rows:
            hwm = f"{row['vmhwm_mb']:.1f}" if row.get("vmhwm_mb") else "-"
            kept = str(row.get("kept", "-"))
            wall = f"{row['wall']:.1f}" if "wall" in row else "-"
            print(f"  {label:<18} {row['maxrss_mb']:>10.1f} {hwm:>8} {row['after_imports_mb']:>14.1f} "
                  f"{row['end_rss_mb']:>8.1f} {kept:>7} {wall:>7}")  # fmt: skip
        print(f"  whole / first ru_maxrss: {mem['long_over_short']:.3f} (target <= {mem['tolerance']:.2f}: "
              + ("n/a, video too short to compare)" if not mem["comparable"] else f"{'yes' if mem['meets_target'] else 'NO'})"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=None, help=f"video to sample (default {DEFAULT_VIDEO})")
    parser.add_argument("--seconds", type=float, default=None, help="use only the first N seconds (stream copy)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode (median reported; order rotates)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each timed run, wait up to this many seconds for other processes to "
                             "use < 0.25 cores (0 = do not wait)")  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child_main(args.child, args.video)
        return 0

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; accepted: {', '.join(MODES)}")
    source = args.video or DEFAULT_VIDEO
    if not source.exists():
        parser.error(f"{source} not found (for the demo video run: frameatlas demo fetch)")

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        scratch = Path(tmp)
        video = cut_video(source, args.seconds, scratch / f"first{args.seconds:g}s{source.suffix}") if args.seconds else source
        report: dict = {"machine": machine_info(), "video": video_facts(video), "repeat": args.repeat}
        report["video"]["source"] = str(source)
        if args.seconds:
            report["video"]["path"] = f"{source} (first {args.seconds:g} s)"
        warm_cache(video)
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for attempt in range(args.repeat):
            order = modes[attempt % len(modes):] + modes[: attempt % len(modes)]
            for mode in order:
                print(f"[{attempt + 1}/{args.repeat}] {mode} ...", end=" ", file=sys.stderr, flush=True)
                before = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
                out = run_mode(video, mode, scratch)
                out["other_cores_before"] = before
                runs[mode].append(out)
                others = out.get("other_cores")
                print(f"{out['wall']:.1f} s, {out['kept']} frames"
                      + (f" (other processes: {others:.2f} cores)" if others is not None else ""), file=sys.stderr, flush=True)  # fmt: skip
        report["results"] = summarize(runs, report["video"])
        report["counts"] = count_check(runs, report["video"])
        if not args.no_memory:
            print("peak memory children ...", file=sys.stderr, flush=True)
            report["memory"] = measure_memory(video, report["video"]["duration"], scratch)
        report["loadavg_at_end"] = os.getloadavg()
        report["command"] = " ".join(["python", "benchmarks/bench_extract.py", *(argv if argv is not None else sys.argv[1:])])

    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
