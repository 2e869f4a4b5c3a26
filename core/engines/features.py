"""Voice features, extracted once per voice and model and then reused.

Extracting features from a reference clip (speech tokens, speaker embedding, prompt
mel) costs a noticeable part of a CosyVoice call, so a voice's features are looked up in
three places, cheapest first: an in-memory LRU, the blob store (where a predictor that
scaled from zero finds what an earlier replica extracted), and only then the engine.

A stored features object is bound to the prompt text it was extracted with: the blob
key (`core.domain.features_key`) names the voice, model and clip hash, and a small
header inside the object names the transcript, so editing a voice's transcript never
serves features of the old one.

The clip hash in a `VoicePrompt` must be computed by this platform from the bytes it
decodes (the voice record's hash of its stored sample, or the predictor's hash of the
bytes it read), never taken from a caller: the cache trusts it to name the clip.
Deleting or replacing a voice drops its features here (`forget`) and in the blob store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..domain import features_key
from ..errors import CosyVoiceError, NotFound, SynthesisFailed
from ..ports import Clip, VoicePrompt

logger = logging.getLogger(__name__)

ClipLoader = Callable[[], Awaitable[Clip]]
_CacheKey = tuple[str, str, str]

_MAGIC = b"CVFEAT1\n"
_HEADER_LENGTH = struct.Struct(">I")
_CONTENT_TYPE = "application/octet-stream"


class FeatureExtractor(Protocol):
    """The part of an `Engine` the cache calls: extraction and the features' bytes."""

    def extract_features(self, clip: Clip, prompt_text: str | None) -> Any: ...

    def serialize_features(self, features: Any) -> bytes: ...

    def deserialize_features(self, data: bytes) -> Any: ...


class FeatureBlobs(Protocol):
    """The part of a `BlobStore` the cache uses to share features between replicas."""

    async def get(self, key: str) -> bytes: ...

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...


class FeatureCache:
    """Clip and engine features per (model, clip hash, prompt text), shared by all calls.

    Concurrent requests for a voice that is not cached yet share one load: the first
    starts it, the others wait for its result, so a burst of requests extracts once.
    """

    def __init__(
        self,
        engine: FeatureExtractor,
        model_name: str,
        blobs: FeatureBlobs | None,
        capacity: int,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._engine = engine
        self._model_name = model_name
        # Model names are labels ("espeak-ng (development engine)"); keys stay plain.
        self._key_name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-") or "model"
        self._blobs = blobs
        self._capacity = capacity
        self._entries: OrderedDict[_CacheKey, tuple[Clip, Any]] = OrderedDict()
        self._loading: dict[_CacheKey, asyncio.Task[tuple[Clip, Any]]] = {}
        self.hits = 0
        self.blob_hits = 0
        self.extractions = 0

    @property
    def model_name(self) -> str:
        return self._model_name

    def __len__(self) -> int:
        return len(self._entries)

    def forget(self, sha256: str) -> None:
        """Drop every in-memory entry of a clip (its voice was replaced or deleted)."""
        for key in [k for k in self._entries if k[1] == sha256]:
            del self._entries[key]

    async def get(self, prompt: VoicePrompt, clip_loader: ClipLoader) -> tuple[Clip, Any]:
        key = (self._model_name, prompt.sha256, prompt.prompt_text or "")
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return cached
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key, prompt, clip_loader))
            task.add_done_callback(_retrieve_exception)
            self._loading[key] = task
        else:
            self.hits += 1
        # Shielded: a caller that gives up (client gone, deadline) does not waste the
        # extraction the other callers and the next request are waiting for.
        return await asyncio.shield(task)

    async def _load(
        self, key: _CacheKey, prompt: VoicePrompt, clip_loader: ClipLoader
    ) -> tuple[Clip, Any]:
        try:
            clip = prompt.clip if prompt.clip is not None else await clip_loader()
            blob_key = self._blob_key(prompt)
            features = await self._read_blob(blob_key, prompt.prompt_text)
            if features is None:
                features = await self._extract(clip, prompt.prompt_text)
                await self._write_blob(blob_key, prompt.prompt_text, features)
            entry = (clip, features)
            self._entries[key] = entry
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
            return entry
        finally:
            self._loading.pop(key, None)

    def _blob_key(self, prompt: VoicePrompt) -> str | None:
        if self._blobs is None or not prompt.voice_id:
            return None  # an uploaded clip has no voice to file its features under
        return features_key(prompt.voice_id, self._key_name, prompt.sha256)

    async def _extract(self, clip: Clip, prompt_text: str | None) -> Any:
        try:
            features = await asyncio.to_thread(self._engine.extract_features, clip, prompt_text)
        except CosyVoiceError:
            raise
        except Exception as exc:
            raise SynthesisFailed(f"could not extract the voice's features: {exc}") from exc
        self.extractions += 1
        return features

    async def _read_blob(self, blob_key: str | None, prompt_text: str | None) -> Any | None:
        if blob_key is None or self._blobs is None:
            return None
        try:
            data = await self._blobs.get(blob_key)
        except NotFound:
            return None
        except CosyVoiceError as exc:
            logger.warning("voice features unreadable at %s (%s): extracting", blob_key, exc)
            return None
        payload = _unwrap(data, prompt_text)
        if payload is None:
            return None
        try:
            features = await asyncio.to_thread(self._engine.deserialize_features, payload)
        except Exception as exc:
            logger.warning(
                "stored voice features at %s are unusable (%s): extracting", blob_key, exc
            )
            return None
        self.blob_hits += 1
        return features

    async def _write_blob(
        self, blob_key: str | None, prompt_text: str | None, features: Any
    ) -> None:
        if blob_key is None or self._blobs is None:
            return
        try:
            payload = await asyncio.to_thread(self._engine.serialize_features, features)
            await self._blobs.put(blob_key, _wrap(payload, prompt_text), _CONTENT_TYPE)
        except Exception as exc:
            # The features are in memory and the synthesis can go on; the next replica
            # will extract them again, which costs time but nothing else.
            logger.warning("could not store voice features at %s: %s", blob_key, exc)


def _wrap(payload: bytes, prompt_text: str | None) -> bytes:
    header = json.dumps({"prompt_text": prompt_text or ""}, ensure_ascii=False).encode()
    return _MAGIC + _HEADER_LENGTH.pack(len(header)) + header + payload


def _unwrap(data: bytes, prompt_text: str | None) -> bytes | None:
    """The engine's payload, or None when the object is foreign or for another transcript."""
    if not data.startswith(_MAGIC):
        return None
    start = len(_MAGIC) + _HEADER_LENGTH.size
    if len(data) < start:
        return None
    (length,) = _HEADER_LENGTH.unpack_from(data, len(_MAGIC))
    try:
        header = json.loads(data[start : start + length])
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("prompt_text") != (prompt_text or ""):
        return None
    return data[start + length :]


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # Every waiter may have gone away; reading the exception keeps asyncio from
    # reporting it as never retrieved. The waiters that remain still receive it.
    if not task.cancelled():
        task.exception()
