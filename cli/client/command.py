"""What every client command shares: the common flags, the consoles, one error exit.

Data (tables, ids, JSON, audio) goes to stdout, so it can be piped; messages and progress
go to stderr. Any `ApiError` ends the command with its text on stderr and status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.domain import ApiVersion, AudioFormat

from .api import ApiClient, ApiError
from .settings import ClientSettings

Handler = Callable[[ApiClient, argparse.Namespace], None]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _url_option() -> argparse.ArgumentParser:
    option = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand that is not given --url keeps the one given before it.
    option.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="API base URL (default: $COSYVOICE_URL or http://localhost:8012)",
    )
    return option


URL_OPTION = _url_option()


def client_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser; its subcommands take `parents=[URL_OPTION]` too, so --url
    works before or after the subcommand's name."""
    return argparse.ArgumentParser(prog=prog, description=description, parents=[URL_OPTION])


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version",
        choices=[v.value for v in ApiVersion],
        default=ApiVersion.v3.value,
        help="API version: v3 (CosyVoice3, default), v2 or v1 (CosyVoice2)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def run_command(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Parse `argv`, call the chosen subcommand's handler, exit 1 on any API error."""
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        raise SystemExit(2)
    try:
        url = getattr(args, "url", None)
        settings = ClientSettings(**({"url": url} if url else {}))
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        fail(f"invalid client setting: {problems}", status=2)
    try:
        with ApiClient(settings) as api:
            handler(api, args)
    except ApiError as exc:
        fail(str(exc))
    except OSError as exc:  # a local file: unreadable clip, output folder missing, ...
        fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def fail(message: str, status: int = 1) -> NoReturn:
    err.print(Text.assemble(("error: ", "bold red"), message))
    raise SystemExit(status)


def read_text(source: str) -> str:
    """The text of a file, or of stdin for `-`."""
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror}")


def format_for(output: str | None, given: str | None) -> str:
    """The audio format: `--format`, else the output file's extension, else wav."""
    if given:
        return given
    if output and output != "-":
        suffix = Path(output).suffix.lstrip(".").lower()
        if suffix in {f.value for f in AudioFormat}:
            return suffix
        if suffix:
            fail(f"cannot tell the audio format from '{output}': pass --format")
    return AudioFormat.wav.value


def print_rows(
    title: str, columns: list[str], rows: list[list[str]], right: tuple[str, ...] = ()
) -> None:
    """Many rows as a table: light borders and cells that never wrap, so an 80-column pipe
    still shows one line per row. The first column (the id) is never shortened, so it can
    be copied; the others end in "…" when the width runs out."""
    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )
    id_width = max((len(row[0]) for row in rows), default=0)
    for index, column in enumerate(columns):
        table.add_column(
            column,
            no_wrap=True,
            justify="right" if column in right else "left",
            min_width=max(id_width, len(column)) if index == 0 else None,
        )
    for row in rows:
        table.add_row(*row)
    out.print(table)


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data))


def print_record(data: Mapping[str, Any], title: str | None = None) -> None:
    """A flat object as a two-column table; nested objects as `parent.child` rows."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in _flatten(data):
        table.add_row(key, "" if value is None else str(value))
    out.print(table)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows
