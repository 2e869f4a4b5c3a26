"""Stand-in model: a quiet tone per text, made the way upstream makes it.

As upstream, the LLM runs in a background thread that appends speech tokens, and the
caller's generator polls for them: an exception in that thread never reaches the caller,
and a stream then waits forever for tokens that never come.
"""

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
        self.chunk_delay = 0.0  # tests slow the vocoder down to watch cancellation
        self.llm_failure: Exception | None = None  # tests make the LLM thread fail
        self.calls: list[dict[str, Any]] = []

    def llm_job(
        self,
        text: str,
        prompt_text: str,
        llm_prompt_speech_token: Any,
        llm_embedding: Any,
        uuid: str,
    ) -> None:
        if self.llm_failure is not None:
            raise self.llm_failure
        if self.needs_end_of_prompt and END_OF_PROMPT not in prompt_text + text:
            raise IndexError("index out of range in self")  # what upstream shows
        spoken = text.split(END_OF_PROMPT)[-1]
        for token in range(max(len(spoken), 1) * TOKENS_PER_CHAR):
            self.tts_speech_token_dict[uuid].append(token)
        self.llm_end_dict[uuid] = True

    def token2wav(
        self,
        token: list[int],
        prompt_token: Any,
        prompt_feat: Any,
        embedding: Any,
        token_offset: int,
        uuid: str,
        stream: bool = False,
        finalize: bool = False,
        speed: float = 1.0,
    ) -> Any:
        if self.chunk_delay:
            time.sleep(self.chunk_delay)
        count = int((len(token) - token_offset) * SAMPLES_PER_TOKEN / speed)
        t = np.arange(count, dtype=np.float32) / SAMPLE_RATE
        speech = (0.3 * np.sin(2 * np.pi * 180.0 * t)).astype(np.float32).reshape(1, -1)
        return tensor(speech)

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
        }
        self.calls.append(record)
        this_uuid = str(uuid.uuid1())
        with self.lock:
            self.tts_speech_token_dict[this_uuid] = []
            self.llm_end_dict[this_uuid] = False
            self.hift_cache_dict[this_uuid] = None
        worker = threading.Thread(
            target=self.llm_job, args=(tts_text, prompt, None, None, this_uuid)
        )
        worker.start()
        tokens = self.tts_speech_token_dict[this_uuid]
        common = {
            "prompt_token": flow_prompt_speech_token,
            "prompt_feat": prompt_speech_feat,
            "embedding": flow_embedding,
        }
        try:
            if stream:
                offset = 0
                while True:
                    time.sleep(0.001)  # upstream polls every 0.1 s
                    hop = self.token_hop_len
                    if len(tokens) - offset >= hop:
                        speech = self.token2wav(
                            token=tokens[: offset + hop],
                            **common,
                            token_offset=offset,
                            uuid=this_uuid,
                            stream=stream,
                            finalize=False,
                        )
                        offset += hop
                        self.token_hop_len = min(
                            self.token_max_hop_len, self.token_hop_len * self.stream_scale_factor
                        )
                        record["chunks"] += 1
                        yield {"tts_speech": speech.cpu()}
                    if self.llm_end_dict[this_uuid] and len(tokens) - offset < hop:
                        break
                worker.join()
                speech = self.token2wav(
                    token=tokens, **common, token_offset=offset, uuid=this_uuid, finalize=True
                )
            else:
                worker.join()
                speech = self.token2wav(
                    token=tokens,
                    **common,
                    token_offset=0,
                    uuid=this_uuid,
                    finalize=True,
                    speed=speed,
                )
            record["chunks"] += 1
            yield {"tts_speech": speech.cpu()}
        except GeneratorExit:
            record["closed_early"] = True  # upstream leaves its entries behind here
            raise
        with self.lock:
            self.tts_speech_token_dict.pop(this_uuid)
            self.llm_end_dict.pop(this_uuid)
            self.hift_cache_dict.pop(this_uuid)
