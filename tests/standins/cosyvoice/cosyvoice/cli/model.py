"""Stand-in model: a quiet tone per text, chunked like upstream's streaming."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import matcha  # noqa: F401  (upstream needs third_party/Matcha-TTS on sys.path too)
import numpy as np

from ..utils.tensors import tensor
from .frontend import decode_text

SAMPLE_RATE = 24000
SAMPLES_PER_TOKEN = SAMPLE_RATE // 25
TOKENS_PER_CHAR = 4
END_OF_PROMPT = "<|endofprompt|>"


class CosyVoice2Model:
    def __init__(self, needs_end_of_prompt: bool) -> None:
        self.needs_end_of_prompt = needs_end_of_prompt
        self.token_hop_len = 25
        self.token_max_hop_len = 4 * self.token_hop_len
        self.stream_scale_factor = 2
        self.lock = threading.Lock()
        self.tts_speech_token_dict: dict[str, list[int]] = {}
        self.llm_end_dict: dict[str, bool] = {}
        self.hift_cache_dict: dict[str, Any] = {}
        self.chunk_delay = 0.0  # tests slow the model down to watch cancellation
        self.calls: list[dict[str, Any]] = []

    def tts(
        self,
        text: Any,
        flow_embedding: Any,
        llm_embedding: Any = None,
        prompt_text: Any = None,
        llm_prompt_speech_token: Any = None,
        flow_prompt_speech_token: Any = None,
        prompt_speech_feat: Any = None,
        stream: bool = False,
        speed: float = 1.0,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        tts_text = decode_text(text)
        prompt = decode_text(prompt_text) if prompt_text is not None else ""
        record: dict[str, Any] = {
            "llm_text": tts_text,
            "llm_prompt_text": prompt,
            "stream": stream,
            "speed": speed,
            "hop_at_start": self.token_hop_len,
            "chunks": 0,
            "closed_early": False,
            "finished": False,
        }
        self.calls.append(record)
        if self.needs_end_of_prompt and END_OF_PROMPT not in prompt + tts_text:
            # Upstream fails obscurely here (or hangs when streaming).
            raise RuntimeError("index out of range in self")
        this_uuid = str(uuid.uuid1())
        with self.lock:
            self.tts_speech_token_dict[this_uuid] = []
            self.llm_end_dict[this_uuid] = False
            self.hift_cache_dict[this_uuid] = None
        spoken = tts_text.split(END_OF_PROMPT)[-1]
        total = max(len(spoken), 1) * TOKENS_PER_CHAR
        self.tts_speech_token_dict[this_uuid] = list(range(total))
        self.llm_end_dict[this_uuid] = True
        try:
            if stream:
                offset = 0
                while offset < total:
                    hop = min(self.token_hop_len, total - offset)
                    offset += hop
                    self.token_hop_len = min(
                        self.token_max_hop_len, self.token_hop_len * self.stream_scale_factor
                    )
                    yield self._chunk(hop * SAMPLES_PER_TOKEN, record)
            else:
                yield self._chunk(int(total * SAMPLES_PER_TOKEN / speed), record)
        except GeneratorExit:
            record["closed_early"] = True  # upstream leaves its entries behind here
            raise
        record["finished"] = True
        with self.lock:
            self.tts_speech_token_dict.pop(this_uuid)
            self.llm_end_dict.pop(this_uuid)
            self.hift_cache_dict.pop(this_uuid)

    def _chunk(self, count: int, record: dict[str, Any]) -> dict[str, Any]:
        if self.chunk_delay:
            time.sleep(self.chunk_delay)
        record["chunks"] += 1
        t = np.arange(count, dtype=np.float32) / SAMPLE_RATE
        speech = (0.3 * np.sin(2 * np.pi * 180.0 * t)).astype(np.float32).reshape(1, -1)
        return {"tts_speech": tensor(speech)}
