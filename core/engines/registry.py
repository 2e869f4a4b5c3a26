"""Which engine serves a slot: `ENGINE=auto|cosyvoice|espeak`.

`auto` serves the real model when its code and weights are present and otherwise the
espeak development engine, with a warning that /health repeats, so nobody mistakes one
for the other. `cosyvoice` refuses to fall back: a missing piece is an error with the
reason, naming the model (the wiring serves the other slot and answers 503 for this one;
see `core.wiring.build_synthesis_clients`). Nothing heavy is imported here; torch and the
upstream package load with the engine.
"""

from __future__ import annotations

import importlib.util
import logging

from ..domain import EngineSlot
from ..errors import EngineNotReady
from ..settings import EngineChoice, Settings
from .base import Engine
from .cosyvoice import CosyVoiceEngine, Family, checkout_problem, model_name, weights_problem
from .engine_process import EngineProcess
from .espeak import EspeakEngine

logger = logging.getLogger(__name__)

_FAMILY_OF_SLOT: dict[EngineSlot, Family] = {
    EngineSlot.v3: "cosyvoice3",
    EngineSlot.v2: "cosyvoice2",
}


def slot_model_name(slot: EngineSlot) -> str:
    """The CosyVoice model that serves `slot`, e.g. "CosyVoice2-0.5B" for v1/v2."""
    return model_name(_FAMILY_OF_SLOT[slot])


def build_engine(settings: Settings, slot: EngineSlot) -> tuple[Engine, str | None]:
    """The engine for `slot` and a warning to show (None when there is nothing to say)."""
    if settings.engine is EngineChoice.espeak:
        return EngineProcess(EspeakEngine), None

    family = _FAMILY_OF_SLOT[slot]
    model_dir = settings.model_dir_v3 if slot is EngineSlot.v3 else settings.model_dir
    reason = checkout_problem(settings.cosyvoice_home)
    download = False
    if reason is None:
        missing = weights_problem(model_dir, family)
        if missing and settings.auto_download_models and _huggingface_hub_installed():
            # The download runs when the engine loads (in the background of start-up),
            # so the API answers meanwhile and /health says why the slot is not ready.
            download = True
            logger.info("%s: %s; it will be downloaded at start-up", slot.value, missing)
        elif missing:
            reason = missing
            if settings.auto_download_models:
                reason += " (huggingface_hub is not installed to download it)"

    if reason is None:
        engine = CosyVoiceEngine(
            model_dir,
            cosyvoice_home=settings.cosyvoice_home,
            family=family,
            fp16=settings.cosyvoice_fp16,
            trt=settings.cosyvoice_trt,
            vllm=settings.cosyvoice_vllm,
            download=download,
        )
        return engine, None
    if settings.engine is EngineChoice.cosyvoice:
        raise EngineNotReady(
            f"CosyVoice engine for {slot.value} unavailable: {reason} (model {model_name(family)})"
        )
    warning = f"CosyVoice unavailable ({reason}): serving the espeak development engine"
    logger.warning("%s: %s", slot.value, warning)
    return EngineProcess(EspeakEngine), warning


def _huggingface_hub_installed() -> bool:
    return importlib.util.find_spec("huggingface_hub") is not None
