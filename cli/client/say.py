"""`cosyvoice-api say "text" --voice v -o out.mp3`: speech from a stored voice, streamed.

The audio is written as the server produces it (`with-cache`, `stream=true`): to a file,
which appears complete or not at all, or with `-o -` to stdout, so it pipes into a player
that starts before the synthesis ends.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from core.domain import AudioFormat

from .api import ApiClient
from .command import add_version, client_parser, err, format_for, read_text, run_command


def parser() -> argparse.ArgumentParser:
    p = client_parser("cosyvoice-api say", "Synthesize text with a stored voice.")
    p.add_argument("text", help="the text to speak, or - to read it from stdin")
    p.add_argument("--voice", required=True, help="id of a stored voice")
    p.add_argument("-o", "--output", required=True, help="audio file to write, or - for stdout")
    p.add_argument(
        "--format",
        choices=[f.value for f in AudioFormat],
        default=None,
        help="audio format (default: from the output's extension, else wav)",
    )
    p.add_argument("--speed", type=float, default=1.0, help="speaking rate, 0.5–2.0")
    p.add_argument(
        "--instruct", default=None, help='v3: how to speak, e.g. "Speak slowly with a happy tone"'
    )
    add_version(p)
    p.set_defaults(handler=say)
    return p


def say(api: ApiClient, args: argparse.Namespace) -> None:
    text = read_text("-") if args.text == "-" else args.text
    body: dict[str, Any] = {
        "text": text,
        "voice_id": args.voice,
        "format": format_for(args.output, args.format),
        "speed": args.speed,
        "stream": True,
    }
    if args.instruct:
        body["instruct_text"] = args.instruct
    path = f"/api/{args.version}/cross-lingual/with-cache"
    if args.output == "-":
        _to_stdout(api, path, body)
        return
    size = api.save(Path(args.output), "POST", path, json=body)
    err.print(f"wrote {args.output} ({size} bytes)", highlight=False)


def _to_stdout(api: ApiClient, path: str, body: dict[str, Any]) -> None:
    stdout = sys.stdout.buffer
    try:
        with api.stream("POST", path, json=body) as response:
            for chunk in response.iter_bytes():
                stdout.write(chunk)
                stdout.flush()  # a player downstream starts with the first phrase
    except BrokenPipeError:
        # The player went away: closing the stream stopped the synthesis; say nothing more.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0) from None


def run(argv: list[str]) -> None:
    run_command(parser(), argv)
