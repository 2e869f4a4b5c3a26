"""Stand-in frontend: prompt features from a wav *file*, text tokens, `spk2info`."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import soundfile as sf

from ..utils.tensors import tensor, to_numpy

TOKENS_PER_SECOND = 25
_SENTENCE_END = re.compile(r"(?<=[。！？.!?])\s*")


def encode_text(text: str) -> Any:
    """Text tokens are the characters' code points, so recorded inputs can be read back."""
    return tensor(np.array([[ord(ch) for ch in text]], dtype=np.int32))


def decode_text(tokens: Any) -> str:
    return "".join(chr(int(code)) for code in to_numpy(tokens).reshape(-1))


class CosyVoiceFrontEnd:
    def __init__(self, spk2info: str) -> None:
        self.spk2info: dict[str, dict[str, Any]] = {}
        if os.path.exists(spk2info):
            # Upstream torch.loads the file; its built-in speakers are named like this.
            self.spk2info["中文女"] = {"embedding": tensor(np.zeros((1, 192), np.float32))}
        self.wav_reads: list[dict[str, Any]] = []

    def text_normalize(self, text: Any, split: bool = True, text_frontend: bool = True) -> Any:
        # Upstream skips normalisation *and splitting* for text with `<|...|>` markers.
        if ("<|" in text and "|>" in text) or text_frontend is False or text == "":
            return [text] if split else text
        text = text.strip()
        if not split:
            return text
        return [part for part in _SENTENCE_END.split(text) if part.strip()]

    def load_prompt_wav(self, prompt_wav: Any) -> tuple[np.ndarray, int]:
        if not isinstance(prompt_wav, (str, os.PathLike)):
            raise TypeError(f"prompt_wav must be a file path, got {type(prompt_wav).__name__}")
        samples, rate = sf.read(os.fspath(prompt_wav), dtype="float32", always_2d=True)
        self.wav_reads.append(
            {"path": os.fspath(prompt_wav), "sample_rate": rate, "seconds": len(samples) / rate}
        )
        # Upstream's message names the target rate, not the minimum: misleading on purpose.
        assert rate >= 16000, f"wav sample rate {rate} must be greater than 24000"
        assert len(samples) / rate <= 30, "do not support audio longer than 30s"
        return samples.mean(axis=1), rate

    def frontend_zero_shot(
        self,
        tts_text: str,
        prompt_text: str,
        prompt_wav: Any,
        resample_rate: int,
        zero_shot_spk_id: str,
    ) -> dict[str, Any]:
        if zero_shot_spk_id == "":
            samples, rate = self.load_prompt_wav(prompt_wav)
            token_count = max(int(len(samples) / rate * TOKENS_PER_SECOND), 1)
            speech_token = tensor(np.arange(token_count, dtype=np.int32).reshape(1, -1))
            embedding = tensor(np.full((1, 192), float(np.std(samples)), np.float32))
            model_input = {
                "prompt_text": encode_text(prompt_text),
                "prompt_text_len": tensor(np.array([len(prompt_text)], np.int32)),
                "llm_prompt_speech_token": speech_token,
                "llm_prompt_speech_token_len": tensor(np.array([token_count], np.int32)),
                "flow_prompt_speech_token": speech_token,
                "flow_prompt_speech_token_len": tensor(np.array([token_count], np.int32)),
                "prompt_speech_feat": tensor(np.zeros((1, 2 * token_count, 80), np.float32)),
                "prompt_speech_feat_len": tensor(np.array([2 * token_count], np.int32)),
                "llm_embedding": embedding,
                "flow_embedding": embedding,
            }
        else:
            # Used in place, like upstream: what the callers below delete is gone for
            # every later call with this id.
            model_input = self.spk2info[zero_shot_spk_id]
        model_input["text"] = encode_text(tts_text)
        model_input["text_len"] = tensor(np.array([len(tts_text)], np.int32))
        return model_input

    def frontend_cross_lingual(
        self, tts_text: str, prompt_wav: Any, resample_rate: int, zero_shot_spk_id: str
    ) -> dict[str, Any]:
        model_input = self.frontend_zero_shot(
            tts_text, "", prompt_wav, resample_rate, zero_shot_spk_id
        )
        del model_input["prompt_text"]
        del model_input["prompt_text_len"]
        del model_input["llm_prompt_speech_token"]
        del model_input["llm_prompt_speech_token_len"]
        return model_input

    def frontend_instruct2(
        self,
        tts_text: str,
        instruct_text: str,
        prompt_wav: Any,
        resample_rate: int,
        zero_shot_spk_id: str,
    ) -> dict[str, Any]:
        model_input = self.frontend_zero_shot(
            tts_text, instruct_text, prompt_wav, resample_rate, zero_shot_spk_id
        )
        del model_input["llm_prompt_speech_token"]
        del model_input["llm_prompt_speech_token_len"]
        return model_input
