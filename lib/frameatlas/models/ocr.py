"""On-screen text: RapidOCR with the PP-OCRv4 ONNX models that ship inside `rapidocr-onnxruntime`.

The weights come with the package, so reading text needs no download and works air-gapped. The
reader detects text lines on the image (scaled so its short side is `detect_short_side`: video
thumbnails are small, and small text needs the upscale), recognises each line, and keeps lines
at least `min_score` confident and `min_chars` long, in reading order.

Example:
    >>> from frameatlas.config import OcrConfig
    >>> from frameatlas.models.ocr import OcrReader
    >>> reader = OcrReader(OcrConfig(enabled=True))  # doctest: +SKIP
    >>> [line.text for line in reader.read(image)]  # doctest: +SKIP
    ['BIG BUCK BUNNY HAS BEEN RELEASED', 'Blender Foundation']
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .base import ModelRecord

log = logging.getLogger(__name__)

__all__ = ["OCR_MODEL_ID", "OCR_PACKAGE", "OcrReader", "OcrUnavailable", "TextLine", "ocr_available", "unavailable_record"]

OCR_PACKAGE = "rapidocr-onnxruntime"
OCR_MODEL_ID = "rapidocr-ppocrv4"
OCR_FEATURES = ["on-screen text (OCR) search channel"]


class OcrUnavailable(RuntimeError):
    """The OCR package cannot be imported; the message says how to get it."""


@dataclass(frozen=True)
class TextLine:
    """One recognised line: its text, the recogniser's confidence, and its box (x0, y0, x1, y1) in image pixels."""

    text: str
    score: float
    box: tuple[float, float, float, float]


def ocr_available() -> str:
    """Whether the OCR package is installed (cheap: nothing is imported)."""
    return "installed" if importlib.util.find_spec("rapidocr_onnxruntime") else "missing"


class OcrReader:
    """RapidOCR over PIL images; `record` says what ran, for the manifest."""

    def __init__(self, options, threads: int = 0):
        try:
            import rapidocr_onnxruntime
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as error:
            raise OcrUnavailable(
                f"on-screen text needs the {OCR_PACKAGE} package, which carries its own weights ({error}); "
                f"install it with `pip install {OCR_PACKAGE}` (Python 3.12 or older), or set caption.ocr.enabled: false"
            ) from None
        self.options = options
        threads = threads or -1  # -1: onnxruntime's default, every core
        # Upside-down text is rare in video: the angle classifier would cost a third of the time for nothing.
        self.engine = RapidOCR(
            det_limit_side_len=options.detect_short_side, det_limit_type="min", use_cls=False,
            text_score=options.min_score, intra_op_num_threads=threads, inter_op_num_threads=threads,
        )  # fmt: skip
        models = Path(rapidocr_onnxruntime.__file__).parent / "models"
        version = _package_version()
        self.record = ModelRecord(
            kind="ocr", model_id=OCR_MODEL_ID, requested=OCR_MODEL_ID, backend=f"{OCR_PACKAGE} {version}",
            weights=str(models),
        )  # fmt: skip

    def read(self, image: Image.Image | np.ndarray) -> list[TextLine]:
        """The text lines of one image, top to bottom, after the confidence and length filters."""
        found, _ = self.engine(image.convert("RGB") if isinstance(image, Image.Image) else image)
        lines = []
        for box, text, score in found or []:
            text = " ".join(str(text).split())
            if float(score) < self.options.min_score or len(text.replace(" ", "")) < self.options.min_chars:
                continue
            points = np.asarray(box, np.float32)
            lines.append(TextLine(text, float(score), (*points.min(axis=0).tolist(), *points.max(axis=0).tolist())))
        return lines


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(OCR_PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def unavailable_record(reason: str) -> ModelRecord:
    """The record of an OCR reader that could not run, so the manifest and the reports say so."""
    return ModelRecord(kind="ocr", model_id="ocr-off", requested=OCR_MODEL_ID, backend=OCR_PACKAGE,
                       fallback_reason=reason, disabled_features=list(OCR_FEATURES))  # fmt: skip
