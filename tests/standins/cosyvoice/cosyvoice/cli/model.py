"""Stand-in model: a quiet tone per text, made the way upstream makes it.

As upstream (`CosyVoice2Model`, which CosyVoice3 inherits), the LLM runs in a background
thread that appends speech tokens, and `tts` polls for them: an exception in that thread
never reaches the caller, and a stream then waits forever for tokens that never come.
`tts` keeps the stream hop on the shared model object, doubling it from 25 to 100 tokens
during a stream and never resetting it, and reads it afresh at every step, so concurrent
streams change each other's chunks. `llm_job` and `token2wav` have upstream's signatures,
so an adapter may drive them with a loop of its own.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import matcha  # noqa: F401  (upstream needs third_party/Matcha-TTS on sys.path too)
import numpy as np

from ..utils.tensors import tensor, to_numpy
from .frontend import decode_text

SAMPLE_RATE = 24000
SAMPLES_PER_TOKEN = SAMPLE_RATE // 25
TOKENS_PER_CHAR = 4
LOOKAHEAD_TOKENS = 3  # upstream's flow.pre_lookahead_len
END_OF_PROMPT = "<|endofprompt|>"


def _length(tokens: Any) -> int:
    return int(to_numpy(tokens).reshape(1, -1).shape[1]) if tokens is not None else 0


class CosyVoice2Model:
    def __init__(self, needs_end_of_prompt: bool) -> None:
        self.needs_end_of_prompt = needs_end_of_prompt
        self.flow = SimpleNamespace(pre_lookahead_len=LOOKAHEAD_TOKENS)
        self.token_hop_len = 25
        self.token_max_hop_len = 4 * self.token_hop_len
        self.stream_scale_factor = 2
        self.lock = threading.Lock()
        self.tts_speech_token_dict: dict[str, list[int]] = {}
        self.llm_end_dict: dict[str, bool] = {}
        self.hift_cache_dict: dict[str, Any] = {}
        self.chunk_delay = 0.0  # tests slow the vocoder down to watch cancellation
        self.token_delay = 0.0  # tests slow the LLM down to watch it stop
        self.llm_failure: Exception | None = None  # tests make the LLM thread fail
        self.calls: list[dict[str, Any]] = []  # one per LLM run, in order
        self._sessions: dict[str, dict[str, Any]] = {}

    def llm_job(
        self,
        text: Any,
        prompt_text: Any,
        llm_prompt_speech_token: Any,
        llm_embedding: Any,
        uuid: str,
    ) -> None:
        tts_text = decode_text(text)
        prompt = decode_text(prompt_text) if _length(prompt_text) else ""
        record: dict[str, Any] = {
            "llm_text": tts_text,
            "llm_prompt_text": prompt,
            "stream": None,
            "speed": None,
            "chunks": [],  # samples per token2wav call
            "tokens_made": 0,
            "tokens_planned": 0,
            "hop_on_model": self.token_hop_len,
        }
        self.calls.append(record)
        self._sessions[uuid] = record
        if self.llm_failure is not None:
            raise self.llm_failure
        if self.needs_end_of_prompt and END_OF_PROMPT not in prompt + tts_text:
            raise IndexError("index out of range in self")  # what upstream shows
        spoken = tts_text.split(END_OF_PROMPT)[-1]
        record["tokens_planned"] = max(len(spoken), 1) * TOKENS_PER_CHAR
        for token in range(record["tokens_planned"]):
            if self.token_delay:
                time.sleep(self.token_delay)
            # Looked up each time, as upstream does: a removed session fails here.
            self.tts_speech_token_dict[uuid].append(token)
            record["tokens_made"] += 1
        self.llm_end_dict[uuid] = True

    def vc_job(self, source_speech_token: Any, uuid: str) -> None:
        self.tts_speech_token_dict[uuid] = list(to_numpy(source_speech_token).reshape(-1))
        self.llm_end_dict[uuid] = True

    def token2wav(
        self,
        token: Any,
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
        assert uuid in self.hift_cache_dict, "token2wav for a session that does not exist"
        if speed != 1.0:
            assert token_offset == 0 and finalize, "speed change only in non-stream mode"
        # A chunk holds back the flow's lookahead until the stream's last call.
        usable = _length(token) - (0 if finalize else LOOKAHEAD_TOKENS)
        count = int((usable - token_offset) * SAMPLES_PER_TOKEN / speed)
        t = np.arange(count, dtype=np.float32) / SAMPLE_RATE
        speech = (0.3 * np.sin(2 * np.pi * 180.0 * t)).astype(np.float32).reshape(1, -1)
        record = self._sessions.get(uuid)
        if record is not None:
            record["stream"] = bool(record["stream"]) or stream
            record["speed"] = speed if finalize else record["speed"]
            record["chunks"].append(count)
        return tensor(speech)

    def tts(
        self,
        text: Any = None,
        flow_embedding: Any = None,
        llm_embedding: Any = None,
        prompt_text: Any = None,
        llm_prompt_speech_token: Any = None,
        flow_prompt_speech_token: Any = None,
        prompt_speech_feat: Any = None,
        stream: bool = False,
        speed: float = 1.0,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        """Upstream's loop, hazards included (see the module docstring)."""
        this_uuid = str(uuid.uuid1())
        with self.lock:
            self.tts_speech_token_dict[this_uuid] = []
            self.llm_end_dict[this_uuid] = False
            self.hift_cache_dict[this_uuid] = None
        worker = threading.Thread(
            target=self.llm_job,
            args=(text, prompt_text, llm_prompt_speech_token, llm_embedding, this_uuid),
        )
        worker.start()
        common = {
            "prompt_token": flow_prompt_speech_token,
            "prompt_feat": prompt_speech_feat,
            "embedding": flow_embedding,
        }
        tokens = self.tts_speech_token_dict[this_uuid]
        if stream:
            offset = 0
            prompt_tokens = _length(flow_prompt_speech_token)
            pad = math.ceil(prompt_tokens / self.token_hop_len) * self.token_hop_len - prompt_tokens
            while True:
                time.sleep(0.001)  # upstream polls every 0.1 s
                hop = self.token_hop_len + pad if offset == 0 else self.token_hop_len
                if len(tokens) - offset >= hop + LOOKAHEAD_TOKENS:
                    upto = tensor(np.array([tokens[: offset + hop + LOOKAHEAD_TOKENS]]))
                    speech = self.token2wav(
                        token=upto, **common, token_offset=offset, uuid=this_uuid, stream=True
                    )
                    offset += hop
                    self.token_hop_len = min(
                        self.token_max_hop_len, self.token_hop_len * self.stream_scale_factor
                    )
                    yield {"tts_speech": speech.cpu()}
                if self.llm_end_dict[this_uuid] and len(tokens) - offset < hop + LOOKAHEAD_TOKENS:
                    break
            worker.join()
            speech = self.token2wav(
                token=tensor(np.array([tokens])),
                **common,
                token_offset=offset,
                uuid=this_uuid,
                finalize=True,
            )
        else:
            worker.join()
            speech = self.token2wav(
                token=tensor(np.array([tokens])),
                **common,
                token_offset=0,
                uuid=this_uuid,
                finalize=True,
                speed=speed,
            )
        yield {"tts_speech": speech.cpu()}
        # Not reached when the caller closes the stream early: the entries stay behind.
        with self.lock:
            self.tts_speech_token_dict.pop(this_uuid)
            self.llm_end_dict.pop(this_uuid)
            self.hift_cache_dict.pop(this_uuid)
