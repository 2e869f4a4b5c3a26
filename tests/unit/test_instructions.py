"""Instruction understanding for the espeak knobs and CosyVoice's trained instructions."""

from __future__ import annotations

import pytest

from core.engines.instructions import (
    DIALECT_NAMES_ZH,
    Instruction,
    parse_instruction,
    to_cosyvoice_instruction,
)
from core.engines.text import CHINESE_DIALECTS


def test_speak_slowly_with_a_happy_tone() -> None:
    parsed = parse_instruction("Speak slowly with a happy tone")
    assert parsed.rate < 1.0
    assert parsed.emotion == "happy"
    assert parsed.pitch_shift > 0


def test_whisper_softly() -> None:
    parsed = parse_instruction("Whisper softly")
    assert parsed.whisper
    assert parsed.volume < 1.0


def test_formal_and_professional_tone() -> None:
    parsed = parse_instruction("Use formal and professional tone")
    assert parsed.emotion == "neutral"
    assert parsed.rate < 1.0
    assert parsed.pitch_shift < 0
    assert not parsed.whisper


@pytest.mark.parametrize("text", ["Use Cantonese dialect", "请用广东话表达。", "用粤语说"])
def test_cantonese(text: str) -> None:
    assert parse_instruction(text).dialect == "cantonese"


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("Speak fast", "rate", 1.3),
        ("Read it quickly", "rate", 1.3),
        ("Speak very fast", "rate", 1.6),
        ("Speak as slowly as possible", "rate", 0.6),
        ("你可以慢一点说吗", "rate", 0.75),
        ("Say it loudly", "volume", 1.5),
        ("Speak quietly", "volume", 0.6),
        ("请轻声说", "volume", 0.6),
        ("Sound sad", "emotion", "sad"),
        ("请非常生气地说一句话。", "emotion", "angry"),
        ("Talk like a robot", "emotion", "robot"),
    ],
)
def test_prosody_words(text: str, field: str, expected: object) -> None:
    assert getattr(parse_instruction(text), field) == expected


def test_happy_in_chinese_is_not_read_as_fast() -> None:
    parsed = parse_instruction("快乐地说")
    assert parsed.emotion == "happy"
    assert parsed.rate < 1.2


@pytest.mark.parametrize("text", [None, "", "   ", "Talk like a pirate"])
def test_unknown_keeps_defaults(text: str | None) -> None:
    assert parse_instruction(text) == Instruction()


@pytest.mark.parametrize(
    ("text", "trained"),
    [
        ("Use Cantonese dialect", "请用广东话表达。"),
        ("Speak slowly with a happy tone", "请非常开心地说一句话。"),
        ("Speak slowly", "请用尽可能慢地语速说一句话。"),
        ("Speak fast", "请用尽可能快地语速说一句话。"),
        ("Whisper softly", "Please say a sentence in a very soft voice."),
        ("Shout it loudly", "Please say a sentence as loudly as possible."),
        ("Sound sad", "请非常伤心地说一句话。"),
        ("Speak angrily", "请非常生气地说一句话。"),
        ("Answer like a robot", "你可以尝试用机器人的方式解答吗？"),
        ("Use Sichuanese", "请用四川话表达。"),
        ("用东北话说", "请用东北话表达。"),
    ],
)
def test_maps_onto_trained_instructions(text: str, trained: str) -> None:
    assert to_cosyvoice_instruction(text) == trained


@pytest.mark.parametrize(
    "text",
    [
        "Use formal and professional tone",
        "Talk like a pirate",
        "You are a helpful assistant. 请用四川话表达。<|endofprompt|>",
    ],
)
def test_unknown_instructions_pass_through(text: str) -> None:
    assert to_cosyvoice_instruction(text) == text


def test_every_dialect_has_its_chinese_name() -> None:
    assert set(DIALECT_NAMES_ZH) == set(CHINESE_DIALECTS)
    for dialect, name in DIALECT_NAMES_ZH.items():
        assert parse_instruction(f"请用{name}表达。").dialect == dialect
