"""API keys: who may call /api, and under which name a caller is known.

Off unless API_KEY, API_KEYS or API_KEYS_FILE names a key; /health and /docs stay open.
With keys, an /api request must carry one:

- HTTP: exactly one `Authorization: Bearer <key>` (the scheme is case-insensitive,
  RFC 7235 §2.1; RFC 6750 §2.1), or `X-API-Key: <key>`. Anything else is a 401 with
  `WWW-Authenticate: Bearer` (RFC 6750 §3); two Authorization headers are a 400.
- WebSocket, in order of preference: the first message `{"message_type": "auth",
  "api_key": "<key>"}` within WS_AUTH_TIMEOUT seconds of the connect; the subprotocols
  `["bearer", "<key>"]` (the server accepts `bearer`, RFC 6455 §4.2.2); the headers
  above; or `?api_key=<key>` for browsers that can do nothing else (uvicorn's log
  lines show it redacted, see `router.logs.RedactSecrets`).

Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every key, so
neither the time taken nor the key's length says how close a guess was. Only a key's
name is ever logged or put on the request (`request.state.api_key_name`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from core.schemas.common import describe_validation_error
from core.settings import Settings

from .limits import GUARDED_PREFIXES, client_host, parse_rate
from .refusals import WS_POLICY_VIOLATION, refuse

log = logging.getLogger("router.auth")

DEFAULT_KEY_NAME = "default"
BEARER = "bearer"
AUTH_MESSAGE_TYPE = "auth"
AUTH_MESSAGE_MAX_BYTES = 4096

MISSING = "Missing API key: send 'Authorization: Bearer <key>'"
INVALID = "Invalid API key"
NOT_BEARER = "Authorization must use the Bearer scheme: 'Authorization: Bearer <key>'"

# Where a resolved outcome is kept on the ASGI scope, so the rate limiter and the
# authentication middleware read the credentials of one request only once.
_OUTCOME = "cosyvoice.auth"
# Key of scope["state"] (request.state / websocket.state) naming the caller's key.
KEY_NAME_STATE = "api_key_name"
# Key of scope["state"] marking a WebSocket that must authenticate in its first message.
_PENDING_STATE = "api_key_pending"
# Key of scope["state"] set by accept_websocket: the route reads the first message's key.
_FIRST_MESSAGE_READ = "api_key_first_message"


# --- configuration ----------------------------------------------------------------


class ApiKeySpec(BaseModel):
    """One API key as configured (API_KEYS as JSON, API_KEYS_FILE)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="Shown in logs.")
    key: str = Field(min_length=1, pattern=r"^\S+$", description="The secret itself.")
    rate_limit: str | None = Field(
        None, description="e.g. '600/minute'; None = RATE_LIMIT; '' or 'off' = no limit."
    )
    max_concurrent: int | None = Field(
        None, ge=0, description="None = MAX_CONCURRENT_REQUESTS_PER_CLIENT; 0 = no limit."
    )

    @field_validator("rate_limit")
    @classmethod
    def _readable_rate(cls, value: str | None) -> str | None:
        try:
            parse_rate(value)
        except ValueError:
            raise ValueError("must look like '600/minute' or '10/second;600/minute'") from None
        return value


_SPEC_LIST = TypeAdapter(list[ApiKeySpec])


class InvalidApiKeys(ValueError):
    """The configured keys cannot be used; the message names the setting."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    rate_limit: str | None
    max_concurrent: int | None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_api_keys(raw: str, source: str = "API_KEYS") -> list[ApiKeySpec]:
    """`name:key[:rate[:concurrency]]` comma-separated, or a JSON list of objects."""
    raw = raw.strip()
    if not raw:
        return []
    if raw.startswith(("[", "{")):
        try:
            return parse_api_key_document(json.loads(raw), source)
        except json.JSONDecodeError as exc:
            raise InvalidApiKeys(f"{source}: not valid JSON ({exc.msg})") from None
    specs = []
    for number, entry in enumerate(raw.split(","), start=1):
        parts = entry.strip().split(":")
        if len(parts) < 2 or len(parts) > 4:
            raise InvalidApiKeys(f"{source}: entry {number} must be name:key[:rate[:concurrency]]")
        fields: dict[str, Any] = {"name": parts[0], "key": parts[1]}
        if len(parts) > 2 and parts[2]:
            fields["rate_limit"] = parts[2]
        if len(parts) > 3 and parts[3]:
            fields["max_concurrent"] = parts[3]
        try:
            specs.append(ApiKeySpec.model_validate(fields))
        except ValidationError as exc:
            raise InvalidApiKeys(f"{source}: entry {number}: {_first_error(exc)}") from None
    return specs


def parse_api_key_document(document: Any, source: str) -> list[ApiKeySpec]:
    """A list of key objects, or `{"keys": [...]}` (the shape of API_KEYS_FILE)."""
    if isinstance(document, dict) and set(document) == {"keys"}:
        document = document["keys"]
    if not isinstance(document, list):
        raise InvalidApiKeys(f'{source}: expected a list of {{"name", "key", ...}} objects')
    try:
        return _SPEC_LIST.validate_python(document)
    except ValidationError as exc:
        raise InvalidApiKeys(f"{source}: {_first_error(exc)}") from None


def read_api_keys_file(path: Path) -> list[ApiKeySpec]:
    import yaml  # YAML is a superset of JSON: one parser reads both forms

    source = f"API_KEYS_FILE ({path})"
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidApiKeys(f"{source}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError:
        raise InvalidApiKeys(f"{source}: neither YAML nor JSON") from None
    return parse_api_key_document(document or [], source)


def _first_error(exc: ValidationError) -> str:
    # Locations and messages only: the input may be a key, never echoed.
    return describe_validation_error(exc.errors()[:1], unnamed="entry")


def configured_api_keys(settings: Settings) -> list[ApiKeySpec]:
    """API_KEY (named `default`), API_KEYS and API_KEYS_FILE together."""
    specs: list[ApiKeySpec] = []
    if settings.api_key:
        specs.append(ApiKeySpec(name=DEFAULT_KEY_NAME, key=settings.api_key))
    specs += parse_api_keys(settings.api_keys)
    if settings.api_keys_file is not None:
        specs += read_api_keys_file(settings.api_keys_file)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise InvalidApiKeys(f"API_KEYS: the names {', '.join(twice)} are used twice")
    if len({spec.key for spec in specs}) != len(specs):
        raise InvalidApiKeys("API_KEYS: two entries have the same key")
    return specs


def load_api_keys(settings: Settings) -> ApiKeyRing:
    """The key ring of these settings; a bad configuration stops the process clearly."""
    try:
        return ApiKeyRing(configured_api_keys(settings))
    except InvalidApiKeys as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None


# --- reading credentials ----------------------------------------------------------


@dataclass(frozen=True)
class AuthOutcome:
    """What the credentials of one request (or WebSocket handshake) come to."""

    key: ApiKey | None = None
    presented: bool = False  # whether the request carried any credential at all
    status: int = 401
    detail: str = MISSING
    challenge: str = 'Bearer realm="api"'
    subprotocol: str | None = None  # the `bearer` entry to echo when a socket is accepted


class ApiKeyRing:
    def __init__(self, specs: Sequence[ApiKeySpec]) -> None:
        self._keys = tuple(
            ApiKey(spec.name, _digest(spec.key), spec.rate_limit, spec.max_concurrent)
            for spec in specs
        )

    def __bool__(self) -> bool:
        return bool(self._keys)

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return self._keys

    def match(self, given: str) -> ApiKey | None:
        """The key `given` is, compared with every key in constant time."""
        digest = _digest(given)
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def authenticate(self, scope: Scope) -> AuthOutcome:
        """The outcome of this request's credentials (computed once per request)."""
        outcome = scope.get(_OUTCOME)
        if outcome is None:
            outcome = self._authenticate(scope)
            scope[_OUTCOME] = outcome
        return outcome

    def _authenticate(self, scope: Scope) -> AuthOutcome:
        subprotocol = _bearer_subprotocol(scope)
        given = _presented_key(scope)
        if isinstance(given, AuthOutcome):
            return given
        if given is None:
            return AuthOutcome(subprotocol=subprotocol)
        key = self.match(given)
        if key is None:
            return AuthOutcome(
                presented=True,
                detail=INVALID,
                challenge='Bearer realm="api", error="invalid_token"',
            )
        return AuthOutcome(key=key, presented=True, status=200, detail="", subprotocol=subprotocol)


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope["headers"] if key == name]


def _bad_request(detail: str) -> AuthOutcome:
    return AuthOutcome(
        presented=True,
        status=400,
        detail=detail,
        challenge='Bearer realm="api", error="invalid_request"',
    )


def _presented_key(scope: Scope) -> str | AuthOutcome | None:
    """The key the request carries; an outcome when the way it is sent is wrong."""
    authorization = _header_values(scope, b"authorization")
    if len(authorization) > 1:
        return _bad_request("Send exactly one Authorization header")
    if authorization:
        scheme, _, credentials = authorization[0].strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != BEARER or not credentials or " " in credentials:
            return AuthOutcome(presented=True, detail=NOT_BEARER)
        return credentials
    header = _header_values(scope, b"x-api-key")
    if len(header) > 1:
        return _bad_request("Send exactly one X-API-Key header")
    if header:
        return header[0].strip()
    if scope["type"] != "websocket":
        return None
    protocols = list(scope.get("subprotocols") or ())
    lowered = [p.lower() for p in protocols]
    if BEARER in lowered and lowered.index(BEARER) + 1 < len(protocols):
        return protocols[lowered.index(BEARER) + 1]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key", [])
    if len(query) > 1:
        return _bad_request("Send api_key once")
    return query[0] if query else None


def _bearer_subprotocol(scope: Scope) -> str | None:
    """The `bearer` subprotocol as the client spelled it, which the server must echo."""
    if scope["type"] != "websocket":
        return None
    for protocol in scope.get("subprotocols") or ():
        if protocol.lower() == BEARER:
            return str(protocol)
    return None


# --- the middleware ---------------------------------------------------------------


class ApiKeyMiddleware:
    """Refuses /api requests without a valid key; names the caller on the request."""

    def __init__(self, app: ASGIApp, keys: ApiKeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not scope["path"].startswith(
            GUARDED_PREFIXES
        ):
            await self.app(scope, receive, send)
            return
        outcome = self.keys.authenticate(scope)
        state = scope.setdefault("state", {})
        if outcome.key is not None:
            state[KEY_NAME_STATE] = outcome.key.name
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket" and not outcome.presented:
            state[_PENDING_STATE] = self.keys  # the first message must carry the key

            async def send_guarded(message: Message) -> None:
                # A WebSocket route that accepts without accept_websocket would never
                # check the key: its socket is closed in place of being accepted.
                if message["type"] == "websocket.accept" and not state.get(_FIRST_MESSAGE_READ):
                    message = {"type": "websocket.close", "code": WS_POLICY_VIOLATION}
                await send(message)

            await self.app(scope, receive, send_guarded)
            return
        log.info(
            "%s %s from %s -> %d: %s",
            scope.get("method", "WebSocket"),
            scope["path"],
            client_host(scope),
            outcome.status,
            outcome.detail,
        )
        await refuse(
            scope, send, outcome.status, outcome.detail, {"WWW-Authenticate": outcome.challenge}
        )


# --- WebSocket: finishing the handshake -------------------------------------------


async def accept_websocket(websocket: WebSocket, auth_timeout: float) -> bool:
    """Accept the socket and finish its authentication; False when it was closed instead.

    Echoes the `bearer` subprotocol when the client offered it. A socket that brought no
    key in its handshake must send `{"message_type": "auth", "api_key": "<key>"}` (or
    `"type": "auth"`) as its first message within `auth_timeout` seconds; otherwise it is
    closed with 1008 (policy violation).
    """
    outcome: AuthOutcome | None = websocket.scope.get(_OUTCOME)
    subprotocol = outcome.subprotocol if outcome else _bearer_subprotocol(websocket.scope)
    state = websocket.scope.setdefault("state", {})
    keys: ApiKeyRing | None = state.get(_PENDING_STATE)
    state[_FIRST_MESSAGE_READ] = True
    await websocket.accept(subprotocol=subprotocol)
    if keys is None:
        return True
    reason = MISSING
    try:
        async with asyncio.timeout(auth_timeout):
            message = await websocket.receive()
    except TimeoutError:
        reason = "No auth message in time: send {'message_type': 'auth', 'api_key': ...} first"
        message = None
    except (WebSocketDisconnect, RuntimeError, OSError):
        return False
    if message is not None:
        if message["type"] == "websocket.disconnect":
            return False
        key = _key_in_auth_message(message.get("text") or message.get("bytes"))
        if key is not None and (match := keys.match(key)) is not None:
            state[KEY_NAME_STATE] = match.name
            return True
        reason = INVALID if key is not None else MISSING
    log.info(
        "WebSocket %s from %s refused: %s",
        websocket.scope["path"],
        client_host(websocket.scope),
        reason,
    )
    try:
        await websocket.close(code=WS_POLICY_VIOLATION, reason=reason[:120])
    except (RuntimeError, OSError):
        pass
    return False


def _key_in_auth_message(frame: str | bytes | None) -> str | None:
    if not frame or len(frame) > AUTH_MESSAGE_MAX_BYTES:
        return None
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    if AUTH_MESSAGE_TYPE not in (data.get("message_type"), data.get("type")):
        return None
    key = data.get("api_key")
    return key if isinstance(key, str) and key else None
