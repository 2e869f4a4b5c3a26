"""MAX_JSON_DEPTH: the depth measured without parsing, exact for valid JSON."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from core.errors import InvalidInput
from router import json_limits
from router.json_limits import checked_json_loads, json_depth


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def random_json(rng: random.Random, level: int = 0) -> Any:
    roll = rng.random()
    if level > 10 or roll < 0.3:
        return rng.choice(
            ['a"[b', "\\", '\\\\"[', "]]}", 1, None, '\\"{', "\\" * rng.randint(0, 5)]
        )
    if roll < 0.65:
        return [random_json(rng, level + 1) for _ in range(rng.randint(0, 4))]
    return {f'k{i}[\\"': random_json(rng, level + 1) for i in range(rng.randint(0, 4))}


@pytest.mark.parametrize("block", [7, 64, 256 * 1024])
def test_depth_matches_the_parsed_value(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(json_limits, "_BLOCK", block)
    rng = random.Random(block)
    for _ in range(500):
        value = random_json(rng)
        text = json.dumps(value)
        assert json_depth(text) == depth_of(value), text


def test_brackets_inside_strings_do_not_count() -> None:
    assert json_depth('{"text": "[[[[[[[[[[ {{{{ \\" [[[["}') == 1


def test_too_deep_is_invalid_input_before_parsing() -> None:
    with pytest.raises(InvalidInput, match="32"):
        checked_json_loads("[" * 100_000 + "]" * 100_000, 32)
    assert checked_json_loads('{"a": [[1]]}', 32) == {"a": [[1]]}


def test_hostile_input_is_measured_in_linear_time() -> None:
    for text in ('"\\' * 1_000_000, '"a' * 1_000_000, "[1," * 700_000, "\\" * 2_000_000):
        started = time.perf_counter()
        json_depth(text)
        assert time.perf_counter() - started < 2.0


def test_the_bracket_count_settles_shallow_bodies_and_defers_to_the_scan() -> None:
    from router.json_limits import nests_deeper_than

    assert not nests_deeper_than(b'{"a": [1, 2, {"b": 3}]}', 3)
    assert nests_deeper_than(b'{"a": [1, 2, {"b": [4]}]}', 3)
    # more brackets than the limit, but side by side or inside strings: not deep
    assert not nests_deeper_than('[[1], [2], [3], [4], "[[[["]', 2)
    assert nests_deeper_than("[" * 40 + "]" * 40, 32)
