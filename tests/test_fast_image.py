"""`models.image.runtime`: the CLIP image tower quantized (torch int8) or on ONNX Runtime (fp32, int8), on the
tiny test CLIP. Vectors stay within the stated tolerance of fp32's; the model id is fp32's only when they
match it (`SAME_MODEL_MIN_COSINE`), and the ONNX export is made once per model."""

from __future__ import annotations

import numpy as np
import pytest
import tinyclip
from frameatlas import models
from frameatlas.config import ModelsConfig
from frameatlas.models import fast_image
from frameatlas.models.fast_image import SAME_MODEL_MIN_COSINE, probe_images
from frameatlas.store import read_table
from runs import embedded_run

# int8 moves vectors more than fp32 export does; on the tiny model's random weights this is what it keeps
INT8_MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return tinyclip.save_tiny_local_dir(tmp_path_factory.mktemp("fast-image") / "tiny-clip")


def _encoder(clip, runtime: str):
    models.clear_loaded()
    return models.image_encoder(ModelsConfig(image={"name": f"local-dir:{clip}", "pretrained": None, "runtime": runtime}))


def _images():
    return probe_images(6, size=200, seed=42)  # not the probes the agreement was measured on


@pytest.mark.parametrize(
    "runtime, same_id, min_cosine",
    [("onnx", True, SAME_MODEL_MIN_COSINE), ("torch-int8", False, INT8_MIN_COSINE), ("onnx-int8", False, INT8_MIN_COSINE)],
)
def test_fast_tower_vectors_and_model_id(tiny_clip, runtime, same_id, min_cosine):
    reference = _encoder(tiny_clip, "torch")
    expected, base_id = reference.encode_images(_images()), reference.record.model_id
    fast = _encoder(tiny_clip, runtime)
    vectors = fast.encode_images(_images())
    assert vectors.shape == expected.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.sum(vectors * expected, axis=1).min() >= min_cosine
    assert (fast.record.model_id == base_id) is same_id
    if not same_id:
        assert fast.record.model_id == f"{base_id}-{runtime}"
    assert f"image tower on {runtime}" in fast.record.backend and fast.record.dim == expected.shape[1]
    # the text tower is fp32's: text vectors are the same
    np.testing.assert_allclose(fast.encode_text(["a red car"]), reference.encode_text(["a red car"]), atol=1e-6)


def test_onnx_vectors_that_do_not_match_fp32_get_their_own_id(tiny_clip, monkeypatch):
    monkeypatch.setattr(fast_image, "SAME_MODEL_MIN_COSINE", 1.5)  # no tower can meet this
    fast = _encoder(tiny_clip, "onnx")
    assert fast.record.model_id.endswith("-onnx")


def test_the_onnx_export_is_made_once_per_model(tiny_clip, monkeypatch):
    first = _encoder(tiny_clip, "onnx-int8")
    first.encode_images(_images()[:1])
    exports = sorted(fast_image._cache_folder(first.base.record, first.base).glob("*.onnx"))
    assert [p.name for p in exports] == ["image_tower-int8.onnx", "image_tower.onnx"]
    stamps = [p.stat().st_mtime_ns for p in exports]

    def no_second_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(fast_image, "_export_onnx", no_second_export)
    monkeypatch.setattr(fast_image, "_quantize_onnx", no_second_export)
    again = _encoder(tiny_clip, "onnx-int8")
    np.testing.assert_allclose(again.encode_images(_images()[:2]), first.encode_images(_images()[:2]), atol=1e-6)
    assert [p.stat().st_mtime_ns for p in exports] == stamps


def test_a_run_with_the_int8_tower_keeps_its_vectors_apart(tiny_clip, tmp_path):
    image = {"name": f"local-dir:{tiny_clip}", "pretrained": None, "on_missing_weights": "error"}
    _, fp32_run = embedded_run(tmp_path, image, name="fp32")
    _, int8_run = embedded_run(tmp_path, {**image, "runtime": "onnx-int8"}, name="int8")
    fp32, int8 = read_table(fp32_run.table("embeddings")), read_table(int8_run.table("embeddings"))
    assert set(int8.model_id) == {f"{fp32.model_id.iloc[0]}-onnx-int8"}
    assert (int8_run.root / "vectors" / int8.model_id.iloc[0]).is_dir()
    assert list(int8.frame_key) == list(fp32.frame_key)
    cosines = np.sum(np.stack(int8.vector) * np.stack(fp32.vector), axis=1)
    assert cosines.min() >= INT8_MIN_COSINE
