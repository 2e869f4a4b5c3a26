"""`cosyvoice-api jetstream-source`: the JetStream source adapter (settings from the
environment, read by `functions.jetstream_source.adapter`)."""

from __future__ import annotations


def run(argv: list[str]) -> None:
    from functions.jetstream_source.adapter import main as source_main

    source_main()
