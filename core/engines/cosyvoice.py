"""CosyVoice3 and CosyVoice2 through the upstream `cosyvoice` package.

The upstream code is not on PyPI: it is found in a checkout (`COSYVOICE_HOME`) or as an
installed package, and torch is imported only when a model loads. Every hazard of the
upstream API (see UPSTREAM.md in the project's specification) is handled here:

- `AutoModel(model_dir=...)` gets an existing absolute directory whose files were checked
  first, so upstream never falls back to a ModelScope download;
- the checkout and its `third_party/Matcha-TTS` are put on `sys.path`;
- `prompt_wav` is always a file path: the clip is written as a WAV of at least 16 kHz
  and at most 30 s (a temporary file for feature extraction, a per-voice cached file for
  instruct calls);
- CosyVoice3's prompt strings are built and checked here (`<|endofprompt|>` exactly once
  where the model needs it), because a malformed one fails obscurely upstream, or makes
  a stream hang;
- text is split into sentences here, because upstream skips its own splitting for text
  that carries `<|...|>` markers (every CosyVoice3 cross-lingual call);
- voice features come from `add_zero_shot_spk` once per voice and are reused through
  `zero_shot_spk_id`; since upstream edits a `spk2info` entry in place (a cross-lingual
  call deletes the cached prompt text), each call installs its own shallow copy under a
  call id derived from the voice key and removes it afterwards;
- instruct calls pass the clip, not a cached id, which would drop the instruction;
- only a caller that streams gets upstream's streaming path: a synchronous request or a
  task runs one non-streaming pass per sentence, without the streaming path's extra
  flow and vocoder passes;
- upstream keeps the stream hop on the shared model object, loses its LLM thread's
  errors (a stream then waits forever) and leaves a closed call's entries behind: the
  model's `tts` is replaced by a per-call loop (`cosyvoice_loop.py`) that keeps all of
  that per call, and loading checks that the upstream code is the version it copies;
- upstream ignores `speed` when streaming, so a call with speed != 1 runs without
  upstream streaming (one chunk per sentence) and upstream applies the speed exactly.

The runner puts the deadline on every call; this engine stops as soon as the generator
it returned is closed (its LLM thread stops at its next speech token).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import itertools
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf

from .. import library_logs
from ..audio.dsp import resample
from ..domain import SynthesisMode
from ..errors import EngineNotReady, InvalidInput, SynthesisFailed
from ..ports import Clip, EngineInfo
from .base import EngineRequest
from .cosyvoice_loop import CallLoop, check_pinned_upstream
from .instructions import to_cosyvoice_instruction
from .text import (
    CHINESE_DIALECTS,
    END_OF_PROMPT,
    SUPPORTED_LANGUAGES,
    check_renderable,
    split_sentences,
)

logger = logging.getLogger(__name__)

Family = Literal["cosyvoice3", "cosyvoice2"]

SYSTEM_PROMPT = "You are a helpful assistant."

_GIB = 1024**3
_GPU_BYTES_PER_CALL = int(1.5 * _GIB)  # activations of one call, fp32 (estimate)
_GPU_BYTES_PER_CALL_FP16 = 1 * _GIB
_GPU_RESERVE_BYTES = 1 * _GIB  # CUDA context and allocator slack
_VLLM_MEMORY_SHARE = 0.2  # upstream's gpu_memory_utilization for the vLLM engine
_MAX_GPU_SLOTS = 16
_MIN_PROMPT_RATE = 16000  # upstream's frontend refuses less
_PROMPT_RATE_FOR_LOW_CLIPS = 24000  # the model's own rate: one resampling fewer upstream
_MAX_PROMPT_SECONDS = 30.0
_CJK_SENTENCE_CHARS = 80  # upstream's own split aims at 60-80 tokens a sentence
_LATIN_SENTENCE_CHARS = 240
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_SPEAKABLE = re.compile(r"\w")
_TORCH_MAGIC = b"CVTORCH1"
_NUMPY_MAGIC = b"CVNUMPY1"


@dataclass(frozen=True)
class _FamilySpec:
    model_name: str
    class_name: str
    yaml: str
    speech_tokenizer: str
    hf_repo: str
    languages: tuple[str, ...]
    dialects: tuple[str, ...]


_FAMILIES: dict[str, _FamilySpec] = {
    "cosyvoice3": _FamilySpec(
        model_name="Fun-CosyVoice3-0.5B-2512",
        class_name="CosyVoice3",
        yaml="cosyvoice3.yaml",
        speech_tokenizer="speech_tokenizer_v3.onnx",
        hf_repo="FunAudioLLM/Fun-CosyVoice3-0.5B-2512",
        languages=SUPPORTED_LANGUAGES,
        dialects=CHINESE_DIALECTS,
    ),
    "cosyvoice2": _FamilySpec(
        model_name="CosyVoice2-0.5B",
        class_name="CosyVoice2",
        yaml="cosyvoice2.yaml",
        speech_tokenizer="speech_tokenizer_v2.onnx",
        hf_repo="FunAudioLLM/CosyVoice2-0.5B",
        languages=("zh", "en", "ja", "ko"),
        dialects=("cantonese", "sichuan", "shanghai", "tianjin", "hubei"),
    ),
}
_COMMON_FILES = ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "CosyVoice-BlankEN")


def model_name(family: Family) -> str:
    return _FAMILIES[family].model_name


def hf_repo(family: Family) -> str:
    return _FAMILIES[family].hf_repo


# --- availability ------------------------------------------------------------------------


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def checkout_problem(cosyvoice_home: Path | None) -> str | None:
    """Why the upstream code cannot be imported, or None. Imports nothing."""
    if cosyvoice_home is None:
        if importlib.util.find_spec("cosyvoice") is None:
            return "COSYVOICE_HOME is not set and no cosyvoice package is installed"
    elif not (cosyvoice_home / "cosyvoice" / "cli" / "cosyvoice.py").is_file():
        return f"no CosyVoice checkout at {cosyvoice_home} (cosyvoice/cli/cosyvoice.py missing)"
    elif not (cosyvoice_home / "third_party" / "Matcha-TTS").is_dir():
        return (
            f"the checkout at {cosyvoice_home} lacks third_party/Matcha-TTS "
            "(clone it with --recursive)"
        )
    if not torch_installed():
        return "torch is not installed (install the 'cosyvoice' extra)"
    return None


def detect_family(model_dir: Path) -> Family | None:
    for family in ("cosyvoice3", "cosyvoice2"):
        if (model_dir / _FAMILIES[family].yaml).is_file():
            return family
    return None


def weights_problem(model_dir: Path, family: Family | None = None) -> str | None:
    """Why the model directory cannot be loaded, or None."""
    if not model_dir.is_dir():
        return f"no model directory at {model_dir}"
    found = detect_family(model_dir)
    if family is not None and not (model_dir / _FAMILIES[family].yaml).is_file():
        return f"no {_FAMILIES[family].yaml} in {model_dir}"
    family = family or found
    if family is None:
        return f"no cosyvoice3.yaml or cosyvoice2.yaml in {model_dir}"
    wanted = (*_COMMON_FILES, _FAMILIES[family].speech_tokenizer)
    missing = [name for name in wanted if not (model_dir / name).exists()]
    if missing:
        return f"model files missing in {model_dir}: {', '.join(missing)}"
    return None


def cosyvoice_available(
    model_dir: Path, cosyvoice_home: Path | None, *, family: Family | None = None
) -> str | None:
    """None when the CosyVoice engine can load from these paths, else the reason."""
    return checkout_problem(cosyvoice_home) or weights_problem(model_dir, family)


def download_weights(model_dir: Path, family: Family) -> None:
    """Fetch the model from Hugging Face into `model_dir` (only when asked to)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise EngineNotReady(
            f"{model_name(family)} is missing in {model_dir} and huggingface_hub is not "
            "installed to download it"
        ) from exc
    logger.info("downloading %s into %s", hf_repo(family), model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo_id=hf_repo(family), local_dir=str(model_dir))
    except Exception as exc:
        raise EngineNotReady(f"downloading {hf_repo(family)} failed: {exc}") from exc


# --- the engine --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    method: Callable[..., Iterator[dict[str, Any]]]
    arguments: dict[str, Any]
    uses_features: bool


class CosyVoiceEngine:
    def __init__(
        self,
        model_dir: Path,
        *,
        cosyvoice_home: Path | None = None,
        family: Family = "cosyvoice3",
        fp16: bool = False,
        trt: bool = False,
        vllm: bool = False,
        download: bool = False,
    ) -> None:
        if family not in _FAMILIES:
            raise ValueError(f"unknown CosyVoice family {family!r}")
        # Upstream draws a tqdm progress bar on stderr for every synthesis, which has no
        # place in a server's log. tqdm reads this once, when first imported (importing
        # torch does), so it is set before anything here imports either.
        os.environ.setdefault("TQDM_DISABLE", "1")
        self._model_dir = Path(model_dir).expanduser().resolve()
        self._home = Path(cosyvoice_home).expanduser().resolve() if cosyvoice_home else None
        self._family: Family = family
        self._spec = _FAMILIES[family]
        self._fp16, self._trt, self._vllm = fp16, trt, vllm
        self._download = download
        self._model: Any = None
        self._sample_rate = 24000
        self._pretrained: tuple[str, ...] = ()
        self._prompt_files: _PromptFiles | None = None
        self._load_lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._call_numbers = itertools.count(1)

    @property
    def family(self) -> Family:
        return self._family

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            engine="cosyvoice",
            model=self._spec.model_name,
            real_model=True,
            sample_rate=self._sample_rate,
            languages=self._spec.languages,
            chinese_dialects=self._spec.dialects,
            instruct_support=True,
            pretrained_voices=self._pretrained,
            extra={
                "family": self._family,
                "model_dir": str(self._model_dir),
                "fp16": self._fp16,
                "tensorrt": self._trt,
                "vllm": self._vllm,
                "loaded": self._model is not None,
            },
        )

    def gpu_slots(self) -> int | None:
        """Calls at once on the GPU, from its free memory and the model; None without one.

        Without vLLM the calls share the GPU without batching: past about 16 each call
        only gets slower, hence the cap. Estimates per call are in the README table."""
        torch = _import_torch()
        if torch is None or not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        weights = sum(
            (self._model_dir / name).stat().st_size
            for name in ("llm.pt", "flow.pt", "hift.pt")
            if (self._model_dir / name).is_file()
        )
        if self._model is None:  # not loaded yet: its weights will take their share
            free -= weights // 2 if self._fp16 else weights
        if self._vllm:
            free -= int(total * _VLLM_MEMORY_SHARE)
        per_call = _GPU_BYTES_PER_CALL_FP16 if self._fp16 else _GPU_BYTES_PER_CALL
        slots = int((free - _GPU_RESERVE_BYTES) // per_call)
        return min(max(slots, 1), _MAX_GPU_SLOTS)

    # --- loading -----------------------------------------------------------------------

    def load(self) -> None:
        with self._load_lock:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        problem = checkout_problem(self._home)
        if problem:
            raise EngineNotReady(f"CosyVoice cannot load: {problem}")
        if self._download and weights_problem(self._model_dir, self._family):
            download_weights(self._model_dir, self._family)
        problem = weights_problem(self._model_dir, self._family)
        if problem:
            raise EngineNotReady(f"CosyVoice cannot load: {problem}")
        self._put_checkout_on_path()
        # ModelScope prints (the text normaliser's download): log it, as the rest.
        with library_logs.prints_logged(logger):
            model = self._import_and_build()
        if type(model).__name__ != self._spec.class_name:
            raise EngineNotReady(
                f"{self._model_dir} holds a {type(model).__name__} model, "
                f"not {self._spec.class_name}"
            )
        check_pinned_upstream(model.model)
        CallLoop.install(model.model, _import_torch())
        self._sample_rate = int(model.sample_rate)
        self._pretrained = tuple(str(name) for name in model.frontend.spk2info)
        self._prompt_files = _PromptFiles()
        self._model = model
        logger.info("%s loaded from %s", self._spec.model_name, self._model_dir)

    def _import_and_build(self) -> Any:
        """Upstream imported and the model built, its libraries logging in our format."""
        existing_loggers = library_logs.logger_names()
        try:
            upstream = importlib.import_module("cosyvoice.cli.cosyvoice")
        except Exception as exc:
            raise EngineNotReady(
                f"the upstream cosyvoice package failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        # transformers and ModelScope log through console handlers of their own.
        library_logs.adopt(library_logs.logger_names() - existing_loggers)
        if upstream.__file__:  # cosyvoice/cli/cosyvoice.py: its package is two folders up
            library_logs.UpstreamTexts.install(Path(upstream.__file__).parents[1])
        self._check_prebuilt_artifacts()
        options: dict[str, Any] = {
            "model_dir": str(self._model_dir),
            "load_trt": self._trt,
            "load_vllm": self._vllm,
            "fp16": self._fp16,
        }
        if self._family == "cosyvoice2":
            options["load_jit"] = False
        try:
            model = upstream.AutoModel(**options)
        except Exception as exc:
            raise EngineNotReady(
                f"CosyVoice failed to load {self._model_dir}: {type(exc).__name__}: {exc}"
            ) from exc
        library_logs.adopt(library_logs.logger_names() - existing_loggers)
        return model

    def _put_checkout_on_path(self) -> None:
        if self._home is None:
            return
        for folder in (self._home / "third_party" / "Matcha-TTS", self._home):
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))

    def _check_prebuilt_artifacts(self) -> None:
        """Upstream writes TensorRT plans and the vLLM export into the model directory;
        a mounted model is read-only, so those must exist before the first load."""
        if not (self._trt or self._vllm) or os.access(self._model_dir, os.W_OK):
            return
        if not _cuda_available():
            return  # upstream switches both off without CUDA
        precision = "fp16" if self._fp16 else "fp32"
        plan = self._model_dir / f"flow.decoder.estimator.{precision}.mygpu.plan"
        if self._trt and (not plan.is_file() or plan.stat().st_size == 0):
            raise EngineNotReady(
                f"TensorRT plan {plan.name} is missing and {self._model_dir} is read-only: "
                "build it ahead of time for this GPU type or copy the model to a writable "
                "volume"
            )
        if self._vllm and not (self._model_dir / "vllm").is_dir():
            raise EngineNotReady(
                f"the vLLM export (vllm/) is missing and {self._model_dir} is read-only"
            )

    def _loaded(self) -> Any:
        if self._model is None:
            raise EngineNotReady(f"{self._spec.model_name} is not loaded")
        return self._model

    # --- features ----------------------------------------------------------------------

    def extract_features(self, clip: Clip, prompt_text: str | None) -> Any:
        """The upstream zero-shot prompt features of a clip and its transcript."""
        model = self._loaded()
        assert self._prompt_files is not None
        spk_id = f"extract-{next(self._call_numbers)}"
        with self._prompt_files.temporary(clip) as wav_path:
            model.add_zero_shot_spk(self._zero_shot_prompt(prompt_text), str(wav_path), spk_id)
        return model.frontend.spk2info.pop(spk_id)

    def serialize_features(self, features: Any) -> bytes:
        torch = _import_torch()
        if torch is not None:
            buffer = io.BytesIO()
            torch.save({k: _to_cpu(v) for k, v in features.items()}, buffer)
            return _TORCH_MAGIC + buffer.getvalue()
        buffer = io.BytesIO()
        arrays = {k: _to_numpy(v) for k, v in features.items()}
        # allow_pickle is numpy's default, named so the type checker does not map the
        # arrays onto it.
        np.savez(buffer, allow_pickle=True, **arrays)
        return _NUMPY_MAGIC + buffer.getvalue()

    def deserialize_features(self, data: bytes) -> Any:
        torch = _import_torch()
        if data.startswith(_TORCH_MAGIC):
            if torch is None:
                raise ValueError("features saved with torch, which is not installed")
            payload = io.BytesIO(data[len(_TORCH_MAGIC) :])
            return torch.load(payload, map_location="cpu", weights_only=True)
        if data.startswith(_NUMPY_MAGIC):
            with np.load(io.BytesIO(data[len(_NUMPY_MAGIC) :]), allow_pickle=False) as arrays:
                loaded = {name: arrays[name] for name in arrays.files}
            if torch is not None:
                return {name: torch.from_numpy(array) for name, array in loaded.items()}
            return loaded
        raise ValueError("not a CosyVoice features object")

    # --- synthesis ---------------------------------------------------------------------

    def synthesize(self, request: EngineRequest) -> Generator[np.ndarray, None, None]:
        model = self._loaded()
        check_renderable(request.text)
        sentences = _sentences(request.text)
        if not sentences:
            raise InvalidInput("the text has nothing to speak")
        transcript = _clean_prompt(request.prompt_text)
        instruction = _clean_prompt(request.instruct_text)
        mode = request.mode
        if mode is SynthesisMode.instruct and not instruction:
            mode = SynthesisMode.cross_lingual
        if mode is SynthesisMode.zero_shot and not transcript:
            # Zero-shot needs the clip's transcript; without it, clone the voice only.
            mode = SynthesisMode.cross_lingual
        features = request.features
        if mode is not SynthesisMode.instruct and not isinstance(features, dict):
            features = self.extract_features(request.clip, request.prompt_text)
        # Upstream applies speed only to whole utterances (see the module docstring).
        stream = request.stream and request.speed == 1.0
        assert self._prompt_files is not None
        with contextlib.ExitStack() as stack:
            wav_path = ""
            if mode is SynthesisMode.instruct:
                prompt_file = self._prompt_files.use(request.voice_key, request.clip)
                wav_path = str(stack.enter_context(prompt_file))
            for sentence in sentences:
                call = self._call(model, mode, sentence, transcript, instruction, wav_path)
                call.arguments.update(stream=stream, speed=request.speed)
                yield from self._run(model, call, features, request.voice_key)

    def _call(
        self,
        model: Any,
        mode: SynthesisMode,
        sentence: str,
        transcript: str | None,
        instruction: str | None,
        wav_path: str,
    ) -> _Call:
        if mode is SynthesisMode.instruct:
            assert instruction
            return _Call(
                model.inference_instruct2,
                {
                    "tts_text": sentence,
                    "instruct_text": self._instruct_prompt(instruction),
                    "prompt_wav": wav_path,
                    "zero_shot_spk_id": "",
                },
                uses_features=False,
            )
        if mode is SynthesisMode.zero_shot:
            return _Call(
                model.inference_zero_shot,
                {
                    "tts_text": sentence,
                    "prompt_text": self._zero_shot_prompt(transcript),
                    "prompt_wav": "",
                },
                uses_features=True,
            )
        return _Call(
            model.inference_cross_lingual,
            {"tts_text": self._cross_lingual_text(sentence), "prompt_wav": ""},
            uses_features=True,
        )

    def _run(self, model: Any, call: _Call, features: Any, voice_key: str) -> Iterator[np.ndarray]:
        spk2info = model.frontend.spk2info
        call_id = ""
        if call.uses_features:
            with self._call_lock:
                call_id = f"{voice_key[:32]}-{next(self._call_numbers)}"
                spk2info[call_id] = dict(features)
            call.arguments["zero_shot_spk_id"] = call_id
        outputs: Iterator[dict[str, Any]] | None = None
        try:
            outputs = call.method(**call.arguments)
            for output in outputs:
                samples = _speech_samples(output)
                if samples.size:
                    yield samples
        except SynthesisFailed:
            raise
        except Exception as exc:
            raise SynthesisFailed(f"CosyVoice failed: {type(exc).__name__}: {exc}") from exc
        finally:
            close = getattr(outputs, "close", None)
            if close is not None:
                close()  # the per-call loop's `finally` removes the call's entries
            if call_id:
                with self._call_lock:
                    spk2info.pop(call_id, None)

    # --- prompt strings ----------------------------------------------------------------

    def _zero_shot_prompt(self, transcript: str | None) -> str:
        text = _clean_prompt(transcript) or ""
        if self._family == "cosyvoice3":
            return _checked(f"{SYSTEM_PROMPT}{END_OF_PROMPT}{text}")
        return text

    def _cross_lingual_text(self, sentence: str) -> str:
        if self._family == "cosyvoice3":
            return _checked(f"{SYSTEM_PROMPT}{END_OF_PROMPT}{sentence}")
        return sentence

    def _instruct_prompt(self, instruction: str) -> str:
        trained = _clean_prompt(to_cosyvoice_instruction(instruction)) or instruction
        if self._family == "cosyvoice3":
            return _checked(f"{SYSTEM_PROMPT} {trained}{END_OF_PROMPT}")
        return _checked(f"{trained}{END_OF_PROMPT}")


class _PromptFiles:
    """Clips written as WAV files for upstream, which only reads prompts from paths.

    Instruct calls reuse one file per voice (kept for the most recent voices); a file in
    use is never evicted, since upstream opens it several times per call.
    """

    def __init__(self, capacity: int = 64) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="cosyvoice-prompts-"))
        self._capacity = capacity
        self._files: OrderedDict[str, Path] = OrderedDict()
        self._in_use: dict[str, int] = {}
        self._lock = threading.Lock()
        weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)

    @contextlib.contextmanager
    def temporary(self, clip: Clip) -> Iterator[Path]:
        handle, name = tempfile.mkstemp(suffix=".wav", dir=self._folder)
        os.close(handle)
        path = Path(name)
        try:
            write_prompt_wav(clip, path)
            yield path
        finally:
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def use(self, voice_key: str, clip: Clip) -> Iterator[Path]:
        key = re.sub(r"[^A-Za-z0-9_-]", "_", voice_key)[:64] or "voice"
        with self._lock:
            self._in_use[key] = self._in_use.get(key, 0) + 1
            path = self._files.get(key)
            if path is not None:
                self._files.move_to_end(key)
        try:
            if path is None or not path.is_file():
                path = self._folder / f"{key}.wav"
                with self.temporary(clip) as written:
                    os.replace(written, path)
                with self._lock:
                    self._files[key] = path
                    self._evict()
            yield path
        finally:
            with self._lock:
                self._in_use[key] -= 1
                if not self._in_use[key]:
                    del self._in_use[key]

    def _evict(self) -> None:
        for key in list(self._files):
            if len(self._files) <= self._capacity:
                return
            if key not in self._in_use:
                self._files.pop(key).unlink(missing_ok=True)


def write_prompt_wav(clip: Clip, path: Path) -> None:
    """16-bit mono WAV at >= 16 kHz, at most 30 s: what upstream's frontend accepts."""
    samples = np.asarray(clip.samples, dtype=np.float32).reshape(-1)
    rate = int(clip.sample_rate)
    if rate < _MIN_PROMPT_RATE:
        samples = resample(samples, rate, _PROMPT_RATE_FOR_LOW_CLIPS)
        rate = _PROMPT_RATE_FOR_LOW_CLIPS
    samples = samples[: int(_MAX_PROMPT_SECONDS * rate) - 1]
    sf.write(path, np.clip(samples, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")


def _sentences(text: str) -> list[str]:
    cjk = len(_CJK.findall(text))
    limit = _CJK_SENTENCE_CHARS if cjk * 3 >= len(text.strip()) else _LATIN_SENTENCE_CHARS
    return [s for s in split_sentences(text, max_chars=limit) if _SPEAKABLE.search(s)]


def _clean_prompt(value: str | None) -> str | None:
    """A transcript or instruction without upstream's prompt markup, which we add."""
    if value is None:
        return None
    text = value.replace(END_OF_PROMPT, " ").strip()
    if text.startswith(SYSTEM_PROMPT):
        text = text[len(SYSTEM_PROMPT) :].strip()
    return text or None


def _checked(prompt: str) -> str:
    """Upstream misbehaves (or hangs) unless the marker appears exactly once."""
    if prompt.count(END_OF_PROMPT) != 1:
        raise InvalidInput(f"a prompt must contain {END_OF_PROMPT} exactly once")
    return prompt


def _speech_samples(output: dict[str, Any]) -> np.ndarray:
    speech = output["tts_speech"]
    array = speech.cpu().numpy() if hasattr(speech, "cpu") else np.asarray(speech)
    return np.asarray(array, dtype=np.float32).reshape(-1)


def _to_cpu(value: Any) -> Any:
    return value.detach().cpu() if hasattr(value, "detach") else value


def _to_numpy(value: Any) -> np.ndarray:
    return np.asarray(value.cpu().numpy() if hasattr(value, "cpu") else value)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _cuda_available() -> bool:
    torch = _import_torch()
    return bool(torch is not None and torch.cuda.is_available())
