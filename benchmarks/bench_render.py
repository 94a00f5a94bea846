"""Rendering: ffmpeg cuts joined without re-encoding (what the render stage does) against moviepy composition.

    python benchmarks/bench_render.py [--run outputs/demo] [--clusters 5] [--repeat 2] [--json OUT]

Both engines make the same videos, one per cluster of the run's latest clustering (the render
stage's own segment selection with the default `render` options: 640x360, 24 fps, x264 CRF 23
preset veryfast, AAC 128 kbit/s, a title card), from the same source files:

* ffmpeg: `frameatlas.render.render_job` with an empty cut cache: one bundled-ffmpeg call per
  segment (accurate seek, scale + letterbox, encode once), the title card drawn with Pillow,
  pieces joined by the concat demuxer without re-encoding, audio encoded once.
* moviepy (2.x, the baseline): `VideoFileClip(..., target_resolution=...)` per segment
  (`subclipped`, letterboxed with `with_background_color`), the same Pillow title card as an
  `ImageClip`, `concatenate_videoclips`, `write_videofile` with the same codec settings.
  Every clip is closed afterwards.

Reported per engine: wall seconds (median of `--repeat`, order alternated), output seconds,
x real time, file size; the ratio moviepy / ffmpeg; PSNR between the two engines' outputs
(frame by frame, same output size: the same pictures at the same quality give ~35 dB and up);
and open file descriptors / child processes left after all the runs.

moviepy is not a dependency of frameatlas: `pip install moviepy` (or the `[bench]` extra) first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

os.environ.setdefault("FRAMEATLAS_PROGRESS", "off")

from frameatlas import render  # noqa: E402
from frameatlas.config import RenderConfig  # noqa: E402
from frameatlas.store import RunPaths, read_table  # noqa: E402


def machine() -> dict:
    import av

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    versions = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "pyav": av.__version__,
                "ffmpeg": os.path.basename(render.ffmpeg_exe())}  # fmt: skip
    try:
        versions["moviepy"] = metadata.version("moviepy")
    except metadata.PackageNotFoundError:
        pass
    return versions


def scratch_run(source: RunPaths, root: Path) -> RunPaths:
    """A run folder with the source run's tables (read-only use) and an empty cut cache."""
    run = RunPaths(root)
    run.tables.mkdir(parents=True, exist_ok=True)
    for table in ("frames", "videos"):
        shutil.copy(source.table(table), run.table(table))
    return run


def with_ffmpeg(jobs, source: RunPaths, options: RenderConfig, out: Path) -> list[Path]:
    run = scratch_run(source, out / "run")
    roots = render.run_source_roots(source)  # the scratch run has no config: read sources where the real run may
    return [render.render_job(job, run, options, dest=out / f"{job.name}.mp4", source_roots=roots).path for job in jobs]


def with_moviepy(jobs, source: RunPaths, options: RenderConfig, out: Path) -> list[Path]:
    from moviepy import ImageClip, VideoFileClip, concatenate_videoclips

    videos = read_table(source.table("videos")).set_index("video_id")
    size = (options.width, options.height)
    written = []
    for job in jobs:
        opened, parts = [], []
        try:
            card = render.title_card(job.title, job.subtitle(), size)
            parts.append(ImageClip(np.asarray(card)).with_duration(round(options.title_seconds * options.fps) / options.fps))
            for segment in job.segments:
                width, height = videos.width[segment.video_id], videos.height[segment.video_id]
                fit = (size[0], None) if width / height >= size[0] / size[1] else (None, size[1])  # moviepy 2: (w, h)
                clip = VideoFileClip(segment.source, target_resolution=fit, audio=bool(videos.has_audio[segment.video_id]))
                opened.append(clip)
                duration = round(segment.duration * options.fps) / options.fps
                part = clip.subclipped(segment.start, min(segment.start + duration, clip.duration))
                if tuple(part.size) != size:
                    part = part.with_background_color(size=size, color=(0, 0, 0), pos="center")
                parts.append(part)
            final = concatenate_videoclips(parts, method="chain")
            target = out / f"{job.name}.mp4"
            final.write_videofile(
                str(target), fps=options.fps, codec="libx264", preset=options.preset, audio_codec="aac",
                audio_fps=48000, audio_bitrate=f"{options.audio_bitrate}k", pixel_format="yuv420p",
                ffmpeg_params=["-crf", str(options.crf), "-movflags", "+faststart"], logger=None,
                temp_audiofile_path=str(out),
            )  # fmt: skip
            final.close()
            written.append(target)
        finally:
            for clip in parts + opened:
                clip.close()
    return written


def psnr(a: Path, b: Path, every: int = 6) -> tuple[float, int]:
    """Mean PSNR (dB) over every `every`-th frame pair of two videos of the same size, and the frames compared."""
    import av

    values = []
    with av.open(str(a)) as first, av.open(str(b)) as second:
        for i, (fa, fb) in enumerate(zip(first.decode(video=0), second.decode(video=0))):
            if i % every:
                continue
            x, y = fa.to_ndarray(format="rgb24").astype(np.float64), fb.to_ndarray(format="rgb24").astype(np.float64)
            mse = float(np.mean((x - y) ** 2))
            values.append(99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return (float(np.mean(values)) if values else float("nan")), len(values)


def duration(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        return container.duration / av.time_base


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/demo"), help="an extracted and clustered run")
    parser.add_argument("--clusters", type=int, default=5, help="render the first N clusters (0 = all)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per engine (median reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    try:
        import moviepy  # noqa: F401
    except ImportError:
        print("error: moviepy is needed for the baseline: pip install moviepy (or pip install -e .[bench])", file=sys.stderr)
        return 2

    source = RunPaths(args.run)
    options = RenderConfig()  # the render stage's defaults
    jobs = render.cluster_jobs(source, options)
    if args.clusters:
        jobs = jobs[: args.clusters]
    if not jobs:
        print(f"error: {args.run} has no clusters; run the pipeline up to the cluster stage first", file=sys.stderr)
        return 2
    segments = sum(len(job.segments) for job in jobs)
    print(f"machine: {machine()}")
    print(f"{len(jobs)} cluster videos, {segments} segments from {args.run}; {options.width}x{options.height} "
          f"{options.fps:g} fps, crf {options.crf} {options.preset}, title {options.title_seconds} s")  # fmt: skip

    workdir = Path(tempfile.mkdtemp(prefix="frameatlas-bench-render-"))
    engines = {"ffmpeg": with_ffmpeg, "moviepy": with_moviepy}
    times: dict[str, list[float]] = {name: [] for name in engines}
    outputs: dict[str, list[Path]] = {}
    fds_before = open_fds()
    try:
        for attempt in range(args.repeat):
            order = list(engines) if attempt % 2 == 0 else list(reversed(engines))
            for name in order:
                out = workdir / f"{name}-{attempt}"
                out.mkdir()
                started = time.perf_counter()
                outputs[name] = engines[name](jobs, source, options, out)
                times[name].append(time.perf_counter() - started)
                print(f"  {name:8s} run {attempt + 1}: {times[name][-1]:7.2f} s")
        import psutil

        fds_after = open_fds()
        children = psutil.Process().children(recursive=True)
        seconds = {name: sum(duration(p) for p in paths) for name, paths in outputs.items()}
        sizes = {name: sum(p.stat().st_size for p in paths) for name, paths in outputs.items()}
        quality = [psnr(a, b) for a, b in zip(outputs["ffmpeg"], outputs["moviepy"])]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "machine": machine(), "run": str(args.run), "videos": len(jobs), "segments": segments,
        "options": options.model_dump(),
        "engines": {name: {"wall_seconds": round(median[name], 2), "runs": [round(t, 2) for t in times[name]],
                           "output_seconds": round(seconds[name], 2), "x_real_time": round(seconds[name] / median[name], 2),
                           "megabytes": round(sizes[name] / 1e6, 2)} for name in engines},  # fmt: skip
        "moviepy_over_ffmpeg": round(median["moviepy"] / median["ffmpeg"], 2),
        "psnr_db_between_engines": round(float(np.mean([q for q, _ in quality])), 2),
        "frames_compared": int(sum(n for _, n in quality)),
        "open_fds_left": fds_after - fds_before,
        "child_processes_left": len(children),
    }  # fmt: skip
    print(f"\n{'engine':8s} {'wall s':>8s} {'video s':>8s} {'x real time':>12s} {'MB':>7s}")
    for name, row in report["engines"].items():
        print(f"{name:8s} {row['wall_seconds']:8.2f} {row['output_seconds']:8.2f} {row['x_real_time']:12.2f} {row['megabytes']:7.2f}")
    print(f"moviepy / ffmpeg wall time: {report['moviepy_over_ffmpeg']:.2f}x")
    print(f"PSNR between the engines' outputs: {report['psnr_db_between_engines']:.2f} dB over {report['frames_compared']} frames")
    print(f"left open after all runs: {report['open_fds_left']} file descriptors, {report['child_processes_left']} child processes")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
