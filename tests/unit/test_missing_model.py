"""ENGINE=cosyvoice with one model missing: the other serves, the missing one says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.adapters.embedded.inprocess_synthesis import InProcessSynthesis
from core.adapters.missing_model import MissingModelSynthesis
from core.domain import EngineSlot, SynthesisMode, TaskKind
from core.errors import EngineNotReady
from core.ports import Clip, SynthesisRequest, VoicePrompt
from core.services.tasks import STATUSES_OF_KIND, counts_of_kind
from core.settings import Settings
from core.wiring import build_synthesis_clients
from tests.cosyvoice_standin import STANDIN, fill_model_dir


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(
        **{
            "engine": "cosyvoice",
            "cosyvoice_home": STANDIN,
            "model_dir": tmp_path / "CosyVoice2-0.5B",
            "model_dir_v3": tmp_path / "Fun-CosyVoice3-0.5B",
            "auto_download_models": False,
            **values,
        }
    )


def test_only_the_v3_weights_serve_v3_and_v2_is_missing(
    tmp_path: Path, cosyvoice_standin: None, caplog: pytest.LogCaptureFixture
) -> None:
    fill_model_dir(tmp_path / "Fun-CosyVoice3-0.5B", "cosyvoice3")
    clients, warnings = build_synthesis_clients(settings(tmp_path), blobs=None)  # type: ignore[arg-type]
    assert isinstance(clients[EngineSlot.v3], InProcessSynthesis)
    missing = clients[EngineSlot.v2]
    assert isinstance(missing, MissingModelSynthesis)
    assert missing.info.model == "CosyVoice2-0.5B"
    assert warnings[EngineSlot.v3] is None
    v2_warning = warnings[EngineSlot.v2]
    assert v2_warning is not None and "no model directory" in v2_warning
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "CosyVoice2-0.5B" in errors[0].getMessage()


def test_only_the_v2_weights_serve_v1_and_v2(tmp_path: Path, cosyvoice_standin: None) -> None:
    fill_model_dir(tmp_path / "CosyVoice2-0.5B", "cosyvoice2")
    clients, _ = build_synthesis_clients(settings(tmp_path), blobs=None)  # type: ignore[arg-type]
    assert isinstance(clients[EngineSlot.v2], InProcessSynthesis)
    assert isinstance(clients[EngineSlot.v3], MissingModelSynthesis)
    assert clients[EngineSlot.v3].info.model == "Fun-CosyVoice3-0.5B-2512"


def test_nothing_to_serve_is_still_a_start_up_error(
    tmp_path: Path, cosyvoice_standin: None
) -> None:
    with pytest.raises(EngineNotReady, match=r"for v3.*for v2"):
        build_synthesis_clients(settings(tmp_path), blobs=None)  # type: ignore[arg-type]


async def test_the_missing_model_refuses_with_its_reason() -> None:
    client = MissingModelSynthesis("CosyVoice2-0.5B", "no model directory at /models/x")
    await client.start()
    with pytest.raises(EngineNotReady, match="no model directory"):
        await client.ready()
    clip = Clip(samples=np.zeros(16000, np.float32), sample_rate=16000)
    request = SynthesisRequest(
        text="Hi.", voice=VoicePrompt(sha256="0" * 64, clip=clip), mode=SynthesisMode.zero_shot
    )
    with pytest.raises(EngineNotReady, match="no model directory"):
        await anext(client.synthesize(request))
    await client.close()


def test_scheduled_counts_list_a_scheduled_tasks_statuses() -> None:
    counts = counts_of_kind(TaskKind.scheduled, {"registered": 0, "pending": 2, "completed": 1})
    assert set(counts) == {s.value for s in STATUSES_OF_KIND[TaskKind.scheduled]}
    assert "registered" not in counts and sum(counts.values()) == 3
    background = counts_of_kind(TaskKind.task, {"registered": 1, "pending": 0})
    assert "pending" not in background and background["registered"] == 1
