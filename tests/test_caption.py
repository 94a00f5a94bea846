"""The caption stage: clip-interrogator prompts from the run's CLIP model, offline, cached."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinyblip
import tinyclip
from frameatlas import caption, models
from frameatlas.caption import caption_frames, load_caption_model, term_lists
from frameatlas.config import CaptionConfig, ModelsConfig
from frameatlas.embed import embed_captions
from frameatlas.files import UnsafePath, is_temp_name
from frameatlas.models import ModelUnavailable
from frameatlas.search import search
from frameatlas.store import read_table, write_table
from PIL import Image
from runs import embedded_run

SHORT_LISTS = 30  # term_limit for the tests: ~100 terms instead of ~110k


@pytest.fixture
def tiny_clip(tmp_path) -> dict:
    folder = tinyclip.save_tiny_local_dir(tmp_path / "tiny-clip")
    return {"name": f"local-dir:{folder}", "pretrained": None}


def clip_run(tmp_path: Path, image_model: dict, name: str = "c", **caption_options):
    options = {"term_limit": SHORT_LISTS, "caption_model": "none", **caption_options}
    return embedded_run(tmp_path, image_model, name=name, models={"cache_dir": str(tmp_path / "hub-cache")}, caption=options)


def test_term_lists_are_the_packages_lists():
    import clip_interrogator

    data = Path(clip_interrogator.__file__).parent / "data"
    raw = {name: [line.strip() for line in (data / f"{name}.txt").read_text(encoding="utf-8").splitlines()]
           for name in ("artists", "flavors", "mediums", "movements", "negative")}  # fmt: skip
    full = term_lists()
    assert len(full["flavors"]) == len([f for f in raw["flavors"] if f]) > 100_000
    assert full["artists"][: len(raw["artists"])] == [f"by {a}" for a in raw["artists"] if a]
    assert len(full["artists"]) == 2 * len([a for a in raw["artists"] if a])
    assert "trending on Artstation" in full["trendings"] and len(full["trendings"]) == 72
    short = term_lists(limit=5)
    assert short["flavors"] == full["flavors"][:5] and len(short["artists"]) == 10 and len(short["trendings"]) == 72


def test_trimmed_text_encoding_equals_the_full_context(tiny_clip):
    encoder = models.image_encoder(ModelsConfig(image=tiny_clip))
    texts = ["a", "a rabbit in a meadow at dawn, highly detailed", "x " * 100, "by Abidin Dino", "", "🐇 rabbit"]
    full = encoder.encode_text(texts)
    fast = encoder.encode_text_many(texts, batch_size=4)
    np.testing.assert_allclose(fast, full, atol=1e-5)
    assert fast.shape == (len(texts), encoder.dim)


def test_fast_and_classic_prompts_are_what_clip_interrogator_writes(tiny_clip, tmp_path):
    """Our batched composition against the package's own interrogate_fast / interrogate_classic."""
    from clip_interrogator import LabelTable

    encoder = models.image_encoder(ModelsConfig(image=tiny_clip))
    options = CaptionConfig(term_limit=SHORT_LISTS, max_flavors=4)
    terms = caption.load_term_tables(encoder, term_lists(SHORT_LISTS), cache=None)
    ours = caption.FrameInterrogator(encoder, terms, options)
    package = ours._chain_interrogator()
    package.clip_model, package.clip_preprocess, package.config.chunk_size = encoder.model, encoder._preprocess, 4096
    for name in ("artists", "flavors", "mediums", "movements", "trendings"):
        table = LabelTable([], None, package)  # the package's own way to build a table without encoding
        table.labels, table.embeds = terms.labels[name], list(terms.vectors[name])
        setattr(package, name, table)
    images = [Image.new("RGB", (80, 60), colour) for colour in ("red", "navy", "olive")]
    features = encoder.encode_images(images)

    def parts(prompt: str) -> list[str]:  # terms whose scores tie to ~1e-7 may swap places
        return sorted(prompt.removeprefix(" , ").split(", "))

    for i, image in enumerate(images):
        for given in ("a photo of a thing", ""):  # the package needs a caption: " " stands for none
            expected_fast = package.interrogate_fast(image, max_flavors=4, caption=given or " ")
            expected_classic = package.interrogate_classic(image, max_flavors=4, caption=given or " ")
            assert parts(ours.fast(features[i : i + 1], [given])[0]) == parts(expected_fast)
            assert parts(ours.classic(features[i : i + 1], [given])[0]) == parts(expected_classic)
            assert ours.classic(features[i : i + 1], [given])[0].split(", ")[:3] == expected_classic.removeprefix(" , ").split(", ")[:3]


def test_every_frame_gets_a_prompt_of_terms_and_the_term_cache_is_reused(tiny_clip, tmp_path):
    cfg, run = clip_run(tmp_path, tiny_clip)
    first = caption_frames(cfg, run)
    table = read_table(run.table("captions"))
    frames = read_table(run.table("frames"))
    assert list(table.frame_key) == list(frames.frame_key)
    vocabulary = {term for terms in term_lists(SHORT_LISTS).values() for term in terms}
    for prompt in table.prompt:
        parts = prompt.split(", ")
        assert 1 <= len(parts) <= cfg.caption.max_flavors and set(parts) <= vocabulary, prompt
    assert set(table["mode"]) == {"fast"} and set(table.caption) == {""}
    assert first.terms.computed == sum(map(len, term_lists(SHORT_LISTS).values())) and first.terms.cached == 0
    cache = tmp_path / "hub-cache" / "frameatlas-terms" / first.clip_model.model_id
    assert len(list(cache.glob("*.npy"))) == 6

    # Another run (and process-fresh model registry) with the same CLIP model: no term is encoded again.
    models.clear_loaded()
    cfg2, run2 = clip_run(tmp_path, tiny_clip, name="c2")
    second = caption_frames(cfg2, run2)
    assert second.terms.computed == 0 and second.terms.cached == first.terms.computed
    assert list(read_table(run2.table("captions")).prompt) == list(table.prompt)

    # The same run again: every frame's prompt comes from the caption cache.
    again = caption_frames(cfg, run)
    assert again.captioned == 0 and again.cached == len(frames) and again.terms is None
    # Another mode is another cache entry; the frames are captioned again.
    cfg.caption.mode = "classic"
    classic = caption_frames(cfg, run)
    assert classic.captioned == len(frames) and set(classic.table["mode"]) == {"classic"}


@pytest.mark.slow
def test_negative_and_best_modes_chain_terms_with_the_package(tiny_clip, tmp_path):
    cfg, run = clip_run(tmp_path, tiny_clip, max_flavors=3, intermediate_count=16, term_limit=10)
    lists = term_lists(10)
    terms = {t for name in caption.MERGED_LISTS for t in lists[name]}
    cfg.caption.mode = "negative"
    negative = caption_frames(cfg, run)
    assert negative.captioned == negative.frames == len(negative.table)
    for prompt in negative.table.prompt:
        assert set(prompt.split(", ")) <= set(lists["flavors"]) | set(lists["negative"]), prompt
    cfg.caption.mode = "best"
    best = caption_frames(cfg, run)
    assert best.captioned == best.frames
    for prompt in best.table.prompt:  # the chained, fast or classic prompt ("<medium> <artist>, ...")
        for part in prompt.split(", "):
            assert part in terms or any(part.startswith(f"{m} ") for m in lists["mediums"]), prompt


def test_caption_channel_is_searchable_and_clusterable(tiny_clip, tmp_path):
    cfg, run = clip_run(tmp_path, tiny_clip)
    table = caption_frames(cfg, run).table
    counts, text_model = embed_captions(cfg, run)
    assert counts["caption_vectors"] == len(table) and counts["caption_index_upserted"] == len(table)
    assert text_model.model_id == "st-all-MiniLM-L6-v2"
    target = table.iloc[3]
    result = search(run, target.prompt, channels=["caption"], top_k=3)
    assert result.channels == ["caption"]
    same_prompt = set(table.frame_key[table.prompt == target.prompt])
    assert result.hits.frame_key[0] in same_prompt and result.hits.score[0] == pytest.approx(1.0, abs=1e-5)
    # the vectors are also in their own Chroma collection
    from frameatlas.index import open_index

    index = open_index(run.root)
    assert index.has_collection(f"caption-{text_model.model_id}")
    # a second pass encodes nothing new
    again, _ = embed_captions(cfg, run)
    assert again["caption_index_upserted"] == 0
    from frameatlas.cluster import cluster_run

    cfg.cluster.vectors, cfg.cluster.k = "caption", 2
    clustered = cluster_run(cfg, run)
    assert clustered.counts["clusters"] == 2 and clustered.counts["name_source"] == "captions"


def test_offline_caption_model_falls_back_to_clip_only_and_says_so(tiny_clip, tmp_path):
    cfg, run = clip_run(tmp_path, tiny_clip, caption_model="blip-base")
    summary = caption_frames(cfg, run)
    record = summary.caption_model
    assert record.model_id == caption.CLIP_ONLY and record.requested == "blip-base"
    assert "Salesforce/blip-image-captioning-base is not cached and HF_HUB_OFFLINE is set" in record.fallback_reason
    assert "could not be loaded" in record.banner and "prompts hold CLIP-ranked terms only" in record.banner
    assert any("CLIP-ranked terms only" in note for note in summary.notes)
    assert summary.table.prompt.str.len().min() > 0
    assert [m["kind"] for m in summary.model_records] == ["image", "caption"]

    cfg.caption.on_missing_weights = "error"
    with pytest.raises(ModelUnavailable, match=r"blip-base.*hub cache.*Salesforce/blip-image-captioning-base"):
        load_caption_model(cfg.caption, cfg.models)
    with pytest.raises(ModelUnavailable, match=r"no such folder.*blip-base, blip-large, none.*--kind caption.*caption\.caption_model"):
        load_caption_model(CaptionConfig(caption_model=str(tmp_path / "nowhere")), cfg.models)


def test_no_network_call_is_attempted(tiny_clip, tmp_path, monkeypatch):
    """Offline config: neither frameatlas nor clip-interrogator (its cache download) touches the network."""
    import clip_interrogator.clip_interrogator as package

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # offline by config alone
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(package, "_download_file", refuse)
    monkeypatch.setattr(package.requests, "get", refuse)
    cfg, run = clip_run(tmp_path, tiny_clip, caption_model="blip-large")
    cfg.models.allow_download = False
    for mode in ("fast", "negative"):
        cfg.caption.mode = mode
        cfg.caption.term_limit, cfg.caption.intermediate_count, cfg.caption.max_flavors = 8, 16, 2
        caption_frames(cfg, run)
    assert attempts == []


def test_a_local_blip_model_writes_the_caption_the_prompt_starts_with(tiny_clip, tmp_path):
    folder = tinyblip.save_tiny_blip(tmp_path / "tiny-blip")
    cfg, run = clip_run(tmp_path, tiny_clip, caption_model=str(folder), mode="classic", max_caption_tokens=5)
    summary = caption_frames(cfg, run)
    assert summary.caption_model.backend == "transformers" and summary.caption_model.fallback_reason is None
    table = summary.table
    assert table.caption.str.len().min() > 0
    for row in table.itertuples():
        assert 1 <= len(row.caption.split()) <= 5 and set(row.caption.split()) <= set(tinyblip.WORDS)
        assert row.prompt.startswith(row.caption + ", ")
    assert summary.counts["caption_model_seconds"] > 0


def test_blip_alone_captions_frames_when_the_image_model_has_no_text_side(tmp_path):
    folder = tinyblip.save_tiny_blip(tmp_path / "tiny-blip")
    cfg, run = clip_run(tmp_path, {"name": "fallback"}, caption_model=str(folder))
    summary = caption_frames(cfg, run)
    assert summary.mode == "caption-only" and (summary.table.prompt == summary.table.caption).all()
    assert summary.table.prompt.str.len().min() > 0


def test_without_clip_or_caption_model_there_are_no_captions_and_no_caption_channel(tmp_path):
    cfg, run = clip_run(tmp_path, {"name": "fallback"})
    run.table("caption_embeddings").parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"frame_key": ["old"], "model_id": ["m"], "text": ["stale"], "vector": [np.zeros(3)]}).to_parquet(
        run.table("caption_embeddings")
    )
    summary = caption_frames(cfg, run)
    assert summary.table.empty and summary.captioned == 0
    assert "no captions" in summary.notes[0] and "fallback-colour-texture" in summary.notes[0]
    assert read_table(run.table("captions")).empty
    counts, record = embed_captions(cfg, run)
    assert counts == {"caption_vectors": 0} and record is None
    assert not run.table("caption_embeddings").exists()  # stale caption vectors never outlive their captions


def test_report_helpers(tiny_clip, tmp_path):
    cfg, run = clip_run(tmp_path, tiny_clip)
    table = caption_frames(cfg, run).table
    html = caption.caption_sample_html(run, table, count=4)
    assert html.count("<img") == 4 and "data:image/jpeg;base64" in html
    lengths, frequent = caption.term_statistics(table)
    assert lengths.loc["terms", "max"] <= cfg.caption.max_flavors
    assert frequent.frames.iloc[0] == max(sum(term in p.split(", ") for p in table.prompt) for term in frequent.term)


def test_a_video_with_an_unreadable_thumbnail_is_skipped_with_its_reason_and_the_others_captioned(tiny_clip, tmp_path):
    cfg, run = clip_run(tmp_path, tiny_clip)
    frames = read_table(run.table("frames"))
    two = frames[frames.video_name == "two.mp4"]
    broken = run.absolute(two.thumbnail.iloc[1])
    original = broken.read_bytes()
    broken.write_bytes(b"not a JPEG")
    for shard in (run.root / "vectors").rglob(f"{two.video_id.iloc[0]}/*.parquet"):
        shard.unlink()  # its CLIP vectors must be made now, from the thumbnails
    (tmp_path / "videos" / "two.mp4").unlink()  # (with its source there, they would come from its decoded frames)

    summary = caption_frames(cfg, run)
    [skipped] = summary.skipped
    assert (skipped.path, skipped.stage, skipped.status) == (str(tmp_path / "videos" / "two.mp4"), "caption", "skipped")
    assert skipped.reason.startswith(f"no captions for its {len(two)} frames: no frame vectors: ")
    assert str(broken) in skipped.reason and "thumbnail cannot be read" in skipped.reason
    table = read_table(run.table("captions"))
    assert list(table.frame_key) == list(frames.frame_key[frames.video_name == "one.mp4"])
    assert summary.captioned == len(table) and summary.result()["skipped"] == [skipped.as_dict()]
    assert [p for p in run.root.rglob("*") if is_temp_name(p.name)] == []

    broken.write_bytes(original)  # mended: only the skipped video is captioned next time
    again = caption_frames(cfg, run)
    assert (again.captioned, again.cached, again.skipped) == (len(two), len(frames) - len(two), [])
    assert list(read_table(run.table("captions")).frame_key) == list(frames.frame_key)


def test_a_thumbnail_path_outside_the_run_is_refused_before_any_work(tiny_clip, tmp_path):
    cfg, run = clip_run(tmp_path, tiny_clip)
    frames = read_table(run.table("frames"))
    frames.loc[4, "thumbnail"] = "/etc/hostname"
    write_table(frames, run.table("frames"))
    with pytest.raises(UnsafePath, match=r"tables/frames.parquet row 4, column thumbnail: path '/etc/hostname' .*outside"):
        caption_frames(cfg, run)
    assert not run.table("captions").exists() and not (run.root / "captions").exists()


def test_the_caption_model_failing_on_one_video_skips_only_that_video(tmp_path):
    folder = tinyblip.save_tiny_blip(tmp_path / "tiny-blip")
    cfg, run = clip_run(tmp_path, {"name": "fallback"}, caption_model=str(folder))
    frames = read_table(run.table("frames"))
    broken = run.absolute(frames.thumbnail[frames.video_name == "one.mp4"].iloc[-1])
    broken.write_bytes(b"")  # a thumbnail truncated to nothing: BLIP gets no image for this video
    summary = caption_frames(cfg, run)
    assert [(s.path, s.stage) for s in summary.skipped] == [(str(tmp_path / "videos" / "one.mp4"), "caption")]
    assert summary.skipped[0].reason.startswith("no captions for its 8 frames: FileNotFoundError: ")
    assert set(summary.table.video_id) == set(frames.video_id[frames.video_name == "two.mp4"])
    assert summary.table.caption.str.len().min() > 0
