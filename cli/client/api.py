"""The API over HTTP: one place that turns answers and transport failures into `ApiError`.

Every client command goes through `ApiClient`, so an error always reads the same: the
server's `detail` (or a sentence about the connection), printed once by `cli.client.command`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from .settings import ClientSettings

CONNECT_TIMEOUT = 10.0


class ApiError(Exception):
    """What went wrong, in words a user can act on."""


class ApiClient:
    def __init__(self, settings: ClientSettings) -> None:
        self.url = settings.url
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self._http = httpx.Client(
            base_url=settings.url,
            headers=headers,
            timeout=httpx.Timeout(settings.timeout, connect=CONNECT_TIMEOUT),
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer of a request; `ApiError` for any failure."""
        with self.stream(method, path, **kwargs) as response:
            response.read()
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(f"{method} {path}: the answer is not JSON") from exc

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A successful response whose body is still to be read (audio as it is produced)."""
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(error_text(response))
                yield response
        except httpx.ConnectError as exc:
            raise ApiError(
                f"cannot connect to the API at {self.url} ({exc}); is the server running? "
                "Set COSYVOICE_URL (or --url) to reach another one."
            ) from exc
        except httpx.TimeoutException as exc:
            raise ApiError(f"{method} {path}: no answer from {self.url} in time") from exc
        except httpx.TransportError as exc:
            raise ApiError(f"{method} {path}: connection to {self.url} failed: {exc}") from exc

    def save(self, destination: Path, method: str, path: str, **kwargs: Any) -> int:
        """Write the body of a request to `destination` as it arrives; the file appears
        complete or not at all. Returns its size."""
        partial = destination.with_name(destination.name + ".part")
        size = 0
        try:
            with self.stream(method, path, **kwargs) as response, partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    size += len(chunk)
            partial.replace(destination)
        finally:
            partial.unlink(missing_ok=True)
        return size


def error_text(response: httpx.Response) -> str:
    """The server's `detail`, or the status line when the body has none."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # a validation error: one line per field
        detail = "; ".join(_validation_item(item) for item in detail)
    if not detail:
        detail = response.text.strip()[:500] or response.reason_phrase
    return f"{detail} (HTTP {response.status_code})"


def _validation_item(item: Any) -> str:
    if isinstance(item, dict):
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        return f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item))
    return str(item)
