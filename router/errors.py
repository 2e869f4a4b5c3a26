"""The one table from the platform's error tree to HTTP status codes.

Every error body is `{"detail": ...}`. FastAPI's request validation errors become 400
(the contract keeps 422 for audio that cannot be used); anything unexpected becomes a
500 with a generic detail, logged with the request id, never a stack trace.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from core import errors

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


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _headers_for(exc: errors.CosyVoiceError) -> dict[str, str] | None:
    """A full queue tells the client when to come back (whole seconds, at least 1)."""
    if isinstance(exc, errors.Overloaded):
        return {"Retry-After": str(max(math.ceil(exc.retry_after), 1))}
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.CosyVoiceError)
    async def _platform_error(request: Request, exc: errors.CosyVoiceError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s -> %d: %s", request.method, request.url.path, status, exc.detail)
        else:
            log.info("%s %s -> %d: %s", request.method, request.url.path, status, exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=status, headers=_headers_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _describe_validation(exc)
        log.info("%s %s -> 400: %s", request.method, request.url.path, detail)
        return JSONResponse({"detail": detail}, status_code=400)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # Only input nested past the interpreter's limit gets here (a JSON body parsed
        # without MAX_JSON_DEPTH's check first): the client's fault, never a 500.
        log.info("%s %s -> 400: input nested too deeply", request.method, request.url.path)
        return JSONResponse({"detail": "The request is nested too deeply"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.headers.get("x-request-id", "-")
        log.exception("unhandled error (request id %s)", request_id)
        return JSONResponse({"detail": "Internal server error"}, status_code=500)
