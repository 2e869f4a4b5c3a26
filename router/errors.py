"""The one table from the platform's error tree to HTTP status codes.

Every error body is `{"detail": ...}`, except under /v1 (the OpenAI-compatible routes),
where the same errors take OpenAI's shape `{"error": {"message", "type", "param",
"code"}}` so OpenAI's SDKs report them. FastAPI's request validation errors become 400
(the contract keeps 422 for audio that cannot be used), with a detail that names each
bad field, or what is wrong with a JSON body as a whole; anything unexpected becomes a
500 with a generic detail, logged with the request id, never a stack trace.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, WebSocket, params
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from core import errors, metrics
from core.request_id import current_request_id
from core.schemas.common import describe_validation_error
from core.schemas.openai import OPENAI_PATH_PREFIX, OpenAiErrorFields, openai_error_body

from .refusals import refuse

log = logging.getLogger("router.errors")

STATUS_BY_ERROR: tuple[tuple[type[errors.CosyVoiceError], int], ...] = (
    # most specific first
    (errors.PayloadTooLarge, 413),
    (errors.InvalidInput, 400),
    (errors.AudioRejected, 422),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.Unavailable, 503),
    (errors.SynthesisFailed, 500),
)


class ErrorBody(BaseModel):
    """Every error response."""

    detail: Any


def status_for(exc: errors.CosyVoiceError) -> int:
    for error_type, status in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return status
    return 500


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries so /docs lists each route's errors."""
    meaning = {
        400: "Invalid parameters",
        404: "Not found",
        409: "Already exists or wrong state",
        413: "Upload too large",
        422: "Audio cannot be used",
        503: "Engine or backing service unavailable",
    }
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}


# FastAPI's first location part says where a value came from; it names no field.
_REQUEST_PARTS = ("body", "query", "path", "form")


# FastAPI's detail when a JSON body fails to parse other than as JSON (not UTF-8, an
# integer past Python's digit limit); the error it came from is the exception's cause.
_UNREADABLE_BODY = "There was an error parsing the body"
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _describe_validation(exc: RequestValidationError, request: Request) -> str:
    """One line naming each bad field; a body that is not a JSON object at all is named
    as such (FastAPI's own words for it name a parameter the client never sees)."""
    content_type = request.headers.get("content-type", "")
    if _takes_form(request) and not content_type.startswith(_FORM_TYPES):
        # Its fields read as missing, since the form parser reads no other body.
        return (
            "this route takes form fields (multipart/form-data or "
            "application/x-www-form-urlencoded), not a body of Content-Type: "
            f"{content_type[:80] or 'none'}"
        )
    for error in exc.errors():
        loc, kind = tuple(error.get("loc", ())), error.get("type")
        if kind == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            return f"the body is not valid JSON (at character {loc[-1]}): {reason}".rstrip(": ")
        if loc != ("body",):
            continue
        if "json" not in content_type:
            # FastAPI reads a body as JSON only when the request says it is JSON.
            return (
                "the body must be a JSON object sent with Content-Type: application/json "
                f"(this request's Content-Type: {content_type[:80] or 'none'})"
            )
        if kind == "missing":
            return "the body is empty: send a JSON object"
        return "the body must be a JSON object"
    return _describe_fields(exc.errors())


def _describe_fields(problems: Sequence[Any]) -> str:
    return describe_validation_error(
        problems, skip=_REQUEST_PARTS, unnamed="request", fallback="invalid request"
    )


def _takes_form(request: Request) -> bool:
    """Whether the matched route reads form fields (FastAPI's `Form` and `File`)."""
    body = getattr(request.scope.get("route"), "body_field", None)
    return body is not None and isinstance(body.field_info, params.Form)


def _describe_unreadable_body(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 (byte {cause.start}); JSON must be UTF-8"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the body has a number with more digits than can be read (at most 4300)"
    return "the body could not be read as JSON"


def _headers_for(exc: errors.CosyVoiceError) -> dict[str, str] | None:
    """A full queue tells the client when to come back (whole seconds, at least 1)."""
    if isinstance(exc, errors.Overloaded):
        return {"Retry-After": str(max(math.ceil(exc.retry_after), 1))}
    return None


def _validation_param(exc: RequestValidationError) -> str | None:
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in _REQUEST_PARTS]
        if loc:
            return loc[0]
    return None


def error_response(
    request: Request,
    status: int,
    detail: Any,
    headers: Mapping[str, str] | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    """The error body of the route's API: `{"detail"}`, or OpenAI's shape under /v1."""
    if request.url.path.startswith(OPENAI_PATH_PREFIX):
        content = openai_error_body(status, detail, param=param, code=code)
    else:
        content = {"detail": detail}
    return JSONResponse(content, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.CosyVoiceError)
    async def _platform_error(request: Request, exc: errors.CosyVoiceError) -> JSONResponse:
        status = status_for(exc)
        if isinstance(exc, errors.BackendUnavailable):
            metrics.count_backend_failure(exc)  # by the adapter that raised it
        if status >= 500:
            log.error("%s %s -> %d: %s", request.method, request.url.path, status, exc.detail)
        else:
            log.info("%s %s -> %d: %s", request.method, request.url.path, status, exc.detail)
        fields = exc if isinstance(exc, OpenAiErrorFields) else None
        return error_response(
            request,
            status,
            exc.detail,
            _headers_for(exc),
            param=fields.param if fields else None,
            code=fields.code if fields else None,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _describe_validation(exc, request)
        log.info("%s %s -> 400: %s", request.method, request.url.path, detail)
        return error_response(request, 400, detail, param=_validation_param(exc))

    @app.exception_handler(WebSocketRequestValidationError)
    async def _handshake_error(websocket: WebSocket, exc: WebSocketRequestValidationError) -> None:
        # A bad query parameter of the handshake: a 400 with the reason where the server
        # can answer a handshake with a response (uvicorn can), not FastAPI's bare close.
        detail = _describe_fields(exc.errors())
        log.info("WebSocket %s -> 400: %s", websocket.url.path, detail)
        await refuse(websocket.scope, websocket.send, 400, detail)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # Only input nested past the interpreter's limit gets here (a JSON body parsed
        # without MAX_JSON_DEPTH's check first): the client's fault, never a 500.
        log.info("%s %s -> 400: input nested too deeply", request.method, request.url.path)
        return error_response(request, 400, "The request is nested too deeply")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 400 and detail == _UNREADABLE_BODY:
            detail = _describe_unreadable_body(exc.__cause__)
        return error_response(request, exc.status_code, detail, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = current_request_id() or "-"
        log.exception("unhandled error (request id %s)", request_id)
        return error_response(request, 500, "Internal server error")
