"""`cosyvoice-api tasks submit|status|list|rm`: background renders, which start at once.

`submit FILE --wait` follows the render with a progress bar and downloads the audio;
without `--wait` it prints the task id, for scripts.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from core.domain import AudioFormat, TaskStatus

from .api import ApiClient
from .command import (
    URL_OPTION,
    add_json,
    add_version,
    client_parser,
    err,
    format_for,
    out,
    print_json,
    print_record,
    print_rows,
    read_text,
    run_command,
)
from .progress import download_audio, wait_for


def add_render_options(p: argparse.ArgumentParser) -> None:
    """The fields of a render request, shared with `schedule register`."""
    p.add_argument("file", help="text file to render (UTF-8), or - for stdin")
    p.add_argument("--voice", required=True, help="id of a stored voice")
    p.add_argument("--format", choices=[f.value for f in AudioFormat], default=None)
    p.add_argument("--speed", type=float, default=1.0, help="speaking rate, 0.5–2.0")
    p.add_argument("--instruct", default=None, help="v3: how to speak")
    p.add_argument("--callback-url", default=None, help="receives the final status (POST)")


def add_wait_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="follow the render, then download it")
    p.add_argument(
        "-o", "--output", default=None, help="where --wait saves the audio (default: its name)"
    )
    p.add_argument("--interval", type=float, default=0.5, help="seconds between progress checks")


def render_body(args: argparse.Namespace, output: str | None) -> dict[str, Any]:
    """The request body; without --format, the format follows `output`'s extension."""
    body: dict[str, Any] = {
        "text": read_text(args.file),
        "voice_id": args.voice,
        "format": format_for(output, args.format),
        "speed": args.speed,
    }
    if args.instruct:
        body["instruct_text"] = args.instruct
    if args.callback_url:
        body["callback_url"] = args.callback_url
    return body


def parser() -> argparse.ArgumentParser:
    p = client_parser("cosyvoice-api tasks", "Background renders (long texts welcome).")
    commands = p.add_subparsers(title="commands", metavar="COMMAND")

    submit = commands.add_parser(
        "submit", parents=[URL_OPTION], help="render a text file in the background"
    )
    add_render_options(submit)
    add_wait_options(submit)
    add_version(submit)
    submit.set_defaults(handler=submit_task)

    status = commands.add_parser("status", parents=[URL_OPTION], help="one task's status")
    status.add_argument("task_id")
    add_version(status)
    add_json(status)
    status.set_defaults(handler=task_status)

    listing = commands.add_parser("list", parents=[URL_OPTION], help="recent tasks, as a table")
    listing.add_argument("--status", choices=[s.value for s in TaskStatus], default=None)
    listing.add_argument("--limit", type=int, default=50)
    add_version(listing)
    add_json(listing)
    listing.set_defaults(handler=list_tasks)

    remove = commands.add_parser(
        "rm", parents=[URL_OPTION], help="cancel a running task or delete a finished one"
    )
    remove.add_argument("task_id")
    add_version(remove)
    remove.set_defaults(handler=remove_task)
    return p


def task_path(version: str, task_id: str) -> str:
    return f"/api/{version}/cross-lingual/task/{quote(task_id, safe='')}"


def submit_task(api: ApiClient, args: argparse.Namespace) -> None:
    created = api.json(
        "POST", f"/api/{args.version}/cross-lingual/task", json=render_body(args, args.output)
    )
    if not args.wait:
        out.print(created["task_id"], highlight=False)
        return
    status = wait_for(api, task_path(args.version, created["task_id"]), args.interval)
    download_audio(api, status, args.output)


def task_status(api: ApiClient, args: argparse.Namespace) -> None:
    status = api.json("GET", task_path(args.version, args.task_id))
    if args.json:
        print_json(status)
    else:
        print_record(status)


def list_tasks(api: ApiClient, args: argparse.Namespace) -> None:
    query: dict[str, Any] = {"limit": args.limit}
    if args.status:
        query["status"] = args.status
    answer = api.json("GET", f"/api/{args.version}/cross-lingual/tasks", params=query)
    if args.json:
        print_json(answer)
    else:
        print_tasks(answer["tasks"], f"{answer['total']} tasks")


def print_tasks(tasks: list[dict[str, Any]], title: str) -> None:
    rows = [
        [
            task["task_id"],
            task["status"],
            task.get("priority") or "",
            f"{100 * task['progress']:.0f} %",
            f"{task['duration']:.1f} s" if task.get("duration") is not None else "",
        ]
        for task in tasks
    ]
    columns = ["task_id", "status", "priority", "progress", "duration"]
    print_rows(title, columns, rows, right=("progress", "duration"))


def remove_task(api: ApiClient, args: argparse.Namespace) -> None:
    answer = api.json("DELETE", task_path(args.version, args.task_id))
    err.print(answer.get("message", "done"), highlight=False)


def run(argv: list[str]) -> None:
    run_command(parser(), argv)
