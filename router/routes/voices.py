"""The voice library: /voices (API.md, "Voices").

Built per version by `build_router(version)`: the closure keeps the version (whose
pretrained voices are listed) beside the handlers, with no per-request dependency.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from core.domain import VOICE_ID_PATTERN, ApiVersion, VoiceType
from core.errors import InvalidInput
from core.schemas.voices import (
    LANGUAGE_PATTERN,
    PretrainedVoices,
    VoiceDeleted,
    VoiceFields,
    VoiceList,
    VoicePublic,
    VoiceStatsPublic,
    VoiceUpdate,
    checked_voice_fields,
)
from core.services.voices import NewVoice, parse_audio_format

from ..deps import RuntimeDep
from ..errors import error_responses

VOICE_ID_RE = re.compile(VOICE_ID_PATTERN)


def build_router(version: ApiVersion) -> APIRouter:
    router = APIRouter(prefix="/voices", tags=[f"{version.value} voices"])

    @router.post(
        "/",
        status_code=201,
        response_model=VoicePublic,
        summary="Create a voice from a reference clip",
        responses=error_responses(400, 409, 413, 422, 503),
    )
    @router.post("", status_code=201, response_model=VoicePublic, include_in_schema=False)
    async def create_voice(
        runtime: RuntimeDep,
        voice_id: Annotated[
            str, Form(pattern=VOICE_ID_PATTERN, description="1–64 of [A-Za-z0-9_-]")
        ],
        name: Annotated[str, Form(min_length=1, max_length=200)],
        voice_type: Annotated[VoiceType, Form()],
        audio_file: Annotated[UploadFile, File(description="wav, mp3 or flac; decoded by content")],
        description: Annotated[str | None, Form(max_length=2000)] = None,
        language: Annotated[str | None, Form(pattern=LANGUAGE_PATTERN)] = None,
        prompt_text: Annotated[str | None, Form(max_length=2000)] = None,
        audio_format: Annotated[
            str | None, Form(description="Advisory: the container is detected from the bytes")
        ] = None,
    ) -> VoicePublic:
        parse_audio_format(audio_format)
        # The form declares the fields for /docs; the rules are VoiceFields', the same
        # ones an update is checked by.
        fields = checked_voice_fields(
            VoiceFields,
            {
                "voice_id": voice_id,
                "name": name,
                "voice_type": voice_type,
                "description": description,
                "language": language,
                "prompt_text": prompt_text,
            },
        )
        voice = await runtime.voices.create(
            NewVoice(**fields.model_dump()), await audio_file.read()
        )
        return VoicePublic.of(voice)

    @router.get(
        "/",
        response_model=VoiceList,
        summary="List voices (filters and pagination)",
        responses=error_responses(400, 503),
    )
    @router.get("", response_model=VoiceList, include_in_schema=False)
    async def list_voices(
        runtime: RuntimeDep,
        voice_type: VoiceType | None = None,
        language: Annotated[str | None, Query(pattern=LANGUAGE_PATTERN)] = None,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=100)] = 50,
    ) -> VoiceList:
        voices, total = await runtime.voices.list(
            voice_type=voice_type.value if voice_type else None,
            language=language.lower() if language else None,
            page=page,
            page_size=page_size,
        )
        return VoiceList(
            voices=[VoicePublic.of(v) for v in voices], total=total, page=page, page_size=page_size
        )

    @router.get(
        "/stats/summary",
        response_model=VoiceStatsPublic,
        summary="Totals over the voice library",
        responses=error_responses(503),
    )
    async def voice_stats(runtime: RuntimeDep) -> VoiceStatsPublic:
        return VoiceStatsPublic.model_validate((await runtime.voices.stats()).model_dump())

    @router.get(
        "/pretrained/list",
        response_model=PretrainedVoices,
        summary="The engine's built-in speakers (none for CosyVoice3)",
    )
    async def pretrained_voices(runtime: RuntimeDep) -> PretrainedVoices:
        names = list(runtime.synthesis.client(version).info.pretrained_voices)
        return PretrainedVoices(pretrained_voices=names, total=len(names), version=version.value)

    @router.get(
        "/{voice_id}",
        response_model=VoicePublic,
        summary="Get one voice",
        responses=error_responses(404, 503),
    )
    @router.get("/{voice_id}/", response_model=VoicePublic, include_in_schema=False)
    async def get_voice(runtime: RuntimeDep, voice_id: str) -> VoicePublic:
        return VoicePublic.of(await runtime.voices.get(_checked_id(voice_id)))

    @router.put(
        "/{voice_id}",
        response_model=VoicePublic,
        summary="Update a voice (JSON), or replace its sample (multipart with audio_file)",
        responses=error_responses(400, 404, 413, 422, 503),
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/VoiceUpdate"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                **{
                                    k: {"type": "string"}
                                    for k in (
                                        "name",
                                        "description",
                                        "language",
                                        "prompt_text",
                                        "voice_type",
                                        "is_active",
                                    )
                                },
                                "audio_file": {"type": "string", "format": "binary"},
                            },
                        }
                    },
                }
            }
        },
    )
    @router.put("/{voice_id}/", response_model=VoicePublic, include_in_schema=False)
    async def update_voice(runtime: RuntimeDep, voice_id: str, request: Request) -> VoicePublic:
        voice_id = _checked_id(voice_id)
        changes, audio = await _read_update(request)
        return VoicePublic.of(await runtime.voices.update(voice_id, changes, audio))

    @router.delete(
        "/{voice_id}",
        response_model=VoiceDeleted,
        summary="Delete a voice and its stored sample",
        responses=error_responses(404, 503),
    )
    @router.delete("/{voice_id}/", response_model=VoiceDeleted, include_in_schema=False)
    async def delete_voice(runtime: RuntimeDep, voice_id: str) -> VoiceDeleted:
        voice_id = _checked_id(voice_id)
        await runtime.voices.delete(voice_id)
        return VoiceDeleted(
            message=f"Voice '{voice_id}' deleted successfully", data={"voice_id": voice_id}
        )

    return router


def _checked_id(voice_id: str) -> str:
    if not VOICE_ID_RE.fullmatch(voice_id):
        raise InvalidInput("voice_id must be 1–64 letters, digits, '_' or '-'")
    return voice_id


async def _read_update(request: Request) -> tuple[dict[str, Any], bytes | None]:
    """PUT accepts JSON fields, or a multipart form that may carry a new sample."""
    content_type = request.headers.get("content-type", "")
    audio: bytes | None = None
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        raw: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key == "audio_file":
                if isinstance(value, str):
                    raise InvalidInput("audio_file must be a file")
                audio = await value.read()
            elif key in ("audio_format",):
                parse_audio_format(str(value))
            else:
                raw[key] = value
    else:
        body = await request.body()
        if not body.strip():
            raise InvalidInput("request body is empty: send JSON fields to change")
        try:
            raw = json.loads(body)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"malformed JSON: {exc.msg}") from None
        except UnicodeDecodeError:
            # json.loads decodes bytes itself: a body that is not UTF-8 text fails there.
            raise InvalidInput("malformed JSON: the body is not UTF-8 text") from None
        if not isinstance(raw, dict):
            raise InvalidInput("request body must be a JSON object")
    changes = checked_voice_fields(VoiceUpdate, raw).model_dump(exclude_unset=True)
    if not changes and audio is None:
        raise InvalidInput("nothing to update")
    return changes, audio
