"""Labels for the classify stage: a CSV of videos, sub-folder names, or a CSV of labelled segments.

Every label ends up on samples (`features.samples`): a video's label on the video and all its
windows; a segment's label on each window whose centre lies inside the segment.

Example:
    >>> videos = pd.DataFrame({"video_id": ["a1", "b2"], "video_name": ["cat.mp4", "dog.mp4"],
    ...                        "video_path": ["/v/cats/cat.mp4", "/v/dogs/dog.mp4"]})
    >>> folder_labels(videos, "/v")
    {'a1': 'cats', 'b2': 'dogs'}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

__all__ = [
    "LabelError",
    "check_classes",
    "class_counts",
    "folder_labels",
    "read_segment_labels",
    "read_video_labels",
    "window_labels",
]


class LabelError(ValueError):
    """Labels that cannot be used; the message names the file, the rows or the classes."""


def _read_csv(path: Path | str, columns: list[str], what: str) -> pd.DataFrame:
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise LabelError(f"{path}: {what} file not found") from None
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise LabelError(f"{path}: cannot read {what} as CSV ({error})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise LabelError(f"{path}: {what} needs the columns {', '.join(columns)} (a header row); missing {', '.join(missing)}, "
                         f"found {', '.join(table.columns) or 'none'}")  # fmt: skip
    table = table[columns].apply(lambda column: column.str.strip())
    empty = table.index[(table == "").any(axis=1)].tolist()
    if empty:
        raise LabelError(f"{path}: rows {_rows(empty)} have an empty value (every row needs {', '.join(columns)})")
    return table


def _rows(index: list[int]) -> str:
    """Row numbers as a person counts them in the file (the header is line 1)."""
    shown = ", ".join(str(i + 2) for i in index[:8])
    return shown + (f" (+{len(index) - 8} more)" if len(index) > 8 else "")


def _video_lookup(videos: pd.DataFrame, corpus: Path | str | None) -> dict[str, str]:
    """Every way a CSV may name a video (id, file name, path relative to the corpus, absolute path) -> video id."""
    lookup: dict[str, str] = {}
    names = videos.video_name.astype(str)
    ambiguous = set(names[names.duplicated()])
    for row in videos.itertuples():
        lookup[str(row.video_id)] = row.video_id
        if row.video_name not in ambiguous:
            lookup[str(row.video_name)] = row.video_id
        path = Path(str(row.video_path))
        lookup[str(path)] = row.video_id
        if corpus is not None:
            try:
                lookup[path.resolve().relative_to(Path(corpus).resolve()).as_posix()] = row.video_id
            except ValueError:
                pass
    return lookup


def _match_videos(names: pd.Series, videos: pd.DataFrame, corpus: Path | str | None, path: Path | str) -> pd.Series:
    lookup = _video_lookup(videos, corpus)
    ids = names.map(lambda name: lookup.get(name) or lookup.get(str(Path(name).expanduser())))
    unknown = names[ids.isna()]
    if len(unknown):
        known = ", ".join(sorted(videos.video_name.astype(str))[:10])
        raise LabelError(
            f"{path}: {len(unknown)} row(s) name a video this run does not have: "
            f"{', '.join(repr(v) for v in dict.fromkeys(unknown)) if len(unknown) <= 8 else ', '.join(repr(v) for v in list(dict.fromkeys(unknown))[:8]) + ', ...'} "
            f"(rows {_rows(unknown.index.tolist())}). Name a video by its file name, its path relative to corpus.videos, "
            f"its path, or its video id; this run's videos include {known}"
        )
    return ids


def read_video_labels(path: Path | str, videos: pd.DataFrame, corpus: Path | str | None = None) -> dict[str, str]:
    """video id -> label from a CSV with the columns `video,label`.

    Raises `LabelError` for a missing file or column, an empty value, a video the run does not
    have (naming it), or a video given two different labels.
    """
    table = _read_csv(path, ["video", "label"], "labels")
    table["video_id"] = _match_videos(table.video, videos, corpus, path)
    conflicts = table.groupby("video_id").label.nunique()
    conflicts = conflicts[conflicts > 1]
    if len(conflicts):
        names = videos.set_index("video_id").video_name
        raise LabelError(f"{path}: videos with two different labels: "
                         f"{', '.join(str(names.get(v, v)) for v in conflicts.index)}")  # fmt: skip
    return dict(zip(table.video_id, table.label))


def folder_labels(videos: pd.DataFrame, corpus: Path | str) -> dict[str, str]:
    """video id -> the name of its first-level sub-folder of `corpus` (ImageFolder-style).

    Videos directly in `corpus` (or outside it) get no label.
    """
    root = Path(corpus).resolve()
    labels = {}
    for row in videos.itertuples():
        try:
            parts = Path(str(row.video_path)).resolve().relative_to(root).parts
        except ValueError:
            continue
        if len(parts) > 1:
            labels[row.video_id] = parts[0]
    return labels


def read_segment_labels(path: Path | str, videos: pd.DataFrame, corpus: Path | str | None = None) -> pd.DataFrame:
    """Labelled time ranges from a CSV with the columns `video,start,end,label` (seconds).

    Returns video_id, start, end, label. Raises `LabelError` naming the rows whose times are not
    numbers or whose end is not after their start, and videos the run does not have.
    """
    table = _read_csv(path, ["video", "start", "end", "label"], "segment labels")
    times = table[["start", "end"]].apply(pd.to_numeric, errors="coerce")
    bad = table.index[times.isna().any(axis=1) | ~(times.end > times.start) | (times.start < 0)].tolist()
    if bad:
        raise LabelError(f"{path}: rows {_rows(bad)} need start and end in seconds with 0 <= start < end")
    return pd.DataFrame({
        "video_id": _match_videos(table.video, videos, corpus, path).to_numpy(),
        "start": times.start.to_numpy(float), "end": times.end.to_numpy(float), "label": table.label.to_numpy(),
    })  # fmt: skip


def window_labels(samples: pd.DataFrame, segments: pd.DataFrame) -> pd.Series:
    """The label of each window sample whose centre lies in a segment of its video (None elsewhere).

    Video-level samples are labelled when all their labelled segments agree.
    """
    labels = pd.Series([None] * len(samples), index=samples.index, dtype=object)
    centre = ((samples.start + samples.end) / 2).to_numpy()
    for segment in segments.itertuples():
        inside = (samples.video_id.to_numpy() == segment.video_id) & (samples.level.to_numpy() == "window")
        inside &= (centre >= segment.start) & (centre < segment.end)
        labels[inside] = segment.label
    for video_id, group in segments.groupby("video_id"):
        if group.label.nunique() == 1:
            labels[(samples.video_id == video_id) & (samples.level == "video")] = group.label.iat[0]
    return labels


def check_classes(labels: pd.Series, groups: pd.Series, *, min_groups: int = 2, source: str = "labels") -> None:
    """Refuse labels that cannot be cross-validated grouped by video, naming the classes and counts.

    `labels` per sample (None = unlabelled), `groups` the sample's video.
    """
    known = labels.notna()
    counts = (
        pd.DataFrame({"label": labels[known], "group": groups[known]})
        .groupby("label")
        .agg(samples=("group", "size"), videos=("group", "nunique"))
    )
    if len(counts) == 0:
        raise LabelError(f"{source}: no sample has a label (check the video names and, for segments, the times)")
    if len(counts) == 1:
        only = counts.index[0]
        raise LabelError(f"{source}: only one class ({only!r}: {counts.samples.iat[0]} samples, {counts.videos.iat[0]} videos); "
                         "a classifier needs at least two classes")  # fmt: skip
    few = counts[counts.videos < min_groups]
    if len(few):
        listed = ", ".join(f"{name!r} ({row.videos} video(s), {row.samples} sample(s))" for name, row in few.iterrows())
        raise LabelError(f"{source}: classes with too few videos for cross-validation grouped by video (need at least "
                         f"{min_groups} videos each, classify.min_videos_per_class): {listed}")  # fmt: skip


def class_counts(labels: pd.Series) -> Mapping[str, int]:
    return labels.dropna().value_counts().sort_index().to_dict()
