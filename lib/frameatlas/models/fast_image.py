"""A faster CLIP image tower on CPUs: torch int8 dynamic quantization, or ONNX Runtime (`models.image.runtime`).

* ``torch``: the open_clip model as it is (fp32), the default;
* ``torch-int8``: the image tower's linear layers quantized to int8 by torch's dynamic quantization
  (weights int8, activations quantized per batch), made in memory when the model loads;
* ``onnx``: the image tower exported once per model to ONNX and run by ONNX Runtime (fp32);
* ``onnx-int8``: that export with ONNX Runtime's dynamic int8 quantization of its matrix products.

Exports are cached per weights file (its SHA-256) and torch version under `~/.cache/frameatlas/onnx/` (or
`$XDG_CACHE_HOME/frameatlas/onnx/`), written atomically, so every run and every Ray worker on a machine
(or sharing that folder) exports once; a model with random weights (no file to name it) exports into a
folder of its process only. The text tower stays the fp32 torch one.

Which vectors are "the same model": when a tower is first made, its vectors of `PROBES` fixed synthetic
images are compared with the fp32 tower's. A tower whose every probe vector has a cosine of at least
`SAME_MODEL_MIN_COSINE` (0.99999) to fp32's keeps the model id, so it shares caches and index collections
with fp32; any other gets its own id (`<model id>-<runtime>`). The int8 runtimes always get their own id:
quantization moves vectors by more than that (about 1e-4 in cosine on random weights, more on trained
CLIP towers, whose activations have outliers). The agreement found is kept beside the export and shown in
the record's backend.

Example:
    >>> from frameatlas.config import ModelsConfig
    >>> from frameatlas.models import image_encoder
    >>> encoder = image_encoder(ModelsConfig(image={"runtime": "onnx-int8"}))  # doctest: +SKIP
    >>> encoder.record.model_id  # doctest: +SKIP
    'clip-ViT-B-32-laion2b_s34b_b79k-onnx-int8'
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelRecord, l2_normalise

log = logging.getLogger(__name__)

__all__ = ["PROBES", "RUNTIMES", "SAME_MODEL_MIN_COSINE", "FastImageTower", "fast_image_encoder", "probe_images"]

RUNTIMES = ("torch", "torch-int8", "onnx", "onnx-int8")
SAME_MODEL_MIN_COSINE = 0.99999  # every probe vector this close to fp32's: the same model id
PROBES = 8
EXPORT_VERSION = 1  # bump when the export changes: cached exports are made again
OPSET = 17


def probe_images(count: int = PROBES, size: int = 256, seed: int = 0) -> list:
    """`count` fixed synthetic RGB images (smooth colour fields with detail), the same on every machine."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        channels = []
        for _ in range(3):
            a, b, c, d = rng.uniform(-6, 6, 4)
            channels.append(0.5 + 0.25 * np.sin(a * xs + b * ys) + 0.25 * np.cos(c * xs * ys + d))
        picture = np.stack(channels, -1) + rng.normal(0, 0.08, (size, size, 3))
        images.append(Image.fromarray((np.clip(picture, 0, 1) * 255).astype(np.uint8)))
    return images


_UNNAMED: dict[int, Path] = {}  # per model object without a weights file (random init): its own folder


def _cache_folder(record: ModelRecord, model: Any = None) -> Path:
    """Where the exports of a model live: per weights file (its SHA-256) in the user cache; a model
    without a weights file (random weights) has nothing to name it, so its exports are this process's only."""
    import torch

    from ..files import user_cache_dir

    if not record.weights_sha256:
        if id(model) not in _UNNAMED:
            import atexit
            import shutil
            import tempfile

            folder = Path(tempfile.mkdtemp(prefix="frameatlas-onnx-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            _UNNAMED[id(model)] = folder
        return _UNNAMED[id(model)]

    key = json.dumps([record.model_id, record.weights_sha256, record.weights, torch.__version__, EXPORT_VERSION, OPSET])
    return user_cache_dir("onnx", f"{record.model_id}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")


def _export_onnx(visual, example, path: Path) -> None:
    """The image tower as ONNX (batch size free), written atomically."""
    import torch

    from ..files import atomic_path

    # not in inference mode: there torch's attention takes a fused fast path that has no ONNX export
    with atomic_path(path) as tmp:
        torch.onnx.export(visual, (example,), str(tmp), input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)  # fmt: skip


def _quantize_onnx(source: Path, path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..files import atomic_path

    with atomic_path(path) as tmp:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)


class FastImageTower:
    """A CLIP encoder whose image tower runs with another runtime (see the module docstring); everything
    else (preprocessing, the model's input size, the text tower) is the base encoder's."""

    def __init__(self, base: Any, runtime: str):
        if runtime not in RUNTIMES[1:]:
            raise ValueError(f"models.image.runtime = {runtime!r}: not one of {', '.join(RUNTIMES)}")
        self.base, self.runtime = base, runtime
        self.has_text = getattr(base, "has_text", True)
        self._lock = threading.Lock()
        self._run = None
        agreement = self._agreement()
        if agreement is None:  # first time on this machine: make the tower now, to know its model id
            self._run = self._build()
            agreement = self._agreement()
        self.agreement = agreement
        same = runtime == "onnx" and agreement["min_cosine"] >= SAME_MODEL_MIN_COSINE
        base_record = base.record
        self.record = replace(
            base_record,
            model_id=base_record.model_id if same else f"{base_record.model_id}-{runtime}",
            backend=f"{base_record.backend}, image tower on {runtime} (cosine to fp32 on {PROBES} probe images: "
            f"min {agreement['min_cosine']:.6f}, mean {agreement['mean_cosine']:.6f})",
        )  # fmt: skip

    # --- what it shares with the base encoder

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def input_key(self) -> str | None:
        return getattr(self.base, "input_key", None)

    def input_size(self, width: int, height: int) -> tuple[int, int] | None:
        return self.base.input_size(width, height)

    def preprocess(self, image) -> Any:
        return self.base.preprocess(image)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self.base.encode_text(texts)

    def __getattr__(self, name: str) -> Any:  # encode_text_many, tokenizer, model, ...: the base encoder's
        if name.startswith("_") or name in ("base", "runtime", "record", "agreement", "has_text"):
            raise AttributeError(name)
        return getattr(self.base, name)

    # --- the image tower

    def encode_preprocessed(self, batch: list[Any]) -> np.ndarray:
        import torch

        pixels = torch.stack(batch)
        return l2_normalise(self._tower()(pixels))

    def encode_images(self, images: list) -> np.ndarray:
        return self.encode_preprocessed([self.preprocess(image) for image in images])

    def _tower(self):
        with self._lock:
            if self._run is None:
                self._run = self._build()
                self.record.dim = self.base.dim
            return self._run

    def _fp32_visual(self):
        model = self.base.model  # loads a lazy base encoder
        device = str(getattr(self.base, "device", "cpu"))
        if device != "cpu":
            raise ValueError(f"models.image.runtime = {self.runtime!r} runs on CPUs; on {device} use runtime: torch")
        return model.visual.eval()

    def _build(self):
        """Make the tower (exporting once per model for ONNX); record its agreement with fp32 if not known."""
        import torch

        visual = self._fp32_visual()
        probes = torch.stack([self.base.preprocess(image) for image in probe_images()])
        folder = _cache_folder(self.base.record, self.base)
        if self.runtime == "torch-int8":
            quantized = torch.ao.quantization.quantize_dynamic(visual, {torch.nn.Linear}, dtype=torch.qint8)

            def run(pixels):
                with torch.inference_mode():
                    return quantized(pixels).float().numpy()
        else:
            import onnxruntime as ort

            try:
                import onnx  # noqa: F401  (torch's exporter and ONNX Runtime's quantizer need it)
            except ImportError:
                raise RuntimeError(
                    f"models.image.runtime = {self.runtime!r} needs the onnx package: pip install 'frameatlas[scale]' "
                    "(or pip install onnx), or choose runtime: torch or torch-int8"
                ) from None
            fp32_path = folder / "image_tower.onnx"
            if not fp32_path.exists():
                log.info("exporting the image tower of %s to ONNX (%s), once", self.base.record.model_id, fp32_path)
                _export_onnx(visual, probes[:1], fp32_path)
            path = fp32_path
            if self.runtime == "onnx-int8":
                path = folder / "image_tower-int8.onnx"
                if not path.exists():
                    _quantize_onnx(fp32_path, path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # the threads frameatlas gave torch (a Ray worker's CPUs)
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

            def run(pixels):
                return session.run(None, {"pixels": pixels.numpy().astype(np.float32, copy=False)})[0]

        if self._agreement() is None:
            with torch.inference_mode():
                reference = l2_normalise(visual(probes).float().numpy())
            cosines = np.sum(l2_normalise(run(probes)) * reference, axis=1)
            self._save_agreement({"min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())})
        return run

    def _agreement_file(self) -> Path:
        return _cache_folder(self.base.record, self.base) / "agreement.json"

    def _agreement(self) -> dict | None:
        try:
            return json.loads(self._agreement_file().read_text())[self.runtime]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_agreement(self, found: dict) -> None:
        from ..files import atomic_write_json

        path = self._agreement_file()
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        atomic_write_json(path, {**known, self.runtime: found, "same_model_min_cosine": SAME_MODEL_MIN_COSINE})


def fast_image_encoder(base: Any, runtime: str) -> Any:
    """`base` (a CLIP encoder) with its image tower on `runtime`; `base` itself for `torch`."""
    return base if runtime == "torch" else FastImageTower(base, runtime)
