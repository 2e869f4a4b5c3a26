"""`cosyvoice-api`: the platform's command line.

cosyvoice-api serve       the whole API on this machine (embedded profile by default)
cosyvoice-api predictor   the KServe model server wrapping one engine
"""

from __future__ import annotations

import argparse
import os
import sys


def _serve(argv: list[str]) -> None:
    import uvicorn

    from core.settings import load_settings

    parser = argparse.ArgumentParser(prog="cosyvoice-api serve", description="Run the API.")
    parser.add_argument("--host", default=None, help="listen address (default: $HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $PORT or 8012)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings(**overrides)
    level = "debug" if settings.debug else settings.log_level

    from .logs import install_safe_logging

    # Before anything logs: every line, uvicorn's included, goes through one formatter
    # that escapes control characters and redacts keys (router/logs.py).
    install_safe_logging(level)

    from .app import create_app
    from .http_limits import uvicorn_options

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


def _predictor(argv: list[str]) -> None:
    # KServe parses sys.argv when its model_server module is imported: hand it ours.
    sys.argv = ["cosyvoice-api predictor", *argv]
    from predictor.__main__ import main as predictor_main

    predictor_main()


FUNCTIONS = ("render", "webhook")


def _function(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="cosyvoice-api function")
    parser.add_argument("name", choices=FUNCTIONS)
    parser.add_argument("--listen", default=None, help="address:port (default $LISTEN_ADDRESS)")
    args = parser.parse_args(argv)
    if args.listen:
        os.environ["LISTEN_ADDRESS"] = args.listen
    from importlib import import_module

    from func_python.cloudevent import serve

    serve(import_module(f"functions.{args.name}.func").new)


def _jetstream_source(argv: list[str]) -> None:
    from functions.jetstream_source.adapter import main as source_main

    source_main()


COMMANDS = {
    "serve": _serve,
    "predictor": _predictor,
    "function": _function,
    "jetstream-source": _jetstream_source,
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(2)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
