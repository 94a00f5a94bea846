"""Perceptual signatures of frames, and which frames may reuse an earlier frame's result.

Sampled frames of a static shot (a fixed camera, a slide, a title card) are often nearly the
same picture. The extract stage stores a 64-bit difference hash (dHash, from `imagehash`) of
every thumbnail in the frames table's `signature` column (16 hex digits). Per-frame models
with costly passes (on-screen text, the caption model) then skip a frame whose signature is
within `max_distance` bits of the last frame they actually ran on in the same video, and
copy that frame's result, naming it in a `reused_from` column.

A frame is compared with the last frame that was computed (its anchor), not with its
neighbour: a slow pan cannot drift away from the anchor one small step at a time.

Example:
    >>> from PIL import Image
    >>> grey = Image.new("RGB", (64, 36), "grey")
    >>> frame_signature(grey)
    '0000000000000000'
    >>> signature_distance("00000000000000ff", "0000000000000000")
    8
    >>> tracker = NearDuplicates(max_distance=4)
    >>> tracker.anchor_for("00000000000000ff") is None  # nothing computed yet
    True
    >>> tracker.computed("f0:0", "00000000000000ff")
    >>> tracker.anchor_for("000000000000007f"), tracker.anchor_for("ff000000000000ff")
    ('f0:0', None)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from PIL import Image

__all__ = ["SIGNATURE_BITS", "NearDuplicates", "frame_signature", "frame_signatures", "signature_distance"]

SIGNATURE_BITS = 64
_HASH_SIZE = int(math.isqrt(SIGNATURE_BITS))  # dHash on a (size + 1) x size grey picture


def frame_signature(image: Image.Image) -> str:
    """The 64-bit difference hash of a picture, as 16 hex digits (cheap: a 9 x 8 grey copy)."""
    import imagehash

    return str(imagehash.dhash(image, hash_size=_HASH_SIZE))


def frame_signatures(images: Iterable[Image.Image]) -> list[str]:
    """`frame_signature` of each picture."""
    return [frame_signature(image) for image in images]


def signature_distance(first: str, second: str) -> int:
    """How many of the 64 bits differ between two signatures (0: the same picture at this scale)."""
    return (int(first, 16) ^ int(second, 16)).bit_count()


def _known(signature) -> bool:
    return isinstance(signature, str) and len(signature) == SIGNATURE_BITS // 4


class NearDuplicates:
    """Follows one video's frames in time order: which computed frame a new one may copy.

    `max_distance` None means never (every frame is computed). A frame without a signature
    (a run extracted before signatures existed) neither reuses nor is reused.
    """

    def __init__(self, max_distance: int | None):
        self.max_distance = max_distance
        self._anchor: tuple[str, str] | None = None  # (frame key, signature) of the last computed frame

    def anchor_for(self, signature) -> str | None:
        """The frame key whose result this frame may take, or None when it must be computed."""
        if self.max_distance is None or self._anchor is None or not _known(signature):
            return None
        key, anchor_signature = self._anchor
        return key if signature_distance(signature, anchor_signature) <= self.max_distance else None

    def computed(self, frame_key: str, signature) -> None:
        """`frame_key` was computed: later frames are compared with it."""
        self._anchor = (frame_key, signature) if _known(signature) else None
