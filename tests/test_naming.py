"""Cluster names come from descriptive words: no artist credits, no site names, never the same twice."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from frameatlas.cluster.algorithms import ClusterLabels
from frameatlas.cluster.naming import descriptive_text, name_clusters

CREDIT_WORDS = re.compile(r"\b(inspired|by|style|trending|featured|artstation|behance|pixiv|deviantart|detailed)\b", re.I)


def _clusters(sizes: list[int]) -> ClusterLabels:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return ClusterLabels(labels=labels, centroids=np.eye(len(sizes)), distances=np.zeros(len(labels)), method="kmeans")


def test_clip_interrogator_prompts_name_clusters_by_what_they_show():
    # prompts as the caption stage writes them without a caption model: CLIP-ranked terms of every list
    rabbit = ["a rabbit, inspired by Beatrix Potter, by Albrecht Dürer, meadow, trending on artstation, highly detailed",
              "rabbit in grass, inspired by Beatrix Potter, meadow, featured on behance",
              "a white rabbit, by Albrecht Dürer, inspired by Beatrix Potter, meadow, 4k"]  # fmt: skip
    street = ["a car, inspired by Edward Hopper, by Syd Mead, city street, trending on pixiv",
              "cars at night, inspired by Edward Hopper, street, deviantart contest winner, highly detailed",
              "a car on a street, by Syd Mead, inspired by Edward Hopper, in the style of Edward Hopper"]  # fmt: skip
    names = name_clusters(_clusters([3, 3]), captions=rabbit + street, terms=3).set_index("label").name
    for name in names:
        assert not CREDIT_WORDS.search(name), name
        assert not re.search(r"\b(potter|beatrix|albrecht|dürer|hopper|edward|syd|mead)\b", name, re.I), name
    assert {"rabbit", "meadow"} <= set(names[0].split(", ")) and "car" in names[1] and "street" in names[1]


def test_clusters_with_the_same_best_terms_get_distinct_names_from_their_next_terms():
    same = "a red car on a street"
    captions = [same] * 3 + [same] * 3 + ["rain"] + ["a dog in a park"] * 3
    names = name_clusters(_clusters([3, 4, 3]), captions=captions, terms=3).set_index("label").name
    assert names.is_unique and not any("(" in name for name in names), names.tolist()
    assert set(names[0].split(", ")) == {"car", "red", "street"}
    assert "rain" in names[1].split(", ") and len(names[1].split(", ")) == 3


def test_descriptive_text_keeps_plain_phrases():
    assert descriptive_text("a man standing, a rocky beach, oil painting") == "a man standing, a rocky beach, oil painting"
    assert descriptive_text("inspired by Claude Monet, by Monet") == ""


@pytest.mark.slow
def test_the_shared_run_names_its_clusters_without_credits(finished_run):
    clusters = pd.read_parquet(finished_run / "tables" / "clusters.parquet")
    latest = clusters[clusters.labelling == clusters.labelling.iloc[-1]].drop_duplicates("label")
    assert len(latest) == 3 and latest.name.is_unique
    for name in latest.name:
        assert not CREDIT_WORDS.search(name), name
    assert json.loads((finished_run / "manifest.json").read_text())["stages"]["cluster"]["counts"]["clusters"] == 3
