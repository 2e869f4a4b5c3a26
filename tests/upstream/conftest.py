"""The CosyVoice engine over the real upstream code and a tiny random-weight model.

`make test-upstream` builds the model (../shared/tools/cv3tiny, `model_long`: the LLM
always runs to its maximum, 20 speech tokens per text token, so lengths are exact) and
sets CV3TINY_MODEL; COSYVOICE_HOME names the upstream checkout. Without either, every
test here skips with the reason (marked `upstream`, so CI skips them too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.audio.decode import decode_clip
from core.engines.cosyvoice import CosyVoiceEngine, cosyvoice_available
from core.ports import Clip
from tests.conftest import skip_missing_data


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.upstream)
            item.add_marker(pytest.mark.slow)
            # Upstream's own deprecation warnings are not this project's to fix: shown only.
            item.add_marker(pytest.mark.filterwarnings("default"))


def _paths() -> tuple[Path, Path]:
    home = os.environ.get("COSYVOICE_HOME")
    if not home:
        skip_missing_data("COSYVOICE_HOME is not set (a checkout of FunAudioLLM/CosyVoice)")
    model = os.environ.get("CV3TINY_MODEL")
    if not model:
        skip_missing_data("CV3TINY_MODEL is not set: run `make test-upstream`")
    reason = cosyvoice_available(Path(model), Path(home), family="cosyvoice3")
    if reason:
        skip_missing_data(f"the upstream CosyVoice code cannot run here: {reason}")
    return Path(model), Path(home)


@pytest.fixture(scope="session")
def upstream_engine() -> Iterator[CosyVoiceEngine]:
    os.environ.pop("onnx_path", None)  # upstream would build a CUDA ONNX session at import
    model_dir, home = _paths()
    engine = CosyVoiceEngine(model_dir, cosyvoice_home=home, family="cosyvoice3")
    engine.load()
    yield engine


@pytest.fixture(scope="session")
def upstream_model(upstream_engine: CosyVoiceEngine) -> Any:
    return upstream_engine._loaded()


@pytest.fixture(scope="session")
def prompt_clip(mandarin_clip: bytes) -> Clip:
    clip = decode_clip(mandarin_clip)
    # 3 s of prompt: 75 speech tokens, a whole number of hops (no first-hop padding).
    return Clip(
        samples=np.asarray(clip.samples[: 3 * clip.sample_rate]), sample_rate=clip.sample_rate
    )
