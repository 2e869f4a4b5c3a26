"""Text helpers both engines share: sentence splitting and language by script.

Engines speak best one sentence at a time, and streaming starts sooner when the first
sentence goes out alone; long-form rendering uses the same splitter with a larger limit.
"""

from __future__ import annotations

import re

from ..errors import InvalidInput

SUPPORTED_LANGUAGES: tuple[str, ...] = ("zh", "en", "ja", "ko", "de", "es", "fr", "it", "ru")

# The 17 Chinese dialects upstream CosyVoice was trained to speak on instruction.
CHINESE_DIALECTS: tuple[str, ...] = (
    "cantonese",
    "northeastern",
    "gansu",
    "guizhou",
    "henan",
    "hubei",
    "hunan",
    "jiangxi",
    "minnan",
    "ningxia",
    "shanxi",
    "shaanxi",
    "shandong",
    "shanghai",
    "sichuan",
    "tianjin",
    "yunnan",
)

# A sentence ends after CJK full-width terminators at once, or after Latin ones when
# whitespace follows (so "3.14" and "e.g.x" stay whole); closing quotes and brackets
# stay with the sentence they close.
_CLOSERS = re.escape("\"'”’»)）]】」』")
_SENTENCE_END = re.compile(
    rf"(?:[。！？；…]+[{_CLOSERS}]*\s*)"
    rf"|(?:[.!?;]+[{_CLOSERS}]*(?:\s+|$))"
    r"|(?:\n+)"
)
_CLAUSE_END = re.compile(r"(?:[，、,：:]+\s*)")
_SPEAKABLE = re.compile(r"\w", re.UNICODE)

END_OF_PROMPT = "<|endofprompt|>"
# Tokens the CosyVoice models read as prompt structure, never as words: in a text to
# speak they end the prompt early or make the model's stream never finish.
PROMPT_MARKERS: tuple[str, ...] = (END_OF_PROMPT, "<|im_start|>", "<|im_end|>", "<|endoftext|>")


def check_renderable(text: str) -> None:
    """InvalidInput for text no engine can render: prompt markers, or nothing to speak.

    The CosyVoice engine runs this before every synthesis and task creation runs it too,
    so a task that could never render is refused when it is created, not when it runs.
    """
    for marker in PROMPT_MARKERS:
        if marker in text:
            raise InvalidInput(f"the text must not contain {marker} (a model control token)")
    if not _SPEAKABLE.search(text):
        raise InvalidInput("the text has nothing to speak")


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Sentences of at most `max_chars`, in order, none empty, no word lost.

    Sentences longer than the limit are cut at commas, then between words, and only as
    a last resort (long runs without spaces) every `max_chars` characters. A piece with
    nothing speakable in it (stray punctuation) is attached to its neighbour.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    pieces: list[str] = []
    for sentence in _split_keep(text, _SENTENCE_END):
        pieces.extend(_limit(sentence, max_chars))
    return _attach_unspeakable([p.strip() for p in pieces if p.strip()], max_chars)


def _split_keep(text: str, pattern: re.Pattern[str]) -> list[str]:
    """Split after each match of `pattern`, keeping the delimiter with the left part."""
    parts: list[str] = []
    start = 0
    for match in pattern.finditer(text):
        if match.end() > start:
            parts.append(text[start : match.end()])
            start = match.end()
    if start < len(text):
        parts.append(text[start:])
    return parts


def _limit(sentence: str, max_chars: int) -> list[str]:
    if len(sentence.strip()) <= max_chars:
        return [sentence]
    out: list[str] = []
    for clause in _pack(_split_keep(sentence, _CLAUSE_END), max_chars):
        if len(clause.strip()) <= max_chars:
            out.append(clause)
            continue
        for chunk in _pack(re.findall(r"\S+\s*", clause), max_chars):
            while len(chunk.strip()) > max_chars:
                stripped = chunk.strip()
                out.append(stripped[:max_chars])
                chunk = stripped[max_chars:]
            out.append(chunk)
    return out


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Greedily join consecutive parts while the result stays within the limit."""
    packed: list[str] = []
    for part in parts:
        if packed and len((packed[-1] + part).strip()) <= max_chars:
            packed[-1] += part
        else:
            packed.append(part)
    return packed


def _attach_unspeakable(pieces: list[str], max_chars: int) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        if out and not _SPEAKABLE.search(piece) and len(out[-1]) + len(piece) + 1 <= max_chars:
            out[-1] = f"{out[-1]} {piece}" if piece[0].isascii() else out[-1] + piece
        else:
            out.append(piece)
    return out


# --- language -------------------------------------------------------------------------

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")

# Letters that (almost) only one of the Latin-script languages uses, and a few of each
# language's commonest words: enough to tell short prompts apart.
_LATIN_HINTS: dict[str, tuple[str, frozenset[str]]] = {
    "de": ("ßäöü", frozenset("der die das und ist nicht ich ein eine mit sie zu".split())),
    "es": ("ñ¿¡áíóú", frozenset("el los las que y es por para con una está muy".split())),
    "fr": ("çœèêëîïôûâ", frozenset("le les et est je vous une des pas avec du au".split())),
    "it": ("òìù", frozenset("il gli che di non sono per della è ciao come".split())),
    "en": ("", frozenset("the and is to of you it that this with are".split())),
}


def detect_language(text: str) -> str:
    """The language of `text` judged by its script; Latin text defaults to English."""
    if _KANA.search(text):
        return "ja"
    hangul, han = len(_HANGUL.findall(text)), len(_HAN.findall(text))
    if hangul and hangul >= han:
        return "ko"
    if han:
        return "zh"
    if len(_CYRILLIC.findall(text)) > len(_LATIN.findall(text)):
        return "ru"
    return _latin_language(text)


def _latin_language(text: str) -> str:
    lowered = text.lower()
    words = re.findall(r"[^\W\d_]+", lowered)
    scores: dict[str, int] = {}
    for language, (letters, common) in _LATIN_HINTS.items():
        scores[language] = 2 * sum(lowered.count(ch) for ch in letters) + sum(
            word in common for word in words
        )
    best = max(scores, key=lambda language: scores[language])
    return best if scores[best] > scores["en"] else "en"
