"""Where the client finds the API, and the key it sends.

These configure a client, not a server, so they are not in `core/settings.py`: that
`Settings` is what a server process reads (and documents in the README's settings table),
and its `API_KEY` is the key a server *accepts*. The `COSYVOICE_` prefix keeps the two
apart, so one shell can run a server and talk to another.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_URL = "http://localhost:8012"


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="COSYVOICE_", env_file=None, extra="ignore", frozen=True
    )

    url: str = Field(DEFAULT_URL, description="Base URL of the API (COSYVOICE_URL).")
    api_key: str = Field(
        "", description="Sent as 'Authorization: Bearer <key>' when set (COSYVOICE_API_KEY)."
    )
    timeout: float = Field(
        300.0, gt=0, description="Seconds to wait for any one read (COSYVOICE_TIMEOUT)."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value
