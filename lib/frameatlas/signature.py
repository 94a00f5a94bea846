"""Perceptual signatures of frames, and which frames may reuse an earlier frame's result.

Sampled frames of a static shot (a fixed camera, a slide, a title card) are often nearly the
same picture. The extract stage stores a signature of every thumbnail in the frames table's
`signature` column: the thumbnail shrunk to a 32 x 18 grey miniature (576 bytes, each the mean
brightness of its cell). Two frames' distance is how many cells changed by more than
`CELL_CHANGE` grey levels. Per-frame models with costly passes (on-screen text, the caption
model) skip a frame within `max_distance` changed cells of the last frame they actually ran on
in the same video, and copy that frame's result, naming it in a `reused_from` column.

Why cells and not a 64-bit perceptual hash (dHash, pHash): a hash bit compares neighbouring
regions, so on flat regions (a white slide, a dark sky) sensor or JPEG noise flips bits, while
a changed subtitle line or a changed letter flips none (measured in BENCHMARKS.md). Cell means
average the noise away (a cell is ~12 x 12 thumbnail pixels) and still see a changed word.

A frame is compared with the last frame that was computed (its anchor), not with its
neighbour: a slow pan cannot drift away from the anchor one small step at a time.

Example:
    >>> from PIL import Image
    >>> grey, white = Image.new("RGB", (384, 216), "grey"), Image.new("RGB", (384, 216), "white")
    >>> len(frame_signature(grey)), signature_distance(frame_signature(grey), frame_signature(grey))
    (576, 0)
    >>> signature_distance(frame_signature(grey), frame_signature(white))  # every cell changed
    576
    >>> tracker = NearDuplicates(max_distance=4)
    >>> tracker.anchor_for(frame_signature(grey)) is None  # nothing computed yet
    True
    >>> tracker.computed("f0:0", frame_signature(grey))
    >>> tracker.anchor_for(frame_signature(grey)), tracker.anchor_for(frame_signature(white))
    ('f0:0', None)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

__all__ = ["CELL_CHANGE", "GRID", "NearDuplicates", "frame_signature", "frame_signatures", "signature_distance"]

GRID = (32, 18)  # cells across and down (the shape of most video)
CELL_CHANGE = 8  # grey levels (of 255) a cell's mean must move to count as changed: above noise, below a changed word
_SIZE = GRID[0] * GRID[1]


def frame_signature(image: Image.Image) -> bytes:
    """The picture's signature: the mean grey level of each of the 32 x 18 cells, row by row (576 bytes)."""
    return image.convert("L").resize(GRID, Image.Resampling.BOX).tobytes()


def frame_signatures(images: Iterable[Image.Image]) -> list[bytes]:
    """`frame_signature` of each picture."""
    return [frame_signature(image) for image in images]


def signature_distance(first: bytes, second: bytes) -> int:
    """How many of the 576 cells changed by more than `CELL_CHANGE` grey levels (0: the same picture at this scale)."""
    a = np.frombuffer(first, np.uint8).astype(np.int16)
    b = np.frombuffer(second, np.uint8).astype(np.int16)
    return int(np.count_nonzero(np.abs(a - b) > CELL_CHANGE))


def _known(signature) -> bool:
    return isinstance(signature, bytes) and len(signature) == _SIZE


class NearDuplicates:
    """Follows one video's frames in time order: which computed frame a new one may copy.

    `max_distance` None means never (every frame is computed). A frame without a signature
    (a table made before signatures existed) neither reuses nor is reused.
    """

    def __init__(self, max_distance: int | None):
        self.max_distance = max_distance
        self._anchor: tuple[str, bytes] | None = None  # (frame key, signature) of the last computed frame

    def anchor_for(self, signature) -> str | None:
        """The frame key whose result this frame may take, or None when it must be computed."""
        if self.max_distance is None or self._anchor is None or not _known(signature):
            return None
        key, anchor_signature = self._anchor
        return key if signature_distance(signature, anchor_signature) <= self.max_distance else None

    def computed(self, frame_key: str, signature) -> None:
        """`frame_key` was computed: later frames are compared with it."""
        self._anchor = (frame_key, signature) if _known(signature) else None
