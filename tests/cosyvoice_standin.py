"""The CosyVoice stand-in checkout (tests/standins/cosyvoice) and model folders for it.

The `cosyvoice_standin` fixture (tests/conftest.py) makes it importable as the upstream
code; `fill_model_dir` lays out the files a model folder must hold, which the stand-in
reads none of.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

STANDIN = Path(__file__).resolve().parent / "standins" / "cosyvoice"
TOKENIZERS = {
    "cosyvoice3": "speech_tokenizer_v3.onnx",
    "cosyvoice2": "speech_tokenizer_v2.onnx",
}


def fill_model_dir(folder: Path, family: str) -> Path:
    """A model folder of `family` (cosyvoice3, cosyvoice2) with empty files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{family}.yaml").write_text("sample_rate: 24000\n")
    for name in ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx", TOKENIZERS[family]):
        (folder / name).write_bytes(b"")
    (folder / "CosyVoice-BlankEN").mkdir(exist_ok=True)
    return folder


def check_as_pinned(inner: Any) -> None:
    """The engine's upstream version check, with the stand-in's code as the pinned one
    (the stand-in mirrors upstream's behaviour, not its source text)."""
    from core.engines import cosyvoice_loop

    model_class = type(inner)
    assert Path(inspect.getsourcefile(model_class) or "").is_relative_to(STANDIN)
    pins = {model_class.__name__: cosyvoice_loop.upstream_fingerprint(model_class)}
    cosyvoice_loop.check_pinned_upstream(inner, pins)
