"""Sentence splitting and language detection."""

from __future__ import annotations

import re

import pytest

from core.engines.text import (
    CHINESE_DIALECTS,
    SUPPORTED_LANGUAGES,
    detect_language,
    split_sentences,
)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Hello world. How are you? I am fine! Pi is 3.14 exactly.",
            ["Hello world.", "How are you?", "I am fine!", "Pi is 3.14 exactly."],
        ),
        (
            "你好。今天天气很好！我们去公园吧？好的；走吧",
            ["你好。", "今天天气很好！", "我们去公园吧？", "好的；", "走吧"],
        ),
        ("こんにちは。元気ですか？", ["こんにちは。", "元気ですか？"]),
        ("她说：“你好。”然后走了。", ["她说：“你好。”", "然后走了。"]),
        ("Line one\nLine two\n\nLine three", ["Line one", "Line two", "Line three"]),
        ('"Stop." He left.', ['"Stop."', "He left."]),
    ],
)
def test_splits_at_sentence_ends(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_long_sentence_is_cut_at_commas_then_spaces() -> None:
    text = ", ".join(f"clause number {i} of a very long sentence" for i in range(20)) + "."
    pieces = split_sentences(text, max_chars=100)
    assert len(pieces) > 1
    assert all(0 < len(p) <= 100 for p in pieces)
    assert all(p.endswith((",", ".")) for p in pieces)
    assert words(" ".join(pieces)) == words(text)


def test_text_without_spaces_is_cut_by_length() -> None:
    text = "长" * 450
    pieces = split_sentences(text, max_chars=200)
    assert [len(p) for p in pieces] == [200, 200, 50]
    assert "".join(pieces) == text


def test_no_empty_pieces_and_nothing_lost() -> None:
    text = "  First.   Second!!  ...  Third?  \n\n  "
    pieces = split_sentences(text)
    assert all(p.strip() for p in pieces)
    assert words(" ".join(pieces)) == ["First", "Second", "Third"]
    assert split_sentences("   ") == []


def test_bare_punctuation_joins_the_sentence_before() -> None:
    assert split_sentences("Wait. ... Go.") == ["Wait. ...", "Go."]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Hello, how are you today?", "en"),
        ("希望你以后能够做的比我还好呦。", "zh"),
        ("こんにちは、今日はいい天気ですね。", "ja"),
        ("日本語の文章です", "ja"),
        ("안녕하세요, 오늘 날씨가 좋네요.", "ko"),
        ("Привет, как у тебя дела?", "ru"),
        ("Guten Tag, wie geht es Ihnen? Schön.", "de"),
        ("Der Hund und die Katze", "de"),
        ("Hola, ¿cómo estás?", "es"),
        ("Bonjour, ça va très bien", "fr"),
        ("Ciao, come stai? Non lo so", "it"),
        ("12345", "en"),
    ],
)
def test_detects_language_by_script(text: str, language: str) -> None:
    assert detect_language(text) == language


def test_language_and_dialect_tables() -> None:
    assert SUPPORTED_LANGUAGES == ("zh", "en", "ja", "ko", "de", "es", "fr", "it", "ru")
    assert len(CHINESE_DIALECTS) == 17
    assert "cantonese" in CHINESE_DIALECTS
    assert {"shanxi", "shaanxi"} <= set(CHINESE_DIALECTS)
