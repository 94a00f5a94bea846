"""Readable cluster names: distinctive caption terms (c-TF-IDF), else the best phrases of an
everyday vocabulary by CLIP's text side, else the clusters' dominant colours.

Names describe what is seen: the artist credits and site names of CLIP-Interrogator prompts
("inspired by <artist>", "by <artist>", "trending on artstation") and rendering boilerplate
("highly detailed", "4k") never name a cluster, and no two clusters share a name.

Nothing here knows about runs: thumbnails come in as paths the caller has already checked.

Example:
    >>> terms = distinctive_terms({0: ["a rabbit in a meadow", "a rabbit eating"], 1: ["a car on a street"]}, top=1)
    >>> terms[0][0][0], terms[1][0][0]
    ('rabbit', 'car')
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..models.base import l2_normalise
from .algorithms import NOISE, ClusterError, ClusterLabels

__all__ = [
    "COLOUR_NAMES",
    "EVERYDAY_VOCABULARY",
    "NOISE_NAME",
    "descriptive_text",
    "distinctive_terms",
    "name_clusters",
]

NOISE_NAME = "noise"
COLOUR_SAMPLE_FRAMES = 24  # thumbnails read per cluster for colour names (the most central ones)
SPARE_TERMS = 6  # further distinctive terms per cluster, to tell apart clusters whose best terms are the same

VOCABULARY_PROMPT = "a photo of {}"

#: Everyday objects and scenes ranked against cluster centroids with CLIP's text side.
EVERYDAY_VOCABULARY: tuple[str, ...] = (
    # people and what they do
    "a person", "a man", "a woman", "a child", "a baby", "a crowd", "a group of people", "a face close-up",
    "hands", "a person talking", "a person walking", "a person running", "people dancing", "a person cooking",
    "a person playing music", "a person reading", "a person using a computer", "a speaker at a podium",
    "a news presenter", "people playing sport", "a football match", "a swimmer", "a cyclist", "a soldier",
    "a police officer", "a doctor", "a musician on stage", "a wedding", "a family at home", "an interview",
    # animals
    "a rabbit", "a dog", "a cat", "a bird", "a horse", "a cow", "a sheep", "a fish", "an insect", "a butterfly",
    "a squirrel", "a deer", "a bear", "an elephant", "a monkey", "a lion", "a snake", "a chicken", "a duck",
    # nature
    "a forest", "a tree", "flowers", "grass", "a meadow", "a field of crops", "a mountain", "a hill", "a river",
    "a lake", "the sea", "a beach", "waves", "water", "a waterfall", "the sky", "clouds", "a sunset", "snow",
    "rain", "fire", "a desert", "a cave", "rocks", "a garden", "a park", "night", "the moon", "stars",
    "underwater", "ice",
    # built places
    "a city street", "a crowded street", "a city skyline", "a building", "a skyscraper", "a house", "a room",
    "a kitchen", "a bedroom", "an office", "a classroom", "a shop", "a restaurant", "a market", "a church",
    "a bridge", "a road", "a highway", "a parking lot", "a train station", "an airport", "a factory",
    "a construction site", "a stadium", "a stage with lights", "a hospital", "a library", "a farm",
    "a village", "ruins", "a laboratory", "a swimming pool",
    # vehicles
    "a car", "a bus", "a truck", "a train", "a bicycle", "a motorcycle", "a boat", "a ship", "an airplane",
    "a helicopter", "a rocket", "traffic",
    # things
    "a table", "a chair", "a bed", "a computer", "a phone", "a television", "a book", "food", "a plate of food",
    "a drink", "a bottle", "a cup", "a ball", "a toy", "a flag", "a map", "a clock", "a painting", "a guitar",
    "a piano", "money", "a weapon", "clothes", "a door", "a window", "a lamp",
    # pictures on screens
    "text on a screen", "a title card", "a logo", "subtitles", "a chart", "a diagram", "a slide presentation",
    "a cartoon character", "an animation", "a video game", "a black screen", "a blurry image",
    "a black and white film", "a drawing", "a website", "a microscope image", "an explosion", "smoke",
    "lights in the dark", "fireworks",
)  # fmt: skip

# Words captioning models put in nearly every caption, and the interrogator's praise of renders and
# names of art sites: they would otherwise crowd out what the frames show.
CAPTION_STOP_WORDS = frozenset({
    "image", "picture", "photo", "photograph", "shot", "view", "shows", "showing", "shown", "depicts",
    "depicting", "features", "featuring", "visible", "background", "foreground", "appears", "seen",
    "inspired", "style", "trending", "featured", "contest", "winner", "award", "winning", "hq", "hd", "uhd",
    "resolution", "quality", "detailed", "highly", "intricate", "masterpiece", "render", "rendered", "octane",
    "unreal", "engine", "artstation", "behance", "cgsociety", "deviantart", "dribble", "dribbble", "flickr",
    "instagram", "pexels", "pinterest", "pixabay", "pixiv", "polycount", "reddit", "shutterstock", "tumblr",
    "unsplash", "zbrush", "central", "society", "cg",
})  # fmt: skip

# A prompt phrase that credits someone ("by X", "inspired by X", "in the style of X", "art by X"):
# the phrase is dropped from there on, so no artist's name can become a cluster's name.
_CREDIT = re.compile(r"(?:^|\s)(?:inspired by|in the style of|style of|art by|made by|by)\s.*$", re.IGNORECASE)

# Named colours for the weight-free descriptor: hue sectors (degrees) for saturated pixels.
_HUE_NAMES = ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"), (255, "blue"),
              (290, "purple"), (345, "pink"), (360, "red"))  # fmt: skip
COLOUR_NAMES = ("black", "grey", "white", "brown", "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")


def distinctive_terms(texts_by_cluster: Mapping[int, Sequence[str]], top: int = 3) -> dict[int, list[tuple[str, float]]]:
    """The terms that set each cluster's texts apart, by class-based TF-IDF (c-TF-IDF).

    Each cluster's texts are joined into one document; a term's weight is its frequency in that
    document (normalised by the document's length) times ``log(1 + clusters / clusters_with_term)``,
    so words every cluster uses weigh little. English stop words and captioning boilerplate
    ("image", "shows", ...) are ignored.

    Example:
        >>> terms = distinctive_terms({0: ["a rabbit in a meadow", "a rabbit eating"], 1: ["a car on a street"]}, top=2)
        >>> [term for term, _ in terms[0]]
        ['rabbit', 'eating']
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    labels = list(texts_by_cluster)
    documents = [" ".join(t for t in texts_by_cluster[label] if isinstance(t, str)) for label in labels]
    result: dict[int, list[tuple[str, float]]] = {label: [] for label in labels}
    vectorizer = CountVectorizer(
        stop_words=sorted(ENGLISH_STOP_WORDS | CAPTION_STOP_WORDS), token_pattern=r"(?u)\b[^\W\d_]{2,}\b"
    )
    try:
        counts = vectorizer.fit_transform(documents).toarray().astype(np.float64)
    except ValueError:  # nothing but stop words (or no text at all)
        return result
    terms = vectorizer.get_feature_names_out()
    term_frequency = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    clusters_with_term = (counts > 0).sum(axis=0)
    weights = term_frequency * np.log1p(len(documents) / np.maximum(clusters_with_term, 1))
    for row, label in enumerate(labels):
        # Ties (equal counts) keep alphabetical order so names do not depend on hash order.
        order = np.lexsort((terms.astype(str), -weights[row]))[:top]
        result[label] = [(str(terms[i]), float(weights[row, i])) for i in order if weights[row, i] > 0]
    return result


def descriptive_text(prompt: str) -> str:
    """A prompt's comma-separated phrases without artist credits (from "by"/"inspired by" on).

    Example:
        >>> descriptive_text("a rabbit in a meadow, inspired by Beatrix Potter, by Jan Brett, grass, trending on artstation")
        'a rabbit in a meadow, grass, trending on artstation'
    """
    phrases = (_CREDIT.sub("", phrase).strip() for phrase in prompt.split(","))
    return ", ".join(phrase for phrase in phrases if phrase)


def _without_article(phrase: str) -> str:
    return re.sub(r"^(a|an|the) ", "", phrase)


def _vocabulary_names(centroids: np.ndarray, encoder: Any, vocabulary: Sequence[str], phrases: int) -> list[str]:
    text = np.asarray(encoder.encode_text([VOCABULARY_PROMPT.format(p) for p in vocabulary]), dtype=np.float32)
    if text.shape[1] != centroids.shape[1]:
        raise ClusterError(
            f"the encoder's text vectors have {text.shape[1]} dims but the centroids {centroids.shape[1]}: "
            "name clusters with the encoder the frames were embedded with"
        )
    scores = centroids @ l2_normalise(text).T
    if len(centroids) > 1:
        # CLIP similarities sit in a narrow band and some phrases match everything a little;
        # subtracting each phrase's mean over clusters keeps what sets a cluster apart.
        scores = scores - scores.mean(axis=0, keepdims=True)
    names: list[str] = []
    for row in scores:
        order = [int(i) for i in np.argsort(-row, kind="stable")]
        chosen = [order[0]]
        # A second phrase only when it is nearly as telling as the first.
        if phrases > 1 and len(order) > 1 and row[order[1]] > 0 and row[order[1]] >= 0.5 * row[order[0]]:
            chosen.append(order[1])
        names.append(_first_unused([_without_article(vocabulary[i]) for i in chosen],
                                   [_without_article(vocabulary[i]) for i in order[len(chosen):]], names))  # fmt: skip
    return names


def _first_unused(parts: list[str], spares: list[str], used: Sequence[str]) -> str:
    """`parts` joined, or, when another cluster has that name, with its last part swapped for the
    best spare that makes it new (the "(2)" numbering of `_unique` is the last resort)."""
    name = ", ".join(parts)
    if name not in used:
        return name
    for spare in spares:
        candidate = ", ".join([*parts[:-1], spare])
        if spare not in parts and candidate not in used:
            return candidate
    return name


def _pixel_colour_names(rgb: np.ndarray) -> np.ndarray:
    """Index into `COLOUR_NAMES` for each pixel of an (n, 3) array of 0..1 RGB values."""
    top, bottom = rgb.max(axis=1), rgb.min(axis=1)
    chroma = top - bottom
    saturation = np.where(top > 0, chroma / np.maximum(top, 1e-6), 0.0)
    red, green, blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    safe = np.maximum(chroma, 1e-6)
    hue = (
        np.select(
            [top == red, top == green],
            [((green - blue) / safe) % 6, (blue - red) / safe + 2],
            (red - green) / safe + 4,
        )
        * 60.0
    )
    names = np.zeros(len(rgb), dtype=np.int64)
    lower = 0
    for upper, name in _HUE_NAMES:
        names[(hue >= lower) & (hue < upper)] = COLOUR_NAMES.index(name)
        lower = upper
    # Dim oranges and reds are what people call brown.
    names = np.where(np.isin(names, [COLOUR_NAMES.index("orange"), COLOUR_NAMES.index("red")]) & (top < 0.6)
                     & (saturation > 0.25), COLOUR_NAMES.index("brown"), names)  # fmt: skip
    achromatic = np.where(top > 0.85, COLOUR_NAMES.index("white"), COLOUR_NAMES.index("grey"))
    names = np.where(saturation < 0.18, achromatic, names)
    return np.where(top < 0.18, COLOUR_NAMES.index("black"), names)


def _colour_parts(paths: Sequence[Path | str]) -> tuple[list[str], list[str]]:
    """The dominant named colour(s) of some thumbnails, with light/dark (e.g. ["dark blue", "white"]),
    and the further colours present, by share."""
    votes = np.zeros(len(COLOUR_NAMES))
    lightness = np.zeros(len(COLOUR_NAMES))
    for path in paths:
        try:
            with Image.open(path) as image:
                image.draft("RGB", (64, 64))  # JPEG decodes at reduced size: much faster
                small = image.convert("RGB").resize((32, 24), Image.Resampling.BOX)
        except OSError:
            continue  # a missing thumbnail only loses its vote
        rgb = np.asarray(small, dtype=np.float32).reshape(-1, 3) / 255.0
        names = _pixel_colour_names(rgb)
        # HSL lightness: pure blue and pure yellow both sit at 0.5, so "dark"/"light" mean the same
        # for every hue (luminance would call every yellow light and every blue dark).
        pixel_lightness = (rgb.max(axis=1) + rgb.min(axis=1)) / 2
        votes += np.bincount(names, minlength=len(COLOUR_NAMES))
        lightness += np.bincount(names, weights=pixel_lightness, minlength=len(COLOUR_NAMES))
    if not votes.any():
        return ["unknown colour"], []
    order = np.argsort(-votes, kind="stable")

    def described(index: int) -> str:
        name = COLOUR_NAMES[index]
        if name in ("black", "white"):
            return name
        mean = lightness[index] / votes[index]
        return f"dark {name}" if mean < 0.35 else f"light {name}" if mean > 0.65 else name

    parts = [described(order[0])]
    if votes[order[1]] >= 0.5 * votes[order[0]]:
        parts.append(described(order[1]))
    # colours covering at least 3% of the pixels can tell apart two clusters of the same main colours
    spares = [described(i) for i in order[len(parts) :] if votes[i] >= 0.03 * votes.sum()]
    return parts, spares


def _unique(names: list[str]) -> list[str]:
    """Append " (2)", " (3)", ... to repeats, in order (the largest cluster keeps the plain name)."""
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate in seen:
            number += 1
            candidate = f"{name} ({number})"
        seen.add(candidate)
        unique.append(candidate)
    return unique


def name_clusters(
    clusters: ClusterLabels,
    *,
    captions: Sequence[str | None] | None = None,
    encoder: Any = None,
    thumbnails: Sequence[Path | str] | None = None,
    vocabulary: Sequence[str] = EVERYDAY_VOCABULARY,
    terms: int = 3,
    phrases: int = 2,
) -> pd.DataFrame:
    """A readable, unique name per cluster, and where it came from.

    For each cluster the first source that can answer is used:

    1. ``captions``: its top `terms` c-TF-IDF terms (see `distinctive_terms`);
    2. ``clip-vocabulary``: with an image-text `encoder` (``encoder.has_text``) whose space the
       vectors are in, the best 1-`phrases` phrases of `vocabulary` for its centroid (prompt
       "a photo of {}");
    3. ``colour``: the dominant named colours of its most central `thumbnails` (the weight-free
       descriptor has no text side, so this is what it can offer);
    4. otherwise ``cluster <label>`` with name_source "none".

    Args:
        clusters: from `cluster_vectors`.
        captions: one caption (or None) per clustered vector, in the same order.
        encoder: the image encoder the vectors came from (only its text side is used).
        thumbnails: one thumbnail path per clustered vector, in the same order (read as given: a
            caller taking them from a table resolves them inside the run first, see `cluster.stage`).

    Returns:
        DataFrame with label, name, name_source; the noise cluster (-1), when present, is named
        "noise" with name_source "noise".

    Example:
        >>> names = name_clusters(clusters, captions=["a rabbit in a meadow", "a red car"])  # doctest: +SKIP
        >>> names.loc[names.label == 0, "name"].item()  # doctest: +SKIP
        'rabbit, meadow'
    """
    labels = list(range(clusters.n_clusters))
    named: dict[int, tuple[str, str]] = {}

    if captions is not None:
        texts_by_cluster = {
            label: [
                descriptive_text(captions[i]) for i in clusters.members(label) if isinstance(captions[i], str) and captions[i]
            ]
            for label in labels
        }
        used: list[str] = []
        for label, found in distinctive_terms(texts_by_cluster, top=terms + SPARE_TERMS).items():
            if found:
                ranked = [term for term, _ in found]
                name = _first_unused(ranked[:terms], ranked[terms:], used)
                used.append(name)
                named[label] = (name, "captions")

    remaining = [label for label in labels if label not in named]
    if remaining and encoder is not None and getattr(encoder, "has_text", False):
        # Every centroid takes part, so "distinctive" means against all clusters, not only the rest.
        vocabulary_names = _vocabulary_names(clusters.centroids, encoder, vocabulary, phrases)
        for label in remaining:
            named[label] = (vocabulary_names[label], "clip-vocabulary")

    colour_names: list[str] = []
    for label in labels:
        if label in named:
            continue
        if thumbnails is not None:
            central = [thumbnails[i] for i in clusters.members(label)[:COLOUR_SAMPLE_FRAMES]]
            parts, spares = _colour_parts(central)
            # a second colour tells apart clusters of the same main colour: "green, yellow" vs "green, brown"
            name = _first_unused(parts, spares, colour_names) if len(parts) > 1 else _first_unused(
                parts, [f"{parts[0]}, {spare}" for spare in spares], colour_names)  # fmt: skip
            colour_names.append(name)
            named[label] = (name, "colour")
        else:
            named[label] = (f"cluster {label}", "none")

    names = _unique([named[label][0] for label in labels])
    table = pd.DataFrame({"label": labels, "name": names, "name_source": [named[label][1] for label in labels]})
    if clusters.noise:
        noise_row = pd.DataFrame({"label": [NOISE], "name": [NOISE_NAME], "name_source": [NOISE_NAME]})
        table = pd.concat([table, noise_row], ignore_index=True)
    return table.astype({"label": "int64"})
