"""The voice library: create, read, update and delete voices, all or nothing.

A voice is its record in the repository plus its sample in the blob store. Create
writes the sample first and the record second, and removes the sample again if the
record cannot be written; delete removes the record first, so a half-deleted voice is
never visible through the API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..audio.decode import DecodedUpload, decode_upload, sha256_hex
from ..audio.encode import CONTENT_TYPES
from ..domain import AudioFormat, Voice, VoiceStats, VoiceType, sample_key, utcnow
from ..errors import CosyVoiceError, InvalidInput, VoiceAlreadyExists, VoiceNotFound
from ..ports import BlobStore, MetadataStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewVoice:
    voice_id: str
    name: str
    voice_type: VoiceType
    description: str | None = None
    language: str | None = None
    prompt_text: str | None = None


class VoiceService:
    def __init__(self, store: MetadataStore, blobs: BlobStore, *, max_audio_duration: float):
        self._store = store
        self._blobs = blobs
        self._max_audio_duration = max_audio_duration

    def decode(self, data: bytes) -> DecodedUpload:
        return decode_upload(data, max_duration=self._max_audio_duration)

    async def create(self, spec: NewVoice, audio: bytes) -> Voice:
        if spec.voice_type is VoiceType.zero_shot and not spec.prompt_text:
            raise InvalidInput("zero_shot voices need prompt_text (the transcript of the sample)")
        upload = self.decode(audio)
        now = utcnow()
        voice = Voice(
            voice_id=spec.voice_id,
            name=spec.name,
            description=spec.description,
            voice_type=spec.voice_type,
            language=spec.language,
            prompt_text=spec.prompt_text,
            audio_format=upload.container,
            file_size=len(audio),
            duration=round(upload.duration, 3),
            sample_rate=upload.sample_rate,
            created_at=now,
            updated_at=now,
            sample_key=sample_key(spec.voice_id, upload.container),
            sample_sha256=sha256_hex(audio),
        )
        # Refuse a duplicate before touching the blob store, so the existing voice's
        # sample is never overwritten by a request that will fail.
        await self._raise_if_exists(spec.voice_id)
        await self._blobs.put(voice.sample_key, audio, CONTENT_TYPES[upload.container.value])
        try:
            await self._store.create_voice(voice)
        except BaseException:
            await self._discard(voice.sample_key)
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
        current = await self._store.get_voice(voice_id)
        new_type = changes.get("voice_type", current.voice_type)
        new_prompt = changes.get("prompt_text", current.prompt_text)
        if new_type is VoiceType.zero_shot and not new_prompt:
            raise InvalidInput("zero_shot voices need prompt_text (the transcript of the sample)")
        changes = dict(changes, updated_at=utcnow())
        old_key: str | None = None
        if audio is not None:
            upload = self.decode(audio)
            key = sample_key(voice_id, upload.container)
            changes |= {
                "audio_format": upload.container,
                "file_size": len(audio),
                "duration": round(upload.duration, 3),
                "sample_rate": upload.sample_rate,
                "sample_key": key,
                "sample_sha256": sha256_hex(audio),
            }
            await self._blobs.put(key, audio, CONTENT_TYPES[upload.container.value])
            if key != current.sample_key:
                old_key = current.sample_key
        updated = await self._store.update_voice(voice_id, changes)
        if old_key:
            await self._discard(old_key)
        return updated

    async def delete(self, voice_id: str) -> None:
        await self._store.delete_voice(voice_id)
        await self._discard(f"voices/{voice_id}/")

    async def stats(self) -> VoiceStats:
        return await self._store.voice_stats()

    async def _raise_if_exists(self, voice_id: str) -> None:
        try:
            await self._store.get_voice(voice_id)
        except VoiceNotFound:
            return
        raise VoiceAlreadyExists(voice_id)

    async def _discard(self, key: str) -> None:
        try:
            await self._blobs.delete(key)
        except CosyVoiceError as exc:  # best effort: the record is what clients see
            log.warning("could not remove blob %s: %s", key, exc.detail)


def parse_audio_format(value: str | None) -> AudioFormat | None:
    """The declared `audio_format` is advisory: uploads are decoded by content."""
    if value is None or value == "":
        return None
    try:
        return AudioFormat(value.lower())
    except ValueError:
        raise InvalidInput("audio_format must be one of wav, mp3, flac") from None
