"""What an `instruct_text` asks for, understood once for both engines.

Users write free-form English or Chinese ("Speak slowly with a happy tone", "用粤语说").
`parse_instruction` reduces that to the few knobs a formant synthesizer has (rate,
pitch, volume, whisper, dialect, emotion). `to_cosyvoice_instruction` maps the same
request onto one of the instructions CosyVoice was actually trained on, because the model
follows those reliably and may read other long instructions aloud.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Instruction:
    """Prosody requested by an instruction; the defaults mean "as the voice is".

    `rate` and `volume` are factors (1.0 = unchanged); `pitch_shift` is in semitones.
    """

    rate: float = 1.0
    pitch_shift: float = 0.0
    volume: float = 1.0
    whisper: bool = False
    dialect: str | None = None  # one of text.CHINESE_DIALECTS
    emotion: str | None = None  # happy, sad, angry, neutral, robot


# Chinese names of the dialects, as upstream's instructions spell them, plus the other
# names people use for them.
DIALECT_NAMES_ZH: dict[str, str] = {
    "cantonese": "广东话",
    "northeastern": "东北话",
    "gansu": "甘肃话",
    "guizhou": "贵州话",
    "henan": "河南话",
    "hubei": "湖北话",
    "hunan": "湖南话",
    "jiangxi": "江西话",
    "minnan": "闽南话",
    "ningxia": "宁夏话",
    "shanxi": "山西话",
    "shaanxi": "陕西话",
    "shandong": "山东话",
    "shanghai": "上海话",
    "sichuan": "四川话",
    "tianjin": "天津话",
    "yunnan": "云南话",
}

_DIALECT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("cantonese", r"cantonese|广东话|廣東話|粤语|粵語|白话"),
        ("northeastern", r"north[- ]?east(ern)?|dongbei|东北"),
        ("gansu", r"gansu|甘肃"),
        ("guizhou", r"guizhou|贵州"),
        ("henan", r"henan|河南"),
        ("hubei", r"hubei|湖北"),
        ("hunan", r"hunan|湖南"),
        ("jiangxi", r"jiangxi|江西"),
        ("minnan", r"minnan|min nan|hokkien|taiwanese|闽南|閩南"),
        ("ningxia", r"ningxia|宁夏"),
        ("shaanxi", r"shaanxi|陕西"),
        ("shanxi", r"\bshanxi|山西"),
        ("shandong", r"shandong|山东"),
        ("shanghai", r"shanghai(nese)?|上海话|沪语"),
        ("sichuan", r"sichuan(ese)?|szechuan|四川"),
        ("tianjin", r"tianjin|天津"),
        ("yunnan", r"yunnan|云南"),
    )
)

_EMOTIONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("happy", r"\b(happ(y|ily)|(cheer|joy)ful(ly)?|excited(ly)?|glad)\b|开心|高兴|快乐|愉快"),
        ("sad", r"\b(sad(ly)?|sorrowful(ly)?|unhappy|melanchol(y|ic))\b|伤心|难过|悲伤"),
        ("angry", r"\b(angry|angrily|anger|furious(ly)?|mad)\b|生气|愤怒"),
        ("robot", r"\b(robot(ic)?|machine[- ]like)\b|机器人"),
        ("neutral", r"\b(formal(ly)?|professional(ly)?|neutral(ly)?|serious(ly)?)\b|正式|专业"),
        ("peppa", r"peppa|小猪佩奇"),
    )
)

_SLOW = re.compile(r"\b(slow(ly|er)?|leisurely)\b|慢", re.IGNORECASE)
_VERY_SLOW = re.compile(
    r"\b(very|extremely|really|super)\s+slow|\bas\s+slow\w*\s+as\s+possible|尽可能慢|非常慢|很慢",
    re.IGNORECASE,
)
_FAST = re.compile(r"\b(fast(er)?|quick(ly|er)?|rapid(ly)?)\b|快", re.IGNORECASE)
_VERY_FAST = re.compile(
    r"\b(very|extremely|really|super)\s+(fast|quick|rapid)"
    r"|\bas\s+(fast|quick\w*)\s+as\s+possible|尽可能快|非常快|很快",
    re.IGNORECASE,
)
_LOUD = re.compile(r"\b(loud(ly|er)?|shout(ing)?)\b|大声|大聲", re.IGNORECASE)
_SOFT = re.compile(
    r"\b(soft(ly|er)?|quiet(ly|er)?|gentl[ey])\b|轻声|輕聲|小声|小聲|温柔", re.IGNORECASE
)
_WHISPER = re.compile(r"\bwhisper(ing|ed)?\b|耳语|悄悄", re.IGNORECASE)

# What each emotion does to a synthesizer without its own emotion model: small, audible.
_EMOTION_PROSODY: dict[str, Instruction] = {
    "happy": Instruction(rate=1.05, pitch_shift=2.0, volume=1.05),
    "sad": Instruction(rate=0.9, pitch_shift=-2.0, volume=0.85),
    "angry": Instruction(rate=1.1, pitch_shift=1.0, volume=1.3),
    "neutral": Instruction(rate=0.95, pitch_shift=-1.0),
    "robot": Instruction(rate=0.95),
    "peppa": Instruction(rate=1.05, pitch_shift=4.0),
}


def parse_instruction(text: str | None) -> Instruction:
    """The prosody an instruction asks for; anything not understood keeps the defaults."""
    if not text or not text.strip():
        return Instruction()
    rest = text

    dialect = next((name for name, pattern in _DIALECT_PATTERNS if pattern.search(rest)), None)
    emotion = None
    for name, pattern in _EMOTIONS:
        if pattern.search(rest):
            emotion = name
            # 快乐 (happy) must not also read as 快 (fast).
            rest = pattern.sub(" ", rest)
            break
    result = _EMOTION_PROSODY.get(emotion or "", Instruction())

    if _SLOW.search(rest):
        result = replace(result, rate=0.6 if _VERY_SLOW.search(rest) else 0.75)
    elif _FAST.search(rest):
        result = replace(result, rate=1.6 if _VERY_FAST.search(rest) else 1.3)

    if _WHISPER.search(rest):
        result = replace(result, whisper=True, volume=0.6)
    elif _LOUD.search(rest):
        result = replace(result, volume=1.5)
    elif _SOFT.search(rest):
        result = replace(result, volume=0.6)

    return replace(result, dialect=dialect, emotion=emotion)


# --- CosyVoice's own instructions -------------------------------------------------------

# The non-dialect instructions of upstream's training list (cosyvoice/utils/common.py).
# Two of them are in English there, and are used as they are.
COSYVOICE_LOUD = "Please say a sentence as loudly as possible."
COSYVOICE_SOFT = "Please say a sentence in a very soft voice."
COSYVOICE_SLOW = "请用尽可能慢地语速说一句话。"
COSYVOICE_FAST = "请用尽可能快地语速说一句话。"
COSYVOICE_EMOTIONS: dict[str, str] = {
    "happy": "请非常开心地说一句话。",
    "sad": "请非常伤心地说一句话。",
    "angry": "请非常生气地说一句话。",
    "peppa": "我想体验一下小猪佩奇风格，可以吗？",
    "robot": "你可以尝试用机器人的方式解答吗？",
}


def cosyvoice_dialect_instruction(dialect: str) -> str:
    return f"请用{DIALECT_NAMES_ZH[dialect]}表达。"


def to_cosyvoice_instruction(text: str) -> str:
    """The one trained instruction closest to `text`, or `text` unchanged.

    Priority follows what a listener notices most: dialect, then emotion, then speaking
    rate, then loudness. Text already in upstream's prompt format passes through.
    """
    if "<|" in text and "|>" in text:
        return text
    wanted = parse_instruction(text)
    if wanted.dialect:
        return cosyvoice_dialect_instruction(wanted.dialect)
    if wanted.emotion in COSYVOICE_EMOTIONS:
        return COSYVOICE_EMOTIONS[wanted.emotion]
    base_rate = _EMOTION_PROSODY.get(wanted.emotion or "", Instruction()).rate
    if wanted.rate < base_rate:
        return COSYVOICE_SLOW
    if wanted.rate > base_rate:
        return COSYVOICE_FAST
    if wanted.whisper or wanted.volume < 1.0:
        return COSYVOICE_SOFT
    if wanted.volume > 1.0:
        return COSYVOICE_LOUD
    return text
