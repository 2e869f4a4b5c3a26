"""The development engine, driving the real libespeak-ng."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.audio.decode import decode_clip
from core.audio.dsp import estimate_pitch, is_silent
from core.domain import SynthesisMode
from core.engines import espeak
from core.engines.base import EngineRequest, FinalChunk
from core.engines.espeak import EspeakEngine, EspeakVoiceFeatures
from core.engines.text import SUPPORTED_LANGUAGES
from core.errors import EngineNotReady, InvalidInput, SynthesisFailed
from core.ports import Clip

RATE = 22050

SENTENCES = {
    "zh": "今天天气很好，我们一起去公园散步吧。",
    "en": "Hello, this is a test of the development engine.",
    "ja": "こんにちは、げんきですか。",
    "ko": "안녕하세요, 오늘 날씨가 좋네요.",
    "de": "Guten Tag, wie geht es Ihnen heute?",
    "es": "Hola, ¿cómo estás hoy?",
    "fr": "Bonjour, comment allez-vous aujourd'hui?",
    "it": "Ciao, come stai oggi?",
    "ru": "Привет, как у тебя дела сегодня?",
}


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    loaded = EspeakEngine()
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def english_voice(engine: EspeakEngine, english_clip: bytes) -> tuple[Clip, EspeakVoiceFeatures]:
    clip = decode_clip(english_clip)
    return clip, engine.extract_features(clip, None)


@pytest.fixture(scope="module")
def mandarin_voice(engine: EspeakEngine, mandarin_clip: bytes) -> tuple[Clip, EspeakVoiceFeatures]:
    clip = decode_clip(mandarin_clip)
    return clip, engine.extract_features(clip, "希望你以后能够做的比我还好呦。")


def speak(
    engine: EspeakEngine, voice: tuple[Clip, EspeakVoiceFeatures], text: str, **options: object
) -> list[np.ndarray]:
    clip, features = voice
    request = EngineRequest(
        text=text,
        mode=SynthesisMode.cross_lingual,
        clip=clip,
        features=features,
        voice_key="test",
        **options,  # type: ignore[arg-type]
    )
    return list(engine.synthesize(request))


def seconds(chunks: list[np.ndarray]) -> float:
    return sum(len(c) for c in chunks) / RATE


def test_info_is_honest(engine: EspeakEngine) -> None:
    info = engine.info
    assert info.engine == "espeak"
    assert info.real_model is False
    assert info.sample_rate == RATE
    assert info.model.startswith("espeak-ng 1.")
    assert "development engine" in info.model
    assert info.languages == SUPPORTED_LANGUAGES
    assert info.chinese_dialects == ("cantonese",)
    assert info.instruct_support


@pytest.mark.parametrize("language", list(SENTENCES))
def test_every_language_speaks(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures], language: str
) -> None:
    chunks = speak(engine, english_voice, SENTENCES[language], language=language)
    audio = np.concatenate(chunks)
    assert audio.dtype == np.float32
    assert not is_silent(audio)
    assert 0.7 < seconds(chunks) < 8.0
    assert np.max(np.abs(audio)) <= 1.0


def test_language_is_detected_when_not_given(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    chunks = speak(engine, english_voice, SENTENCES["ru"])
    assert not is_silent(np.concatenate(chunks))


@pytest.mark.parametrize(("code", "text"), [("zh-CN", SENTENCES["zh"]), ("pt", SENTENCES["ru"])])
def test_regional_or_unknown_language_codes(
    engine: EspeakEngine,
    english_voice: tuple[Clip, EspeakVoiceFeatures],
    code: str,
    text: str,
) -> None:
    expected = seconds(speak(engine, english_voice, text))
    got = seconds(speak(engine, english_voice, text, language=code))
    assert got == pytest.approx(expected, rel=0.05)


def test_cantonese_instruction_switches_voice(
    engine: EspeakEngine, mandarin_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    mandarin = speak(engine, mandarin_voice, SENTENCES["zh"])
    cantonese = speak(
        engine, mandarin_voice, SENTENCES["zh"], instruct_text="Use Cantonese dialect"
    )
    assert not is_silent(np.concatenate(cantonese))
    assert 0.7 < seconds(cantonese) < 8.0
    assert seconds(cantonese) != pytest.approx(seconds(mandarin), abs=0.01)


def test_double_speed_halves_the_duration(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    text = "The quick brown fox jumps over the lazy dog, and then it runs far away."
    normal = seconds(speak(engine, english_voice, text, speed=1.0))
    fast = seconds(speak(engine, english_voice, text, speed=2.0))
    slow = seconds(speak(engine, english_voice, text, speed=0.5))
    assert fast / normal == pytest.approx(0.5, abs=0.125)
    assert slow / normal == pytest.approx(2.0, abs=0.5)
    # The library keeps the last voice settings: going back must set them again.
    again = seconds(speak(engine, english_voice, text, speed=1.0))
    assert again == pytest.approx(normal, rel=0.05)


def test_a_refused_voice_leaves_the_next_request_correct(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    slow = seconds(speak(engine, english_voice, text, speed=0.5))
    library = espeak._load_library()
    broken = espeak.VoiceSettings(
        voice="no-such-voice", rate=450, pitch=50, pitch_range=50, volume=100
    )
    with espeak._LIBRARY_LOCK, pytest.raises(SynthesisFailed):
        library.speak(text, broken)
    assert seconds(speak(engine, english_voice, text, speed=0.5)) == pytest.approx(slow, rel=0.05)


def test_longer_text_gives_longer_audio(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    short = seconds(speak(engine, english_voice, "Good morning."))
    long = seconds(speak(engine, english_voice, "Good morning. " * 4 + "How are you today?"))
    assert long > 3 * short


def test_one_chunk_per_sentence(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    chunks = speak(engine, english_voice, "First sentence. Second one! And a third?")
    assert len(chunks) == 3
    assert all(not is_silent(c) for c in chunks)


def test_the_last_chunk_is_marked_as_the_last(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    chunks = speak(engine, english_voice, "First sentence. Second one! And a third?")
    assert [isinstance(chunk, FinalChunk) for chunk in chunks] == [False, False, True]


def test_features_follow_the_clip(
    engine: EspeakEngine,
    english_voice: tuple[Clip, EspeakVoiceFeatures],
    mandarin_voice: tuple[Clip, EspeakVoiceFeatures],
) -> None:
    _, english = english_voice
    _, mandarin = mandarin_voice
    assert mandarin.gender == "female"
    assert mandarin.median_pitch_hz > english.median_pitch_hz + 50
    assert 120 <= english.words_per_minute <= 240
    assert engine.deserialize_features(engine.serialize_features(mandarin)) == mandarin


def test_output_pitch_follows_the_voice(
    engine: EspeakEngine,
    english_voice: tuple[Clip, EspeakVoiceFeatures],
    mandarin_voice: tuple[Clip, EspeakVoiceFeatures],
) -> None:
    text = SENTENCES["en"]
    low, _ = estimate_pitch(Clip(np.concatenate(speak(engine, english_voice, text)), RATE))
    high, _ = estimate_pitch(Clip(np.concatenate(speak(engine, mandarin_voice, text)), RATE))
    assert high > 1.4 * low
    assert high == pytest.approx(mandarin_voice[1].median_pitch_hz, rel=0.25)


def test_instructions_change_the_audio(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    text = SENTENCES["en"]
    plain = np.concatenate(speak(engine, english_voice, text))
    slow = np.concatenate(
        speak(engine, english_voice, text, instruct_text="Speak slowly with a happy tone")
    )
    whisper = np.concatenate(speak(engine, english_voice, text, instruct_text="Whisper softly"))
    loud = np.concatenate(speak(engine, english_voice, text, instruct_text="Say it loudly"))
    assert len(slow) > 1.15 * len(plain)
    assert not is_silent(whisper)

    def rms(audio: np.ndarray) -> float:
        return float(np.sqrt(np.mean(audio**2)))

    assert rms(whisper) < rms(plain) < rms(loud)


def test_cosyvoice_markup_is_not_read_aloud(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    plain = seconds(speak(engine, english_voice, "Hello world."))
    marked = seconds(speak(engine, english_voice, "<|endofprompt|>Hello [breath] world."))
    assert marked == pytest.approx(plain, rel=0.15)


def test_nothing_speakable_is_invalid_input(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    with pytest.raises(InvalidInput):
        speak(engine, english_voice, "... ???")


def test_much_faster_than_real_time(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    text = "This sentence is here to measure how fast the engine speaks. " * 20
    started = time.perf_counter()
    audio_seconds = seconds(speak(engine, english_voice, text))
    elapsed = time.perf_counter() - started
    assert audio_seconds / elapsed > 50  # several hundred times here; margin for slow CI


def test_concurrent_requests_do_not_mix(
    engine: EspeakEngine,
    english_voice: tuple[Clip, EspeakVoiceFeatures],
    mandarin_voice: tuple[Clip, EspeakVoiceFeatures],
) -> None:
    jobs = [(english_voice, SENTENCES["en"] * 3), (mandarin_voice, SENTENCES["zh"] * 3)] * 3
    expected = [np.concatenate(speak(engine, voice, text)) for voice, text in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda job: np.concatenate(speak(engine, *job)), jobs))
    # espeak adds a little random jitter, so runs differ by a few samples, never by voice.
    for got, want in zip(results, expected, strict=True):
        assert len(got) == pytest.approx(len(want), rel=0.01)
        got_pitch, _ = estimate_pitch(Clip(got, RATE))
        want_pitch, _ = estimate_pitch(Clip(want, RATE))
        assert got_pitch == pytest.approx(want_pitch, rel=0.05)


def test_closing_the_stream_early_releases_the_library(
    engine: EspeakEngine, english_voice: tuple[Clip, EspeakVoiceFeatures]
) -> None:
    clip, features = english_voice
    request = EngineRequest(
        text="One. Two. Three. Four.",
        mode=SynthesisMode.cross_lingual,
        clip=clip,
        features=features,
        voice_key="test",
    )
    stream: Iterator[np.ndarray] = engine.synthesize(request)
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert speak(engine, english_voice, "Still working.")


def test_missing_library_is_engine_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    import espeakng_loader

    monkeypatch.setattr(espeak, "_library", None)
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: "/nonexistent/libespeak.so")
    with pytest.raises(EngineNotReady, match="libespeak-ng could not be loaded"):
        EspeakEngine().load()
