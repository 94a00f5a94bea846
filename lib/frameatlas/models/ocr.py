"""On-screen text: RapidOCR with the PP-OCRv4 ONNX models that ship inside `rapidocr-onnxruntime`.

The weights come with the package, so reading text needs no download and works air-gapped. The
reader detects text lines on the image (scaled so its short side is `detect_short_side`: video
thumbnails are small, and small text needs the upscale), recognises each line, and keeps lines
at least `min_score` confident and `min_chars` long, in reading order.

With `gate_short_side` set, the detector first looks at the image scaled to that short side (a
quarter of the pixels at 160 instead of 320); when no pixel of its text-probability map reaches
`gate_score`, the frame has no text candidate and the full-size pass is skipped (`gated` counts
those frames). Frames the gate lets through are read exactly as without it. With `spin_wait: false`
ONNX Runtime's idle threads sleep instead of spinning (less CPU on shared cores, the same results).

`runtime` says what computes the two networks: `openvino` runs the package's very ONNX files with OpenVINO
in full fp32 (the recogniser 1.6x faster than ONNX Runtime on a 2-core AMD EPYC, the same text on every demo
frame: BENCHMARKS.md), `onnxruntime` runs them as RapidOCR does, `auto` takes OpenVINO when it is installed.
When OpenVINO is missing or cannot compile the networks, ONNX Runtime reads (with a warning, unless `auto` found
no OpenVINO at all).

Example:
    >>> from frameatlas.config import OcrConfig
    >>> from frameatlas.models.ocr import OcrReader
    >>> reader = OcrReader(OcrConfig(enabled=True))  # doctest: +SKIP
    >>> [line.text for line in reader.read(image)]  # doctest: +SKIP
    ['BIG BUCK BUNNY HAS BEEN RELEASED', 'Blender Foundation']
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .base import ModelRecord
from .device import usable_cpus

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
        self.gated = 0  # frames the text gate found no candidate on (not read at full size)
        threads = threads or -1  # -1: onnxruntime's default, every core
        # Upside-down text is rare in video: the angle classifier would cost a third of the time for nothing.
        self.engine = RapidOCR(
            det_limit_side_len=options.detect_short_side, det_limit_type="min", use_cls=False,
            text_score=options.min_score, intra_op_num_threads=threads, inter_op_num_threads=threads,
        )  # fmt: skip
        self.runtime = _use_runtime(self.engine, getattr(options, "runtime", "onnxruntime"), threads)
        if self.runtime == "onnxruntime" and not getattr(options, "spin_wait", True):
            _stop_spinning(self.engine, threads)
        models = Path(rapidocr_onnxruntime.__file__).parent / "models"
        backend = f"{OCR_PACKAGE} {_package_version(OCR_PACKAGE)}"
        if self.runtime == "openvino":
            backend += f" on openvino {_package_version('openvino')}"
        self.record = ModelRecord(
            kind="ocr", model_id=OCR_MODEL_ID, requested=OCR_MODEL_ID, backend=backend, weights=str(models),
        )  # fmt: skip
        self.follow_gate(options)

    def follow_gate(self, options) -> None:
        """Take `options`' text gate (`gate_short_side`, `gate_score`): one loaded reader serves any gate setting."""
        self.options = options
        self._gate = getattr(options, "gate_short_side", None)

    def read(self, image: Image.Image | np.ndarray) -> list[TextLine]:
        """The text lines of one image, top to bottom, after the confidence and length filters."""
        image = image.convert("RGB") if isinstance(image, Image.Image) else image
        if self._gate and self.text_probability(image, self._gate) < self.options.gate_score:
            self.gated += 1
            return []
        found, _ = self.engine(image)
        lines = []
        for box, text, score in found or []:
            text = " ".join(str(text).split())
            if float(score) < self.options.min_score or len(text.replace(" ", "")) < self.options.min_chars:
                continue
            points = np.asarray(box, np.float32)
            lines.append(TextLine(text, float(score), (*points.min(axis=0).tolist(), *points.max(axis=0).tolist())))
        return lines

    def text_probability(self, image: Image.Image | np.ndarray, short_side: int | None = None) -> float:
        """The highest text probability the detector gives any pixel of `image` scaled to `short_side`
        (default `gate_short_side`): the gate's measure, 0 on a blank picture, near 1 on legible text."""
        import cv2

        short_side = short_side or self._gate
        if not short_side:
            raise ValueError("text_probability: give short_side, or set caption.ocr.gate_short_side")
        pixels = self.engine.load_img(image.convert("RGB") if isinstance(image, Image.Image) else image)
        height, width = pixels.shape[:2]
        scale = short_side / min(height, width)  # down or up: the detector's own "min" limit only ever scales up
        pixels = cv2.resize(pixels, (max(32, round(width * scale)), max(32, round(height * scale))), interpolation=cv2.INTER_AREA)
        prepared = _det_preprocess(self.engine.text_det, short_side)(pixels)  # normalised, sides rounded to 32
        return float(self.engine.text_det.infer(prepared)[0].max())


def _stop_spinning(engine, threads: int) -> None:
    """Reopen the detector's and recogniser's ONNX Runtime sessions with RapidOCR's own options, but with idle
    worker threads sleeping instead of spin-waiting: spinning between RapidOCR's many small recogniser calls
    burns CPU that other work on shared cores could use. The arithmetic, and so every result, stays the same."""
    from onnxruntime import InferenceSession
    from rapidocr_onnxruntime.utils import OrtInferSession

    paths = _model_paths()
    for holder, section in ((engine.text_det.infer, "Det"), (engine.text_rec.session, "Rec")):
        options = OrtInferSession._init_sess_opts({"intra_op_num_threads": threads, "inter_op_num_threads": threads})
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        holder.session = InferenceSession(paths[section]["model_path"], sess_options=options, providers=["CPUExecutionProvider"])


class _OpenVinoSession:
    """A request on one of RapidOCR's ONNX files compiled by OpenVINO (`_compiled`), called as RapidOCR calls
    its ONNX Runtime session (an array in, the list of outputs back)."""

    def __init__(self, compiled):
        self._request = compiled.create_infer_request()
        self._output = compiled.output(0)

    def __call__(self, inputs: np.ndarray) -> list[np.ndarray]:
        return [self._request.infer({0: inputs})[self._output].copy()]


@functools.cache
def _compiled(model_path: str, threads: int):
    """`model_path` compiled once per process for readers of `threads` threads each (0: one reader, every core),
    with a stream per reader the CPUs hold: readers at once share the model and the kernels OpenVINO makes for
    each new input shape. With a model per reader, two readers' first pass over the demo's recogniser inputs
    (138 shapes) ran one at a time: 40 s against 19 s."""
    streams = max(1, usable_cpus() // threads) if threads > 0 else 1
    settings = {
        # fp32 whatever the CPU offers: on CPUs with bf16 units OpenVINO may compute in bf16 by default, which
        # read the same text on only 40 of 103 demo frames with text.
        "INFERENCE_PRECISION_HINT": "f32",
        "NUM_STREAMS": streams,
        "INFERENCE_NUM_THREADS": streams * threads,  # 0: OpenVINO's default, every core
        "ENABLE_CPU_PINNING": False,  # readers must not be pinned to the same core; the cores are shared anyway
    }
    core = _openvino_core()
    return core.compile_model(core.read_model(model_path), "CPU", settings)


def _use_runtime(engine, runtime: str, threads: int) -> str:
    """Put the detector and the recogniser on `runtime` ("auto", "openvino" or "onnxruntime") and say which one
    runs them: without the openvino package it is ONNX Runtime (a warning when OpenVINO was asked for by name)."""
    if runtime == "onnxruntime":
        return "onnxruntime"
    try:
        _openvino_core()  # OpenVINO imported, or the ImportError that says it is missing
    except ImportError as error:
        if runtime == "openvino":
            log.warning("caption.ocr.runtime is openvino, but the openvino package cannot be imported (%s): reading "
                        "text with ONNX Runtime instead, the same models (`pip install openvino` to use it)", error)  # fmt: skip
        return "onnxruntime"
    paths = _model_paths()
    try:
        detector = _OpenVinoSession(_compiled(paths["Det"]["model_path"], max(0, threads)))
        recogniser = _OpenVinoSession(_compiled(paths["Rec"]["model_path"], max(0, threads)))
    except Exception as error:  # noqa: BLE001 - e.g. a CPU or build OpenVINO's plugin does not support
        log.warning("caption.ocr.runtime is %s, but OpenVINO could not compile RapidOCR's networks (%s: %s): reading text "
                    "with ONNX Runtime instead, the same models (set caption.ocr.runtime: onnxruntime to skip OpenVINO)",
                    runtime, type(error).__name__, error)  # fmt: skip
        return "onnxruntime"
    engine.text_det.infer, engine.text_rec.session = detector, recogniser
    return "openvino"


@functools.cache
def _openvino_core():
    """One OpenVINO core per process (it holds the CPU plugin and its thread pools). Only the runtime is
    imported: `import openvino` would also import its model converter, and with it the converter's telemetry
    client, which reading ONNX files does not need (the converter stays importable by name afterwards)."""
    converter = "openvino.tools.ovc"
    hide_converter = "openvino" not in sys.modules and converter not in sys.modules
    if hide_converter:
        sys.modules[converter] = None  # openvino's __init__ skips the converter when importing it fails
    try:
        import openvino
    finally:
        if hide_converter and sys.modules.get(converter, False) is None:
            del sys.modules[converter]
    # OpenVINO's Python binding makes its numpy bridge on the first `Tensor.data` of the process, in a C++ static
    # whose initialiser takes the GIL: two readers' first requests at once deadlocked (one thread holding the GIL
    # waits on the static, the other holds the static and waits on the GIL; 10 of 20 processes hung when two
    # threads started together). Made here, in the thread that loads the readers, before any reader runs.
    openvino.Tensor(np.zeros(1, np.float32)).data  # noqa: B018 - the access is the point
    return openvino.Core()


def _model_paths() -> dict:
    """RapidOCR's own configuration with the paths of the ONNX files its package ships ("Det", "Rec": "model_path")."""
    from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
    from rapidocr_onnxruntime.utils import read_yaml, update_model_path

    return update_model_path(read_yaml(DEFAULT_CFG_PATH))


def _det_preprocess(detector, short_side: int):
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    return DetPreProcess(short_side, "min", detector.mean, detector.std)


def _package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def unavailable_record(reason: str) -> ModelRecord:
    """The record of an OCR reader that could not run, so the manifest and the reports say so."""
    return ModelRecord(kind="ocr", model_id="ocr-off", requested=OCR_MODEL_ID, backend=OCR_PACKAGE,
                       fallback_reason=reason, disabled_features=list(OCR_FEATURES))  # fmt: skip
