"""Engine selection: ENGINE=auto|cosyvoice|espeak and the automatic model download."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from core.domain import EngineSlot
from core.engines.cosyvoice import CosyVoiceEngine
from core.engines.engine_process import EngineProcess
from core.engines.registry import build_engine
from core.errors import EngineNotReady
from core.settings import Settings
from tests.cosyvoice_standin import STANDIN, fill_model_dir


def settings(tmp_path: Path, **values: Any) -> Settings:
    defaults: dict[str, Any] = {
        "engine": "auto",
        "cosyvoice_home": None,
        "model_dir": tmp_path / "CosyVoice2-0.5B",
        "model_dir_v3": tmp_path / "Fun-CosyVoice3-0.5B",
        "auto_download_models": False,
    }
    defaults.update(values)
    return Settings(**defaults)


def test_espeak_is_served_when_asked_for(tmp_path: Path) -> None:
    engine, warning = build_engine(settings(tmp_path, engine="espeak"), EngineSlot.v3)
    assert isinstance(engine, EngineProcess) and engine.info.engine == "espeak"
    assert warning is None


def test_auto_without_cosyvoice_serves_espeak_and_says_why(tmp_path: Path) -> None:
    engine, warning = build_engine(settings(tmp_path), EngineSlot.v3)
    assert isinstance(engine, EngineProcess) and engine.info.engine == "espeak"
    assert warning is not None
    assert warning.startswith("CosyVoice unavailable (")
    assert "COSYVOICE_HOME" in warning
    assert warning.endswith("serving the espeak development engine")


def test_forcing_cosyvoice_without_its_code_is_an_error_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(EngineNotReady, match="no CosyVoice checkout"):
        build_engine(settings(tmp_path, engine="cosyvoice", cosyvoice_home=tmp_path), EngineSlot.v3)


def test_forcing_cosyvoice_without_weights_is_an_error(
    tmp_path: Path, cosyvoice_standin: None
) -> None:
    with pytest.raises(EngineNotReady, match="no model directory"):
        build_engine(settings(tmp_path, engine="cosyvoice", cosyvoice_home=STANDIN), EngineSlot.v3)


def test_auto_with_code_and_weights_serves_cosyvoice(
    tmp_path: Path, cosyvoice_standin: None
) -> None:
    fill_model_dir(tmp_path / "Fun-CosyVoice3-0.5B", "cosyvoice3")
    fill_model_dir(tmp_path / "CosyVoice2-0.5B", "cosyvoice2")
    config = settings(tmp_path, cosyvoice_home=STANDIN)

    v3, warning = build_engine(config, EngineSlot.v3)
    assert isinstance(v3, CosyVoiceEngine) and warning is None
    assert v3.family == "cosyvoice3"
    v3.load()
    assert v3.info.model == "Fun-CosyVoice3-0.5B-2512"

    v2, warning = build_engine(config, EngineSlot.v2)
    assert isinstance(v2, CosyVoiceEngine) and warning is None
    assert v2.info.model == "CosyVoice2-0.5B"


def test_missing_weights_are_never_downloaded_unless_allowed(
    tmp_path: Path, cosyvoice_standin: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = fake_hub(monkeypatch)
    engine, warning = build_engine(settings(tmp_path, cosyvoice_home=STANDIN), EngineSlot.v3)
    assert isinstance(engine, EngineProcess) and engine.info.engine == "espeak"
    assert warning is not None and "no model directory" in warning
    assert hub.downloads == []


def test_missing_weights_are_downloaded_when_the_engine_loads(
    tmp_path: Path, cosyvoice_standin: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = fake_hub(monkeypatch)
    config = settings(tmp_path, cosyvoice_home=STANDIN, auto_download_models=True)
    engine, warning = build_engine(config, EngineSlot.v3)
    assert isinstance(engine, CosyVoiceEngine) and warning is None
    assert hub.downloads == []  # nothing happens while the app is being wired
    engine.load()
    assert hub.downloads == [
        ("FunAudioLLM/Fun-CosyVoice3-0.5B-2512", str(tmp_path / "Fun-CosyVoice3-0.5B"))
    ]
    assert engine.info.extra["loaded"] is True


def test_without_huggingface_hub_auto_falls_back_and_says_so(
    tmp_path: Path, cosyvoice_standin: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    config = settings(tmp_path, cosyvoice_home=STANDIN, auto_download_models=True)
    engine, warning = build_engine(config, EngineSlot.v3)
    assert isinstance(engine, EngineProcess) and engine.info.engine == "espeak"
    assert warning is not None and "huggingface_hub" in warning


class _Hub:
    def __init__(self) -> None:
        self.downloads: list[tuple[str, str]] = []

    def snapshot_download(self, *, repo_id: str, local_dir: str) -> str:
        self.downloads.append((repo_id, local_dir))
        fill_model_dir(Path(local_dir), "cosyvoice3")
        return local_dir


def fake_hub(monkeypatch: pytest.MonkeyPatch) -> _Hub:
    hub = _Hub()
    module = types.ModuleType("huggingface_hub")
    module.__spec__ = importlib.machinery.ModuleSpec("huggingface_hub", None)
    module.snapshot_download = hub.snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    return hub
