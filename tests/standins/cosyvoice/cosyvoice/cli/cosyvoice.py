"""Stand-in for upstream `cosyvoice.cli.cosyvoice`: AutoModel, CosyVoice2, CosyVoice3."""

from __future__ import annotations

import os
from typing import Any

from .frontend import CosyVoiceFrontEnd
from .model import SAMPLE_RATE, CosyVoice2Model

INSTANCES: list[CosyVoice2] = []


class CosyVoice2:
    yaml_name = "cosyvoice2.yaml"

    def __init__(
        self,
        model_dir,
        load_jit=False,
        load_trt=False,
        load_vllm=False,
        fp16=False,
        trt_concurrent=1,
    ):
        self._setup(
            model_dir,
            {
                "load_jit": load_jit,
                "load_trt": load_trt,
                "load_vllm": load_vllm,
                "fp16": fp16,
                "trt_concurrent": trt_concurrent,
            },
        )

    def _setup(self, model_dir: str, options: dict[str, Any]) -> None:
        if not os.path.exists(os.path.join(model_dir, self.yaml_name)):
            raise ValueError(f"{model_dir}/{self.yaml_name} not found!")
        self.model_dir = model_dir
        self.load_options = options
        self.sample_rate = SAMPLE_RATE
        self.frontend = CosyVoiceFrontEnd(os.path.join(model_dir, "spk2info.pt"))
        self.model = CosyVoice2Model(needs_end_of_prompt=type(self) is CosyVoice3)
        self.calls: list[dict[str, Any]] = []
        INSTANCES.append(self)

    def list_available_spks(self) -> list[str]:
        return list(self.frontend.spk2info.keys())

    def save_spkinfo(self) -> None:
        raise AssertionError("a served model directory is read-only: never save_spkinfo()")

    def add_zero_shot_spk(self, prompt_text, prompt_wav, zero_shot_spk_id):
        assert zero_shot_spk_id != "", "do not use empty zero_shot_spk_id"
        self.calls.append(
            {
                "method": "add_zero_shot_spk",
                "prompt_text": prompt_text,
                "prompt_wav": prompt_wav,
                "zero_shot_spk_id": zero_shot_spk_id,
            }
        )
        model_input = self.frontend.frontend_zero_shot(
            "", prompt_text, prompt_wav, self.sample_rate, ""
        )
        del model_input["text"]
        del model_input["text_len"]
        self.frontend.spk2info[zero_shot_spk_id] = model_input
        return True

    def inference_zero_shot(
        self,
        tts_text,
        prompt_text,
        prompt_wav,
        zero_shot_spk_id="",
        stream=False,
        speed=1.0,
        text_frontend=True,
    ):
        self._record(
            "inference_zero_shot",
            tts_text=tts_text,
            prompt_text=prompt_text,
            prompt_wav=prompt_wav,
            zero_shot_spk_id=zero_shot_spk_id,
            stream=stream,
            speed=speed,
        )
        prompt_text = self.frontend.text_normalize(
            prompt_text, split=False, text_frontend=text_frontend
        )
        for piece in self.frontend.text_normalize(
            tts_text, split=True, text_frontend=text_frontend
        ):
            model_input = self.frontend.frontend_zero_shot(
                piece, prompt_text, prompt_wav, self.sample_rate, zero_shot_spk_id
            )
            yield from self.model.tts(**model_input, stream=stream, speed=speed)

    def inference_cross_lingual(
        self, tts_text, prompt_wav, zero_shot_spk_id="", stream=False, speed=1.0, text_frontend=True
    ):
        self._record(
            "inference_cross_lingual",
            tts_text=tts_text,
            prompt_wav=prompt_wav,
            zero_shot_spk_id=zero_shot_spk_id,
            stream=stream,
            speed=speed,
        )
        for piece in self.frontend.text_normalize(
            tts_text, split=True, text_frontend=text_frontend
        ):
            model_input = self.frontend.frontend_cross_lingual(
                piece, prompt_wav, self.sample_rate, zero_shot_spk_id
            )
            yield from self.model.tts(**model_input, stream=stream, speed=speed)

    def inference_instruct2(
        self,
        tts_text,
        instruct_text,
        prompt_wav,
        zero_shot_spk_id="",
        stream=False,
        speed=1.0,
        text_frontend=True,
    ):
        self._record(
            "inference_instruct2",
            tts_text=tts_text,
            instruct_text=instruct_text,
            prompt_wav=prompt_wav,
            zero_shot_spk_id=zero_shot_spk_id,
            stream=stream,
            speed=speed,
        )
        for piece in self.frontend.text_normalize(
            tts_text, split=True, text_frontend=text_frontend
        ):
            model_input = self.frontend.frontend_instruct2(
                piece, instruct_text, prompt_wav, self.sample_rate, zero_shot_spk_id
            )
            yield from self.model.tts(**model_input, stream=stream, speed=speed)

    def _record(self, method: str, **arguments: Any) -> None:
        self.calls.append({"method": method, **arguments})


class CosyVoice3(CosyVoice2):
    yaml_name = "cosyvoice3.yaml"

    def __init__(self, model_dir, load_trt=False, load_vllm=False, fp16=False, trt_concurrent=1):
        self._setup(
            model_dir,
            {
                "load_trt": load_trt,
                "load_vllm": load_vllm,
                "fp16": fp16,
                "trt_concurrent": trt_concurrent,
            },
        )


def AutoModel(**kwargs) -> CosyVoice2:
    model_dir = kwargs["model_dir"]
    if not os.path.exists(model_dir):
        raise RuntimeError(
            f"{model_dir} does not exist: upstream would download it from ModelScope here"
        )
    if os.path.exists(os.path.join(model_dir, "cosyvoice3.yaml")):
        return CosyVoice3(**kwargs)
    if os.path.exists(os.path.join(model_dir, "cosyvoice2.yaml")):
        return CosyVoice2(**kwargs)
    raise TypeError("No valid model type found!")
