"""Search quality tools: exact top-k, the index comparison, impulse noise and the robustness table."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from frameatlas.evaluation import (
    IMPULSE_SEVERITIES,
    compare_indexes,
    exact_search,
    noise_robustness,
    robustness_figure,
    robustness_image,
    salt_and_pepper,
    synthetic_corpus,
)
from frameatlas.evaluation.index_comparison import SCRATCH_PREFIX
from frameatlas.models import ColourTextureEncoder
from PIL import Image


@pytest.fixture(scope="module")
def clustered():
    return synthetic_corpus(2_000, 64, queries=50, clusters=40, seed=3)


# --------------------------------------------------------------------------- exact_search


def test_exact_search_agrees_with_brute_force_and_sorts_by_score():
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((300, 16)).astype(np.float32) * 3  # not normalised: it must do that
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    indices, scores = exact_search(corpus, queries, k=5)

    unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    brute = q @ unit.T
    expected = np.argsort(-brute, axis=1)[:, :5]
    assert indices.shape == scores.shape == (7, 5)
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, axis=1), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_exact_search_chunks_queries_clips_k_and_breaks_ties_by_row():
    corpus, queries = synthetic_corpus(500, 8, queries=130, clusters=5, seed=1)
    from frameatlas.evaluation import index_comparison

    small_blocks = index_comparison._topk_unit(corpus, queries, 4, block_bytes=4 * 500 * 3)  # 3 queries per chunk
    np.testing.assert_array_equal(small_blocks[0], exact_search(corpus, queries, 4)[0])

    indices, scores = exact_search(np.eye(3, dtype=np.float32), np.array([1.0, 0, 0]), k=10)
    assert indices.tolist() == [[0, 1, 2]] and scores[0, 0] == pytest.approx(1.0)  # k clipped to n; ties by row
    with pytest.raises(ValueError, match="dimension"):
        exact_search(corpus, np.ones((1, 9)), k=1)


# --------------------------------------------------------------------------- compare_indexes


def test_compare_indexes_recall_latency_and_cleanup(clustered, tmp_path):
    corpus, queries = clustered
    table = compare_indexes(corpus, queries, k=10, workdir=tmp_path)

    assert list(table.method) == ["exact", "faiss-flat", "faiss-lsh", "chroma-hnsw"]
    assert list(table.columns) == [
        "method", "recall@10", "query_ms", "query_p50_ms", "query_p95_ms", "batch_qps", "build_s", "index_mb", "notes"
    ]  # fmt: skip
    recall = table.set_index("method")["recall@10"]
    assert recall["exact"] == 1.0 and recall["faiss-flat"] == 1.0
    assert recall["chroma-hnsw"] >= 0.9
    assert 0.0 <= recall["faiss-lsh"] <= 1.0
    assert (table.query_ms > 0).all() and (table.batch_qps > 0).all() and (table.build_s >= 0).all()
    assert "128 bits" in table.set_index("method").notes["faiss-lsh"]  # default 2 x dim
    assert table.attrs["n"] == 2_000 and table.attrs["queries"] == 50 and table.attrs["k"] == 10
    assert list(tmp_path.iterdir()) == []  # Chroma's temporary store is gone


def test_chroma_scratch_index_removes_only_the_folder_it_made(tmp_path):
    corpus, queries = synthetic_corpus(300, 16, queries=5, clusters=10, seed=2)
    # What the work folder already holds, including a folder whose name looks like a scratch index.
    (tmp_path / "keep.txt").write_text("mine")
    lookalike = tmp_path / f"{SCRATCH_PREFIX}old"
    lookalike.mkdir()
    (lookalike / "data.bin").write_bytes(b"x")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    table = compare_indexes(corpus, queries, k=3, methods=("chroma-hnsw",), workdir=tmp_path, batched=False)
    assert table["recall@3"].iloc[0] > 0.5 and table.index_mb.iloc[0] > 0  # the index was built in a folder of its own
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

    with pytest.raises(Exception, match="no-such-space"):  # a build failing half way removes its own folder, only it
        compare_indexes(corpus, queries, k=3, methods=("chroma-hnsw",), workdir=tmp_path, hnsw={"space": "no-such-space"})
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_evaluation_does_not_import_the_embed_stage():
    code = "import sys, frameatlas.evaluation; print(sorted(m for m in sys.modules if m.startswith('frameatlas.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "frameatlas.evaluation.robustness" in loaded and "frameatlas.embed" not in loaded


def test_compare_indexes_on_corpus_rows_lsh_bits_and_rerank(clustered):
    corpus, _ = clustered
    table_from_run = (pd.DataFrame({"frame_key": [f"v:{i}" for i in range(len(corpus))]}), corpus)  # load_vectors shape
    table = compare_indexes(
        table_from_run, 30, k=5, methods=("exact", "faiss-lsh:32", "faiss-lsh:512", "faiss-lsh-rerank"), batched=False
    )
    recall = table.set_index("method")["recall@5"]
    assert recall["exact"] == 1.0
    assert recall["faiss-lsh:512"] >= recall["faiss-lsh:32"]  # 16x the bits: far better angle estimates
    assert recall["faiss-lsh-rerank"] >= recall["faiss-lsh:512"] - 0.05
    assert table.batch_qps.isna().all()
    assert "corpus rows" in table.attrs["query_source"]
    with pytest.raises(ValueError, match="unknown method"):
        compare_indexes(corpus, 3, methods=("annoy",))


# --------------------------------------------------------------------------- impulse noise


def test_salt_and_pepper_replaces_amount_of_pixels_with_black_or_white():
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 255, (80, 100, 3), dtype=np.uint8)  # no pure 0/255 values to begin with
    image = Image.fromarray(pixels)
    noisy = np.asarray(salt_and_pepper(image, 0.1, rng=7))

    changed = np.any(noisy != pixels, axis=2)
    assert changed.sum() == pytest.approx(0.1 * 80 * 100, abs=2)
    values = noisy[changed]
    assert set(map(tuple, values)) <= {(0, 0, 0), (255, 255, 255)}  # whole pixels, all channels
    assert abs((values[:, 0] == 255).sum() - (values[:, 0] == 0).sum()) <= 1  # half salt, half pepper
    assert np.array_equal(np.asarray(image), pixels)  # input untouched

    np.testing.assert_array_equal(noisy, np.asarray(salt_and_pepper(image, 0.1, rng=7)))
    assert not np.array_equal(noisy, np.asarray(salt_and_pepper(image, 0.1, rng=8)))
    np.testing.assert_array_equal(np.asarray(salt_and_pepper(image, 0.0, rng=7)), pixels)
    grey = salt_and_pepper(image.convert("L"), 0.27, rng=np.random.default_rng(1))
    assert grey.mode == "L" and set(np.unique(np.asarray(grey))) >= {0, 255}
    with pytest.raises(ValueError):
        salt_and_pepper(image, 1.5)


def _pattern_images(count: int) -> list[Image.Image]:
    """Distinct colours and stripe patterns, so the colour/texture descriptor tells them apart."""
    images = []
    for i in range(count):
        hue_rgb = np.array(Image.new("HSV", (1, 1), (int(255 * i / count), 200, 200)).convert("RGB")).reshape(3)
        pixels = np.tile(hue_rgb, (48, 64, 1)).astype(np.uint8)
        period = 4 + 3 * i
        if i % 2:
            pixels[:, (np.arange(64) // period) % 2 == 0] //= 3  # vertical stripes
        else:
            pixels[(np.arange(48) // period) % 2 == 0, :] //= 3  # horizontal stripes
        images.append(Image.fromarray(pixels))
    return images


def test_noise_robustness_with_the_weight_free_encoder(tmp_path):
    encoder = ColourTextureEncoder()
    images = _pattern_images(8)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"f{i}.png")
        image.save(paths[-1])
    vectors = encoder.encode_images(images)
    keys = [f"video:{i}" for i in range(len(images))]

    severities = (0.0, *IMPULSE_SEVERITIES)
    table = noise_robustness(encoder, paths, vectors, keys, severities=severities, sample=6, seed=0)
    assert list(table.columns) == ["severity", "recall@1", "recall@5", "median_rank", "mean_cosine", "n_queries"]
    assert len(table) == len(severities) and table.severity.tolist() == list(severities)
    clean = table.iloc[0]
    assert clean["recall@1"] == 1.0 and clean["recall@5"] == 1.0 and clean["median_rank"] == 0
    assert clean["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert (table.n_queries == 6).all()
    assert table[["recall@1", "recall@5"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (table["recall@5"] >= table["recall@1"]).all()

    again = noise_robustness(encoder, dict(zip(keys[:3], paths[:3])), vectors, keys, severities=(0.0, 0.17), seed=0)
    assert again.n_queries.tolist() == [3, 3] and again["recall@1"].iloc[0] == 1.0  # a mapping of a subset
    pd.testing.assert_frame_equal(
        again, noise_robustness(encoder, dict(zip(keys[:3], paths[:3])), vectors, keys, severities=(0.0, 0.17), seed=0)
    )  # deterministic for a seed


def test_robustness_figure_and_image_draw_a_chart_and_survive_empty_tables():
    table = pd.DataFrame({"severity": [0.0, 0.03, 0.27], "recall@1": [1.0, 0.8, 0.2], "recall@5": [1.0, 0.9, 0.5],
                          "n_queries": [3, 3, 3]})  # fmt: skip
    image = robustness_image(table)
    assert isinstance(image, Image.Image) and image.size == (640, 400)
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 3  # something was drawn
    assert robustness_image(pd.DataFrame()).size == (640, 400)

    pytest.importorskip("plotly")
    figure = robustness_figure(table)
    assert [trace.name for trace in figure.data] == ["recall@1", "recall@5"]
    assert list(figure.data[1].y) == [1.0, 0.9, 0.5]
    assert len(robustness_figure(pd.DataFrame()).data) == 0
