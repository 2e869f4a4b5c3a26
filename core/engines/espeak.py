"""The development engine: libespeak-ng through ctypes, no torch, no weights.

It speaks every supported language (and Cantonese) at roughly a thousand times real
time on one CPU core, so the whole platform can run and be tested on a laptop. It is a
formant synthesizer, not a voice cloner: from the reference clip it takes only what its
few parameters can express (male/female variant, pitch level and range, speaking rate),
and it says so in `info` (`real_model=False`).

libespeak-ng keeps one voice, one parameter set and one callback per process, so every
call into it holds `_LIBRARY_LOCK`; a sentence takes a few milliseconds, so requests
interleave sentence by sentence without noticeable waiting.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..audio.dsp import estimate_pitch, estimate_speaking_rate
from ..errors import EngineNotReady, InvalidInput, SynthesisFailed
from ..ports import Clip, EngineInfo
from .base import EngineRequest, FinalChunk
from .instructions import Instruction, parse_instruction
from .text import SUPPORTED_LANGUAGES, detect_language, split_sentences

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050
SENTENCE_MAX_CHARS = 200

# espeak-ng voice names per language code; "yue" is reached through the Cantonese dialect.
ESPEAK_VOICES: dict[str, str] = {
    "zh": "cmn",
    "en": "en-us",
    "ja": "ja",
    "ko": "ko",
    "de": "de",
    "es": "es",
    "fr": "fr",
    "it": "it",
    "ru": "ru",
    "yue": "yue",
}

# --- libespeak-ng's C interface (speak_lib.h) -----------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report a missing data path instead of calling exit()
# Audio handed to the callback at a time. Each callback takes the GIL; at espeak's
# default of 60 ms a busy server's event loop made the engine thread wait for it about
# 70 times per 4 s utterance. Whole utterances are collected anyway.
_BUFFER_MS = 1000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000  # a sentence-final pause, so chunks join naturally
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

# --- how espeak's parameters sound (measured on espeak-ng 1.52 with dsp.estimate_pitch) --

# Pitch parameter 0..100 against the F0 shift it causes, in semitones from the value 50;
# the same curve holds within a semitone for the male and female variants.
_PITCH_PARAM = (0.0, 25.0, 50.0, 75.0, 100.0)
_PITCH_SEMITONES = (-6.6, -3.7, 0.0, 4.2, 8.6)
# Median F0 at pitch 50, averaged over languages.
_BASE_F0 = {"male": 95.0, "female": 200.0}
# F0 standard deviation relative to the median at range 50.
_BASE_RELATIVE_SPREAD = 0.11
# Rate (words per minute) against the energy peaks per second estimate_speaking_rate
# finds in espeak's own speech: lets a clip's measured rate pick an espeak rate.
_RATE_WPM = (100.0, 140.0, 175.0, 220.0, 300.0)
_RATE_NUCLEI = (3.3, 4.5, 4.9, 6.2, 7.7)
_WPM_LIMITS = (120, 240)  # what a clip may set; speed and instructions go beyond
_ESPEAK_WPM_LIMITS = (80, 600)  # above 450 espeak speeds up with its sonic stage
_FEMALE_ABOVE_HZ = 165.0
_DEFAULT_WPM = 175
_AUDIBLE_PEAK = 64  # int16; espeak's pauses are exact zeros

# Inline controls meant for CosyVoice ([breath], <strong>, <|endofprompt|>) are not read.
_MODEL_MARKUP = re.compile(r"<\|[^|>]*\|>|</?[a-z_]+>|\[[^\[\]\s]{1,24}\]")


@dataclass(frozen=True)
class EspeakVoiceFeatures:
    """What the development engine keeps of a reference clip."""

    median_pitch_hz: float
    pitch_std_hz: float
    gender: str  # "female" | "male"
    syllables_per_second: float
    words_per_minute: int


DEFAULT_FEATURES = EspeakVoiceFeatures(
    median_pitch_hz=_BASE_F0["male"],
    pitch_std_hz=_BASE_F0["male"] * _BASE_RELATIVE_SPREAD,
    gender="male",
    syllables_per_second=_RATE_NUCLEI[2],
    words_per_minute=_DEFAULT_WPM,
)


@dataclass(frozen=True)
class VoiceSettings:
    """One utterance's espeak voice name (language+variant) and parameters."""

    voice: str
    rate: int
    pitch: int
    pitch_range: int
    volume: int


class _Library:
    """The loaded shared library, initialised once per process."""

    def __init__(self) -> None:
        import espeakng_loader

        self.path = espeakng_loader.get_library_path()
        lib = ctypes.CDLL(self.path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int

        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path, _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise EngineNotReady(f"espeak-ng could not initialise with data at {data_path!r}")
        self.lib = lib
        self.sample_rate = rate
        self.version = (lib.espeak_Info(None) or b"").decode() or "unknown"
        self._collected: list[np.ndarray] = []
        self._applied: VoiceSettings | None = None  # what the library is set to now
        # Kept on the instance: ctypes must not free the callback while C holds it.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: Any, count: int, _events: Any) -> int:
        if count > 0 and wav:
            # One copy out of espeak's buffer (it reuses it). `np.ctypeslib.as_array` would
            # build a new ctypes array type per call: a quarter of the engine's CPU.
            samples = np.frombuffer(ctypes.string_at(wav, count * 2), dtype=np.int16)
            self._collected.append(samples)
        return 0  # 0 = go on

    def speak(self, text: str, settings: VoiceSettings) -> np.ndarray:
        """Int16 samples of one utterance. The caller holds _LIBRARY_LOCK."""
        self._apply(settings)
        encoded = text.encode("utf-8")
        self._collected = []
        status = self.lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
        )
        if status != 0:
            raise SynthesisFailed(f"espeak-ng failed to synthesize (error {status})")
        collected, self._collected = self._collected, []
        return np.concatenate(collected) if collected else np.zeros(0, dtype=np.int16)

    def _apply(self, settings: VoiceSettings) -> None:
        """Set the voice and parameters, unless they are set already.

        Each ctypes call lets go of the GIL and waits to get it back, up to the
        interpreter's switch interval (5 ms) when the event loop is busy, all the while
        holding the library lock that every other synthesis waits for. Consecutive
        sentences and requests of one voice need none of these calls.
        """
        if settings == self._applied:
            return
        self._applied = None  # until every call below has gone through
        if self.lib.espeak_SetVoiceByName(settings.voice.encode()) != 0:
            raise SynthesisFailed(f"espeak-ng has no voice {settings.voice!r}")
        for parameter, value in (
            (_PARAM_RATE, settings.rate),
            (_PARAM_PITCH, settings.pitch),
            (_PARAM_RANGE, settings.pitch_range),
            (_PARAM_VOLUME, settings.volume),
        ):
            self.lib.espeak_SetParameter(parameter, value, 0)
        self._applied = settings


_LIBRARY_LOCK = threading.Lock()
_library: _Library | None = None


def _load_library() -> _Library:
    global _library
    with _LIBRARY_LOCK:
        if _library is None:
            try:
                _library = _Library()
            except (ImportError, OSError, AttributeError, RuntimeError) as exc:
                raise EngineNotReady(f"libespeak-ng could not be loaded: {exc}") from exc
        return _library


class EspeakEngine:
    """Engine protocol over libespeak-ng (see the module docstring for what it is)."""

    def __init__(self) -> None:
        self._library: _Library | None = None

    @property
    def info(self) -> EngineInfo:
        version = self._library.version if self._library else None
        label = f"espeak-ng {version}" if version else "espeak-ng"
        return EngineInfo(
            engine="espeak",
            model=f"{label} (development engine)",
            real_model=False,
            sample_rate=SAMPLE_RATE,
            languages=SUPPORTED_LANGUAGES,
            chinese_dialects=("cantonese",),
            instruct_support=True,
        )

    def load(self) -> None:
        library = _load_library()
        if library.sample_rate != SAMPLE_RATE:
            raise EngineNotReady(
                f"libespeak-ng produces {library.sample_rate} Hz, expected {SAMPLE_RATE} Hz"
            )
        self._library = library
        log.info("espeak-ng %s loaded from %s", library.version, library.path)

    # --- voice features ----------------------------------------------------------------

    def extract_features(self, clip: Clip, prompt_text: str | None) -> EspeakVoiceFeatures:
        median, spread = estimate_pitch(clip)
        syllables = estimate_speaking_rate(clip)
        if median <= 0:
            median, spread = DEFAULT_FEATURES.median_pitch_hz, DEFAULT_FEATURES.pitch_std_hz
        wpm = DEFAULT_FEATURES.words_per_minute
        if syllables > 0:
            wpm = int(np.clip(np.interp(syllables, _RATE_NUCLEI, _RATE_WPM), *_WPM_LIMITS))
        return EspeakVoiceFeatures(
            median_pitch_hz=round(median, 1),
            pitch_std_hz=round(spread, 1),
            gender="female" if median > _FEMALE_ABOVE_HZ else "male",
            syllables_per_second=round(syllables, 2),
            words_per_minute=wpm,
        )

    def serialize_features(self, features: Any) -> bytes:
        return json.dumps(asdict(features), sort_keys=True).encode()

    def deserialize_features(self, data: bytes) -> EspeakVoiceFeatures:
        try:
            return EspeakVoiceFeatures(**json.loads(data))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"stored espeak voice features are unreadable: {exc}") from None

    # --- synthesis ---------------------------------------------------------------------

    def synthesize(self, request: EngineRequest) -> Iterator[np.ndarray]:
        library = self._library or _load_library()
        self._library = library
        features = request.features
        if not isinstance(features, EspeakVoiceFeatures):
            features = self.extract_features(request.clip, request.prompt_text)
        text = _MODEL_MARKUP.sub(" ", request.text)
        instruction = parse_instruction(request.instruct_text)
        language = _espeak_language(request.language) or detect_language(text)
        settings = voice_settings(features, instruction, language, request.speed)

        spoke = False
        sentences = split_sentences(text, SENTENCE_MAX_CHARS)
        for index, sentence in enumerate(sentences, start=1):
            with _LIBRARY_LOCK:
                pcm = library.speak(sentence, settings)
            # A sentence of bare punctuation comes back as its pause alone: skip it.
            if pcm.size and int(np.abs(pcm).max()) > _AUDIBLE_PEAK:
                spoke = True
                samples = pcm.astype(np.float32) / 32768.0
                yield samples.view(FinalChunk) if index == len(sentences) else samples
        if not spoke:
            raise InvalidInput("the text has nothing that can be spoken")


def _espeak_language(language: str | None) -> str | None:
    """A language code espeak can speak ("zh-CN" -> "zh"), or None to detect from text."""
    if not language:
        return None
    code = language.strip().lower().replace("_", "-")
    if code in ESPEAK_VOICES:
        return code
    base = code.split("-")[0]
    return base if base in ESPEAK_VOICES else None


def voice_settings(
    features: EspeakVoiceFeatures, instruction: Instruction, language: str, speed: float
) -> VoiceSettings:
    """espeak's voice and parameters for one request: clip traits, then the instruction."""
    if instruction.dialect == "cantonese" and language == "zh":
        language = "yue"
    voice = ESPEAK_VOICES.get(language, ESPEAK_VOICES["en"])

    female = features.gender == "female"
    if instruction.whisper:
        voice += "+whisperf" if female else "+whisper"
    elif female:
        voice += "+f3"

    rate = features.words_per_minute * speed * instruction.rate
    target_f0 = features.median_pitch_hz * 2 ** (instruction.pitch_shift / 12)
    semitones = 12 * np.log2(target_f0 / _BASE_F0["female" if female else "male"])
    relative_spread = features.pitch_std_hz / max(features.median_pitch_hz, 1.0)
    pitch_range = (
        0.0 if instruction.emotion == "robot" else 50 * relative_spread / _BASE_RELATIVE_SPREAD
    )
    return VoiceSettings(
        voice=voice,
        rate=int(np.clip(round(rate), *_ESPEAK_WPM_LIMITS)),
        pitch=round(np.interp(semitones, _PITCH_SEMITONES, _PITCH_PARAM)),
        pitch_range=int(np.clip(round(pitch_range), 0, 100)),
        # Above ~150 espeak's own output starts to clip.
        volume=int(np.clip(round(100 * instruction.volume), 10, 150)),
    )
