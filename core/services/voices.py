"""The voice library: create, read, update and delete voices, all or nothing.

A voice is its record in the repository plus its sample in the blob store. The rules
that keep the two consistent while requests race:

- Every sample write gets a key of its own (`core.domain.sample_key`: content hash and
  write id), written before the record points to it. A key is never written twice, so
  no request can overwrite or delete the sample another request's record points to.
- A blob is deleted only once the record no longer references it: the rollback of a
  failed write and the cleanup of a replaced sample both re-read the record first. When
  the record cannot be read, the blob is kept: an orphan costs disk, a missing sample
  breaks the voice.
- Writes to one voice are serialised in this process (create, update and delete of an
  id take turns; decoding, the slow part, happens before), so racing requests neither
  leave orphans nor answer anything but 201/409, 200 or 404.
- Delete removes the record first, so a half-deleted voice is never visible, then the
  sample and the voice's cached features.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ..audio.decode import STORED_FORMAT, DecodedUpload, decode_upload, off_loop
from ..audio.encode import CONTENT_TYPES
from ..domain import (
    AudioFormat,
    Voice,
    VoiceStats,
    VoiceType,
    features_prefix,
    sample_key,
    utcnow,
)
from ..errors import CosyVoiceError, InvalidInput, VoiceAlreadyExists, VoiceNotFound
from ..ports import BlobStore, MetadataStore

log = logging.getLogger(__name__)

FeatureForgetter = Callable[[str], None]


@dataclass(frozen=True)
class NewVoice:
    voice_id: str
    name: str
    voice_type: VoiceType
    description: str | None = None
    language: str | None = None
    prompt_text: str | None = None


class VoiceService:
    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        *,
        max_audio_duration: float,
        forget_features: FeatureForgetter | None = None,
    ):
        self._store = store
        self._blobs = blobs
        self._max_audio_duration = max_audio_duration
        # Drops the in-memory features of a sample hash in this process's engines.
        self._forget_features = forget_features
        self._locks = _VoiceLocks()

    def decode(self, data: bytes) -> DecodedUpload:
        """Decode and normalise a clip in the calling thread (bounded in time and memory)."""
        return decode_upload(data, max_duration=self._max_audio_duration)

    async def read_upload(self, data: bytes) -> DecodedUpload:
        """`decode`, off the event loop."""
        return await off_loop(self.decode, data)

    async def create(self, spec: NewVoice, audio: bytes) -> Voice:
        if spec.voice_type is VoiceType.zero_shot and not spec.prompt_text:
            raise InvalidInput("zero_shot voices need prompt_text (the transcript of the sample)")
        upload = await self.read_upload(audio)
        now = utcnow()
        voice = Voice(
            voice_id=spec.voice_id,
            name=spec.name,
            description=spec.description,
            voice_type=spec.voice_type,
            language=spec.language,
            prompt_text=spec.prompt_text,
            created_at=now,
            updated_at=now,
            **_sample_fields(spec.voice_id, upload),
        )
        async with self._locks.hold(spec.voice_id):
            # Refuse a duplicate before touching the blob store.
            await self._raise_if_exists(spec.voice_id)
            await self._put_sample(voice.sample_key, upload)
            try:
                await self._store.create_voice(voice)
            except BaseException:
                await self._discard_unless_referenced(voice.voice_id, voice.sample_key)
                raise
        return voice

    async def get(self, voice_id: str) -> Voice:
        return await self._store.get_voice(voice_id)

    async def list(
        self, *, voice_type: str | None, language: str | None, page: int, page_size: int
    ) -> tuple[list[Voice], int]:
        return await self._store.list_voices(
            voice_type=voice_type,
            language=language,
            offset=(page - 1) * page_size,
            limit=page_size,
        )

    async def update(
        self, voice_id: str, changes: dict[str, Any], audio: bytes | None = None
    ) -> Voice:
        # A missing voice or an impossible change is refused before the clip is decoded.
        _check_prompt(await self._store.get_voice(voice_id), changes)
        upload = None if audio is None else await self.read_upload(audio)
        async with self._locks.hold(voice_id):
            current = await self._store.get_voice(voice_id)
            _check_prompt(current, changes)
            changes = dict(changes, updated_at=utcnow())
            if upload is None:
                return await self._store.update_voice(voice_id, changes)
            fields = _sample_fields(voice_id, upload)
            await self._put_sample(fields["sample_key"], upload)
            try:
                updated = await self._store.update_voice(voice_id, changes | fields)
            except BaseException:
                await self._discard_unless_referenced(voice_id, fields["sample_key"])
                raise
            await self._retire_sample(current)
        return updated

    async def delete(self, voice_id: str) -> None:
        async with self._locks.hold(voice_id):
            voice = await self._store.get_voice(voice_id)
            await self._store.delete_voice(voice_id)
            await self._retire_sample(voice)

    async def stats(self) -> VoiceStats:
        return await self._store.voice_stats()

    async def _raise_if_exists(self, voice_id: str) -> None:
        try:
            await self._store.get_voice(voice_id)
        except VoiceNotFound:
            return
        raise VoiceAlreadyExists(voice_id)

    async def _put_sample(self, key: str, upload: DecodedUpload) -> None:
        await self._blobs.put(key, upload.sample, CONTENT_TYPES[STORED_FORMAT.value])

    async def _retire_sample(self, old: Voice) -> None:
        """The sample `old` pointed to and its cached features, once nothing uses them."""
        await self._discard_unless_referenced(old.voice_id, old.sample_key)
        # Features are a cache keyed by the sample hash: dropping the voice's stored ones
        # costs at most one extraction, and keeps a deleted voice from leaving them behind.
        await self._discard(features_prefix(old.voice_id))
        if self._forget_features is not None:
            self._forget_features(old.sample_sha256)

    async def _discard_unless_referenced(self, voice_id: str, key: str) -> None:
        try:
            current: Voice | None = await self._store.get_voice(voice_id)
        except VoiceNotFound:
            current = None
        except CosyVoiceError as exc:
            log.warning("kept blob %s: could not check whether it is used: %s", key, exc.detail)
            return
        if current is None or current.sample_key != key:
            await self._discard(key)

    async def _discard(self, key: str) -> None:
        try:
            await self._blobs.delete(key)
        except CosyVoiceError as exc:  # best effort: the record is what clients see
            log.warning("could not remove blob %s: %s", key, exc.detail)


def _sample_fields(voice_id: str, upload: DecodedUpload) -> dict[str, Any]:
    """The record's sample fields for a freshly decoded upload.

    API.md: "`file_size`, `duration`, `sample_rate` are measured from the decoded
    upload", and `audio_format` is the container detected in it. So the record reports
    the clip the user sent, while the blob holds its normalised copy (mono, at most
    24 kHz, 16-bit FLAC) that syntheses decode: `sample_key` and `sample_sha256` (which
    keys cached features) are the stored copy's.
    """
    return {
        "audio_format": upload.container,
        "file_size": upload.file_size,
        "duration": round(upload.duration, 3),
        "sample_rate": upload.sample_rate,
        "sample_key": sample_key(
            voice_id, STORED_FORMAT, upload.sample_sha256, secrets.token_hex(4)
        ),
        "sample_sha256": upload.sample_sha256,
    }


def _check_prompt(current: Voice, changes: dict[str, Any]) -> None:
    new_type = changes.get("voice_type", current.voice_type)
    new_prompt = changes.get("prompt_text", current.prompt_text)
    if new_type is VoiceType.zero_shot and not new_prompt:
        raise InvalidInput("zero_shot voices need prompt_text (the transcript of the sample)")


class _VoiceLocks:
    """One asyncio lock per voice id, held only while some request uses it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, voice_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(voice_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[voice_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[voice_id]
            if users <= 1:
                del self._locks[voice_id]
            else:
                self._locks[voice_id] = (lock, users - 1)


def parse_audio_format(value: str | None) -> AudioFormat | None:
    """The declared `audio_format` is advisory: uploads are decoded by content."""
    if value is None or value == "":
        return None
    try:
        return AudioFormat(value.lower())
    except ValueError:
        raise InvalidInput("audio_format must be one of wav, mp3, flac") from None
