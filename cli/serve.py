"""`cosyvoice-api serve`: the whole API on this machine (embedded profile by default)."""

from __future__ import annotations

import argparse


def run(argv: list[str]) -> None:
    import uvicorn

    from core.settings import load_settings

    parser = argparse.ArgumentParser(prog="cosyvoice-api serve", description="Run the API.")
    parser.add_argument("--host", default=None, help="listen address (default: $HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $PORT or 8012)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings(**overrides)
    level = "debug" if settings.debug else settings.log_level

    from router.logs import install_safe_logging

    # Before anything logs: every line, uvicorn's included, goes through one formatter
    # that escapes control characters and redacts keys (router/logs.py).
    install_safe_logging(level, log_format=settings.log_format)

    from router.app import create_app
    from router.http_limits import uvicorn_options

    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=level,
        log_config=None,  # keep the handler installed above
        timeout_graceful_shutdown=30,
        **uvicorn_options(settings),
    )
