"""Objects on each frame: a torchvision detector's labels and boxes, as a further channel.

The detector is `ssdlite320_mobilenet_v3_large` or `fasterrcnn_mobilenet_v3_large_fpn` (COCO's 91
categories), built by torchvision and loaded from a weights file: `objects.weights`, else the file
torchvision itself would download, looked up in the torch hub cache (`$TORCH_HOME/hub/checkpoints`).
Nothing is downloaded: without the file the channel is off, and the model record says why (a banner
on every report, as for CLIP).

* `detect_run` writes `tables/objects.parquet` (frame_key, video_id, timestamp, label, score, the box
  x0, y0, x1, y1 in thumbnail pixels, and the detector's model id), cached per video and detector in `cache/objects/`.
* `object_text` makes each frame's "2 person, 1 car"; `count_vectors` its counts per category (the
  classify stage's `objects` features).

Example:
    >>> object_text(pd.DataFrame({"frame_key": ["a", "a", "a"], "label": ["car", "person", "person"]}))["a"]
    '2 person, 1 car'
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .files import sha256_file
from .progress import progress_bar
from .store import RunPaths, read_table, read_thumbnail, write_table
from .summary import StageSummary

log = logging.getLogger(__name__)

__all__ = ["DETECTORS", "OBJECT_COLUMNS", "Detector", "ObjectsSummary", "count_vectors", "detect_run", "detector_categories", "detector_weights",
           "load_detector", "object_text"]  # fmt: skip

OBJECT_COLUMNS = ["frame_key", "video_id", "timestamp", "label", "score", "x0", "y0", "x1", "y1", "model"]
DETECTORS = {  # name -> (builder, weights enum) in torchvision.models.detection
    "ssdlite320_mobilenet_v3_large": ("ssdlite320_mobilenet_v3_large", "SSDLite320_MobileNet_V3_Large_Weights"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("fasterrcnn_mobilenet_v3_large_fpn", "FasterRCNN_MobileNet_V3_Large_FPN_Weights"),
}


def _weights_enum(name: str):
    from torchvision.models import detection

    return getattr(detection, DETECTORS[name][1]).DEFAULT


def detector_weights(name: str, weights: Path | str | None = None) -> Path:
    """Where the detector's weights should be: `weights`, else torchvision's own file name in the torch hub cache."""
    if weights is not None:
        return Path(weights).expanduser()
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(_weights_enum(name).url).name


@dataclass
class Detector:
    """A loaded detector, its category names and what ran (a model record for the manifest)."""

    model: Any
    categories: list[str]
    record: dict[str, Any]

    def detect(self, images: list, min_score: float) -> list[pd.DataFrame]:
        """Per image, its detections at least `min_score` sure: label, score, x0, y0, x1, y1 (image pixels)."""
        import torch
        from torchvision.transforms.functional import to_tensor

        with torch.inference_mode():
            outputs = self.model([to_tensor(image) for image in images])
        tables = []
        for output in outputs:
            keep = output["scores"] >= min_score
            boxes = output["boxes"][keep].numpy()
            tables.append(pd.DataFrame({
                "label": [self.categories[int(i)] for i in output["labels"][keep]], "score": output["scores"][keep].numpy(),
                "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
            }))  # fmt: skip
        return tables


def load_detector(name: str, weights: Path | str | None = None) -> tuple[Detector | None, dict[str, Any]]:
    """The detector from its weights file, or None and a record saying why it is off (missing or unreadable weights)."""
    import torch
    from torchvision.models import detection

    path = detector_weights(name, weights)
    record = {"kind": "objects", "model_id": f"{name}-none", "requested": f"{name} ({path})", "backend": "torchvision",
              "weights": str(path), "weights_sha256": None, "dim": 0, "device": "cpu", "fallback_reason": None,
              "disabled_features": []}  # fmt: skip
    categories = list(_weights_enum(name).meta["categories"])
    if not path.is_file():
        record.update(fallback_reason=f"detector weights not found at {path} (objects.weights, or torchvision's file in "
                                      "the torch hub cache)", disabled_features=["objects channel"], weights=None)  # fmt: skip
        return None, record
    model = getattr(detection, DETECTORS[name][0])(weights=None, weights_backbone=None, num_classes=len(categories))
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # a file of another model, or not a state dict
        record.update(fallback_reason=f"{path} is not {name}'s weights ({type(error).__name__}: {str(error)[:200]})",
                      disabled_features=["objects channel"])  # fmt: skip
        return None, record
    digest = sha256_file(path)
    record.update(model_id=f"{name}-{digest[:8]}", weights_sha256=digest)
    return Detector(model.eval(), categories, record), record


@dataclass(kw_only=True)
class ObjectsSummary(StageSummary):
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=OBJECT_COLUMNS))
    record: dict[str, Any] = field(default_factory=dict)
    frames: int = 0
    cached_videos: int = 0

    @property
    def counts(self) -> dict[str, Any]:
        return {"object_frames": self.frames, "objects": int(len(self.table)), "object_videos_cached": self.cached_videos}

    @property
    def model_records(self) -> list[dict[str, Any]]:
        return [self.record] if self.record else []


def detect_run(
    run: RunPaths | Path | str, options: Any, *, detector: Detector | None = None, text_encoder: Any = None
) -> ObjectsSummary:
    """Detect objects on every frame's thumbnail (see the module docstring); `options` is `cfg.objects`.

    With a `text_encoder` (the sentence encoder) each frame's "2 person, 1 car" also becomes the
    `objects` search channel (`tables/objects_embeddings.parquet`).
    """
    started = time.perf_counter()
    run = run if isinstance(run, RunPaths) else RunPaths(run)
    summary = ObjectsSummary()
    if detector is None:
        detector, summary.record = load_detector(options.model, options.weights)
    else:
        summary.record = detector.record
    target = run.table("objects")
    if detector is None:
        summary.notes.append(f"objects: off ({summary.record['fallback_reason']})")
        target.unlink(missing_ok=True)  # no stale detections of another detector
        run.table("objects_embeddings").unlink(missing_ok=True)
        return summary
    frames = read_table(run.table("frames"))
    folder = run.cache / "objects" / f"{detector.record['model_id']}-s{options.min_score:g}"
    tables = []
    bar = progress_bar(total=len(frames), desc="objects", unit="frame")
    try:
        for video_id, group in frames.groupby("video_id", sort=False):
            # the shard's name holds its frames' keys: another sampling of the video is another shard
            sampled = hashlib.sha256("\n".join(sorted(group.frame_key)).encode()).hexdigest()[:12]
            shard = folder / f"{video_id}-{sampled}.parquet"
            if shard.exists():
                tables.append(pd.read_parquet(shard))
                summary.cached_videos += 1
                bar.update(len(group))
                continue
            found = []
            paths = run.thumbnails(group)
            for start in range(0, len(group), options.batch_size):
                rows = group.iloc[start : start + options.batch_size]
                images = [read_thumbnail(path) for path in paths[start : start + options.batch_size]]
                for row, detections in zip(rows.itertuples(), detector.detect(images, options.min_score)):
                    found.append(detections.assign(frame_key=row.frame_key, video_id=row.video_id, timestamp=row.timestamp,
                                                   model=detector.record["model_id"]))  # fmt: skip
                bar.update(len(rows))
            table = pd.concat(found, ignore_index=True)[OBJECT_COLUMNS] if found else pd.DataFrame(columns=OBJECT_COLUMNS)
            write_table(table, shard)
            tables.append(table)
    finally:
        bar.close()
    summary.frames = len(frames)
    keys = set(frames.frame_key)
    summary.table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=OBJECT_COLUMNS)
    summary.table = summary.table[summary.table.frame_key.isin(keys)].reset_index(drop=True)[OBJECT_COLUMNS]
    write_table(summary.table, target)
    texts = object_text(summary.table)
    channel = run.table("objects_embeddings")
    if text_encoder is not None and len(texts):
        from .search import write_text_channel

        write_text_channel(run, "objects", list(texts.index), list(texts.to_numpy()), text_encoder)
    else:
        channel.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - started
    return summary


def detector_categories(model_id: str) -> list[str]:
    """The category names of the detector a model id names (COCO's 91 for both detectors)."""
    name = next((n for n in DETECTORS if model_id.startswith(n)), "ssdlite320_mobilenet_v3_large")
    return list(_weights_enum(name).meta["categories"])


def object_text(objects: pd.DataFrame) -> pd.Series:
    """frame_key -> "2 person, 1 car" (most frequent first, then by name)."""
    if not len(objects):
        return pd.Series(dtype=object)
    counts = objects.groupby(["frame_key", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["frame_key", "n", "label"], ascending=[True, False, True])
    return counts.groupby("frame_key", sort=False).apply(lambda g: ", ".join(f"{n} {label}" for n, label in zip(g.n, g.label)))


def count_vectors(objects: pd.DataFrame, frame_keys: pd.Series, categories: list[str]) -> np.ndarray:
    """(frames, categories) how many of each category each frame shows."""
    out = np.zeros((len(frame_keys), len(categories)), np.float32)
    if not len(objects):
        return out
    row = pd.Series(np.arange(len(frame_keys)), index=frame_keys.to_numpy())
    column = {name: i for i, name in enumerate(categories)}
    rows = objects.frame_key.map(row)
    keep = rows.notna() & objects.label.isin(list(column))
    np.add.at(out, (rows[keep].astype(int).to_numpy(), objects.label[keep].map(column).to_numpy()), 1.0)
    return out
