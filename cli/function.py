"""`cosyvoice-api function render|webhook`: a Knative function under func-python's runtime.

func-python's own `serve()` takes its address only from the `LISTEN_ADDRESS` variable.
With `--listen`, the same application class is served on the address given here instead,
so the flag needs no write to the process environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from importlib import import_module
from typing import Any

import hypercorn.config

from functions.host import FunctionApplication

FUNCTIONS = ("render", "webhook")


class ListeningApplication(FunctionApplication):
    """The functions' ASGI application (lifecycle, probes, signals, /metrics) bound to
    `listen`."""

    def __init__(self, function: Any, listen: str) -> None:
        super().__init__(function)
        self.listen = listen

    def serve(self) -> None:
        config = hypercorn.config.Config()
        config.bind = [self.listen]
        logging.info("function starting on %s", config.bind)
        # `_serve` is the runtime's loop with its signal handlers (func-python 0.7, pinned
        # <0.8 in pyproject.toml); only the address differs from its own `serve()`.
        asyncio.run(self._serve(config))


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="cosyvoice-api function")
    parser.add_argument("name", choices=FUNCTIONS)
    parser.add_argument("--listen", default=None, help="address:port (default $LISTEN_ADDRESS)")
    args = parser.parse_args(argv)
    new: Callable[[], Any] = import_module(f"functions.{args.name}.func").new
    if args.listen:
        ListeningApplication(new(), args.listen).serve()
    else:
        FunctionApplication(new()).serve()  # func-python's serve(), with /metrics
