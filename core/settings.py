"""Every setting of the platform, in one place.

Names follow API.md's configuration table and DESIGN.md's adapter URLs. Each default
runs on one machine with nothing else installed (the embedded profile). Values are
validated when the process starts, so a typo fails fast with the variable's name.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, FilePath, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class EngineChoice(StrEnum):
    auto = "auto"
    cosyvoice = "cosyvoice"
    espeak = "espeak"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    # --- server -------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Address the API listens on.")
    port: int = Field(8012, ge=1, le=65535, description="Port the API listens on.")
    debug: bool = Field(False, description="Verbose logging.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text, or as one JSON object per line (with one line per "
        "request: method, route, status, duration, request id, key name).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Origins allowed to call the API from a browser, comma-separated.",
    )
    api_key: str = Field(
        "", description="When set, every /api route needs 'Authorization: Bearer <key>'."
    )
    api_keys: str = Field(
        "",
        description="More API keys, each with a name and optional limits: "
        "'name:key[:rate[:concurrency]]' comma-separated, or a JSON list of "
        '{"name", "key", "rate_limit", "max_concurrent"}.',
    )
    api_keys_file: Path | None = Field(
        None, description="YAML or JSON file with API keys (the JSON form of API_KEYS)."
    )
    ws_auth_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds a WebSocket may take to send its auth message when it "
        "brought no key in its handshake.",
    )
    rate_limit: str = Field(
        "",
        description="Requests allowed per key or client, e.g. '600/minute' or "
        "'10/second;600/minute' (empty = no limit).",
    )
    max_concurrent_requests_per_client: int = Field(
        0, ge=0, description="Requests in flight at once per key or client (0 = no limit)."
    )

    # --- connections (enforced by the HTTP server before the application) ----------
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Most bytes of a request line plus headers; beyond: 431.",
    )
    request_head_timeout: float = Field(
        15.0,
        gt=0,
        description="Seconds a connection may take to send a complete request line and "
        "headers; beyond: 408 and the connection is closed.",
    )
    request_body_timeout: float = Field(
        300.0, gt=0, description="Seconds a request body may take to arrive in full; beyond: 408."
    )
    request_body_min_rate: int = Field(
        1024,
        ge=0,
        description="Bytes per second a request body must average (measured over windows of "
        "REQUEST_HEAD_TIMEOUT seconds while the server is reading); slower: 408 (0 = no floor).",
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle keep-alive connection stays open."
    )
    max_json_depth: int = Field(
        32,
        ge=2,
        le=512,
        description="Deepest nesting of arrays/objects in a JSON body or WebSocket message; "
        "deeper: 400.",
    )
    ws_max_message_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest WebSocket message accepted; larger: the socket is closed with 1009.",
    )
    ws_ping_interval: float = Field(
        20.0,
        ge=0,
        description="Seconds between the server's WebSocket pings, which keep idle sockets "
        "open behind proxies (0 = no pings).",
    )
    ws_ping_timeout: float = Field(
        20.0, gt=0, description="Seconds a WebSocket peer has to answer a ping; then it is closed."
    )
    sse_keepalive_seconds: float = Field(
        15.0,
        gt=0,
        description="Seconds of silence after which an SSE stream sends a ': keep-alive' comment.",
    )

    # --- engines ------------------------------------------------------------------
    engine: EngineChoice = Field(
        EngineChoice.auto,
        description="auto = CosyVoice when its code and weights are present, else espeak.",
    )
    model_dir: Path = Field(Path("models/CosyVoice2-0.5B"), description="CosyVoice2 model path.")
    model_dir_v3: Path = Field(
        Path("models/Fun-CosyVoice3-0.5B"), description="CosyVoice3 model path."
    )
    auto_download_models: bool = Field(
        True, description="Download missing models from Hugging Face (cosyvoice engine only)."
    )
    cosyvoice_home: Path | None = Field(
        None,
        description="Checkout of the upstream CosyVoice code (needed by the cosyvoice engine).",
    )
    cosyvoice_fp16: bool = Field(False, description="Run CosyVoice in fp16 (GPU only).")
    cosyvoice_trt: bool = Field(False, description="Use TensorRT for the flow decoder (GPU only).")
    cosyvoice_vllm: bool = Field(False, description="Use vLLM for the LLM stage (GPU only).")
    synthesis_concurrency: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Syntheses run at once per engine (the GPU's slots); unset = chosen for "
        "the device: one per CPU core, or from free GPU memory and the model.",
    )
    synthesis_timeout: float = Field(
        300.0, gt=0, description="Deadline in seconds for one synthesis call."
    )
    max_queued_syntheses: int = Field(
        32,
        ge=0,
        description="Synchronous and streaming syntheses that may wait for a slot per engine; "
        "beyond: 503 with Retry-After (tasks wait in the task queue instead).",
    )
    predictor_url_v3: str = Field(
        "", description="KServe predictor serving v3 (empty = the engine in-process)."
    )
    predictor_url_v2: str = Field(
        "", description="KServe predictor serving v1/v2 (empty = the engine in-process)."
    )
    predictor_model_v3: str = Field("cosyvoice3", description="Model name of the v3 predictor.")
    predictor_model_v2: str = Field("cosyvoice2", description="Model name of the v2 predictor.")
    predictor_timeout: float = Field(
        600.0, gt=0, description="Seconds to wait for a predictor answer (covers a cold start)."
    )
    feature_cache_size: int = Field(
        256, ge=1, description="Voices whose extracted features stay in memory (LRU)."
    )

    # --- storage and events --------------------------------------------------------
    database_url: str = Field(
        "sqlite:///voice_cache/cosyvoice.db",
        description="sqlite:///path or mongodb://host:port/dbname.",
    )
    blob_store_url: str = Field(
        "",
        description="file:///path, s3://HOST:PORT/BUCKET or s3s://HOST:PORT/BUCKET. "
        "Empty = VOICE_CACHE_DIR for samples and OUTPUT_DIR for rendered audio.",
    )
    aws_access_key_id: str = Field("", description="Access key of the S3 API (s3:// stores).")
    aws_secret_access_key: SecretStr = Field(
        SecretStr(""), description="Secret key of the S3 API (s3:// stores)."
    )
    aws_region: str = Field(
        "", description="Region of the S3 API (empty = AWS_DEFAULT_REGION, else the store's)."
    )
    aws_default_region: str = Field(
        "", description="Region of the S3 API when AWS_REGION is unset (the AWS tools' name)."
    )
    ssl_cert_file: FilePath | None = Field(
        None,
        description="CA bundle (PEM) that verifies an s3s:// store's certificate; unset = "
        "the certifi bundle.",
    )
    event_bus_url: str = Field("memory://", description="memory:// or nats://HOST:PORT.")
    jetstream_stream: str = Field(
        "COSYVOICE",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Name of the JetStream stream holding the platform's events (nats:// only).",
    )
    jetstream_manage_stream: bool = Field(
        True,
        description="Create the JetStream stream and keep its configuration; false when "
        "another owner (e.g. a NACK Stream object) manages it.",
    )
    k_sink: str = Field(
        "",
        description="JetStream source: URL of the function it feeds (Knative's "
        "ContainerSource sets it from spec.sink).",
    )
    jetstream_subjects: str = Field(
        "cosyvoice.render.requested.*",
        description="JetStream source: subjects it consumes, comma-separated "
        "(render requests, cosyvoice.render.submit, cosyvoice.task.>).",
    )
    jetstream_max_in_flight: int = Field(
        4, ge=1, description="JetStream source: events handed to the sink at once."
    )
    jetstream_max_deliver: int | None = Field(
        None,
        ge=1,
        description="JetStream source: failed attempts (500 answers of a ready function) "
        "before an event goes to cosyvoice.dlq.<subject>; unset = TASK_MAX_ATTEMPTS. "
        "Redeliveries while the function is down or busy do not count.",
    )
    jetstream_ack_wait: float | None = Field(
        None,
        gt=0,
        description="JetStream source: seconds before an event nobody reports on is "
        "delivered again; unset = TASK_LEASE_SECONDS.",
    )
    jetstream_sink_timeout: float | None = Field(
        None,
        gt=0,
        description="JetStream source: seconds to wait for the function's answer; "
        "unset = PREDICTOR_TIMEOUT.",
    )
    jetstream_sink_backoff_max: float = Field(
        30.0,
        gt=0,
        description="JetStream source: longest pause between two tries while the function "
        "is unreachable or not ready (the pause doubles from 0.5 s up to this).",
    )
    backend_timeout: float = Field(
        5.0, gt=0, description="Seconds before a database/object-store call counts as unavailable."
    )
    voice_cache_dir: Path = Field(Path("voice_cache"), description="Voice samples (embedded).")
    output_dir: Path = Field(Path("outputs"), description="Rendered audio (embedded).")

    # --- limits -------------------------------------------------------------------
    max_text_length: int = Field(2000, ge=1, description="Max text of a synchronous request.")
    max_task_text_length: int = Field(100_000, ge=1, description="Max text of a task.")
    max_audio_duration: float = Field(30.0, gt=1, description="Max reference clip, seconds.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Max upload size.")
    sample_rate: int = Field(22050, ge=8000, le=48000, description="Default output sample rate.")
    max_concurrent_streams: int = Field(
        64, ge=1, description="Streams (HTTP, SSE, WebSocket requests) at once; beyond: 503."
    )

    # --- OpenAI-compatible API (/v1) ----------------------------------------------
    openai_voices: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Stored voices that OpenAI's built-in voice names stand for on "
        "/v1/audio/speech: 'alloy:my_voice,nova:other_voice' or a JSON object; a built-in "
        "name not listed answers 400.",
    )

    # --- tasks --------------------------------------------------------------------
    worker_concurrency: int = Field(2, ge=0, le=64, description="Renders run at once by serve.")
    task_lease_seconds: float = Field(
        120.0, gt=0, description="A processing task whose worker is gone is retaken after this."
    )
    task_max_attempts: int = Field(3, ge=1, description="Deliveries of a render before it fails.")
    segment_max_chars: int = Field(
        400, ge=50, description="Long-form text is split into segments of at most this size."
    )

    # --- webhooks -----------------------------------------------------------------
    webhook_secret: str = Field(
        "",
        description="HMAC-SHA256 key of webhook signatures. Required with a MongoDB "
        "DATABASE_URL; the embedded profile generates one and keeps it beside its database.",
    )
    webhook_allow_private: bool = Field(
        False, description="Allow callbacks to loopback/private addresses (tests, dev only)."
    )
    webhook_max_attempts: int = Field(5, ge=1, le=20, description="Delivery attempts.")
    webhook_backoff_seconds: float = Field(1.0, gt=0, description="First retry delay; doubles.")
    webhook_timeout: float = Field(10.0, gt=0, description="Seconds per delivery attempt.")
    webhook_resend_interval: float = Field(
        60.0,
        gt=0,
        description="Seconds between two scans of the webhook function for callbacks left "
        "pending longer than a whole delivery takes (then resent).",
    )

    # --- retention ----------------------------------------------------------------
    output_ttl: float = Field(
        86_400.0,
        ge=0,
        description="Seconds the audio of a synchronous call stays downloadable (0 = forever).",
    )
    task_retention: float = Field(
        604_800.0,
        ge=0,
        description="Seconds a finished task and its audio are kept after it ended (0 = forever).",
    )
    retention_sweep_seconds: float = Field(
        600.0, gt=0, description="Seconds between two sweeps of expired outputs and tasks."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("ssl_cert_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("openai_voices", mode="before")
    @classmethod
    def _voice_aliases(cls, value: object) -> object:
        from core.schemas.openai import parse_voice_aliases

        return parse_voice_aliases(value) if isinstance(value, str | dict) else value

    @field_validator("rate_limit")
    @classmethod
    def _known_rate(cls, value: str) -> str:
        from limits import parse_many

        value = value.strip()
        if value:
            try:
                parse_many(value)
            except ValueError:
                raise ValueError("must look like '600/minute' or '10/second;600/minute'") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return level

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "mongodb://", "mongodb+srv://")):
            raise ValueError("must start with sqlite:///, mongodb:// or mongodb+srv://")
        return value

    @field_validator("event_bus_url")
    @classmethod
    def _known_bus(cls, value: str) -> str:
        if not value.startswith(("memory://", "nats://", "tls://")):
            raise ValueError("must be memory:// or nats://HOST:PORT")
        return value

    @field_validator("blob_store_url")
    @classmethod
    def _known_blobs(cls, value: str) -> str:
        if value and not value.startswith(("file://", "s3://", "s3s://")):
            raise ValueError("must be file:///path, s3://HOST:PORT/BUCKET or s3s://...")
        return value

    def require_webhook_secret(self) -> None:
        """Exit unless a process that signs webhooks has a key it may use.

        Replicas of a cluster (MongoDB) must all sign with one key, so none may invent
        its own: WEBHOOK_SECRET is required there. Processes that never sign (the
        JetStream source) do not call this. The embedded profile makes its own key.
        """
        if self.database_url.startswith("mongodb") and not self.webhook_secret:
            raise SystemExit(
                "invalid configuration: WEBHOOK_SECRET must be set when DATABASE_URL is "
                "MongoDB (the cluster profile); e.g. WEBHOOK_SECRET=$(openssl rand -hex 32)"
            )


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning a validation error into one clear line."""
    from pydantic import ValidationError

    from core.schemas.common import describe_validation_error

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # Each problem named as its variable is spelled in the environment.
        named = ({**err, "loc": [str(p).upper() for p in err["loc"]]} for err in exc.errors())
        raise SystemExit(f"invalid configuration: {describe_validation_error(named)}") from None
