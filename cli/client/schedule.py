"""`cosyvoice-api schedule register|render|status|tasks|stats|rm`: scheduled renders (v3).

A registered task waits (`pending`) until `render` queues it; the queue is served by
priority, urgent first.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from core.domain import Priority, TaskStatus

from .api import ApiClient
from .command import (
    URL_OPTION,
    add_json,
    client_parser,
    err,
    out,
    print_json,
    print_record,
    run_command,
)
from .progress import download_audio, wait_for
from .tasks import add_render_options, add_wait_options, print_tasks, render_body

SCHEDULE = "/api/v3/schedule"  # scheduling is v3 only


def parser() -> argparse.ArgumentParser:
    p = client_parser("cosyvoice-api schedule", "Scheduled renders, served by priority.")
    commands = p.add_subparsers(title="commands", metavar="COMMAND")

    register = commands.add_parser(
        "register", parents=[URL_OPTION], help="register a render for later"
    )
    add_render_options(register)
    register.add_argument(
        "--priority", choices=[x.value for x in Priority], default=Priority.normal.value
    )
    register.set_defaults(handler=register_task)

    render = commands.add_parser(
        "render", parents=[URL_OPTION], help="queue a registered task (or --all of them)"
    )
    render.add_argument("task_id", nargs="?", help="the task to queue")
    render.add_argument("--all", action="store_true", help="queue pending tasks by priority")
    render.add_argument("--max", type=int, default=10, help="with --all: at most this many")
    add_wait_options(render)
    add_json(render)
    render.set_defaults(handler=render_tasks)

    status = commands.add_parser("status", parents=[URL_OPTION], help="one scheduled task's status")
    status.add_argument("task_id")
    add_json(status)
    status.set_defaults(handler=task_status)

    listing = commands.add_parser("tasks", parents=[URL_OPTION], help="scheduled tasks, as a table")
    listing.add_argument("--status", choices=[s.value for s in TaskStatus], default=None)
    listing.add_argument("--priority", choices=[x.value for x in Priority], default=None)
    listing.add_argument("--limit", type=int, default=50)
    add_json(listing)
    listing.set_defaults(handler=list_tasks)

    stats = commands.add_parser(
        "stats", parents=[URL_OPTION], help="the queue's counts by status and priority"
    )
    add_json(stats)
    stats.set_defaults(handler=queue_stats)

    remove = commands.add_parser(
        "rm", parents=[URL_OPTION], help="cancel a task not yet finished, or delete it"
    )
    remove.add_argument("task_id")
    remove.set_defaults(handler=remove_task)
    return p


def _quoted(task_id: str) -> str:
    return quote(task_id, safe="")


def register_task(api: ApiClient, args: argparse.Namespace) -> None:
    body = {**render_body(args, None), "priority": args.priority}
    registered = api.json("POST", f"{SCHEDULE}/register", json=body)
    out.print(registered["task_id"], highlight=False)
    err.print(f"pending, place {registered['queue_position']} in the queue", highlight=False)


def render_tasks(api: ApiClient, args: argparse.Namespace) -> None:
    if args.all == bool(args.task_id):
        err.print("give a task id or --all", highlight=False)
        raise SystemExit(2)
    if args.all:
        answer = api.json("POST", f"{SCHEDULE}/render-all", params={"max_tasks": args.max})
        if args.json:
            print_json(answer)
        else:
            for task_id in answer["task_ids"]:
                out.print(task_id, highlight=False)
            err.print(
                f"{answer['tasks_started']} queued, {answer['tasks_remaining']} still pending",
                highlight=False,
            )
        return
    answer = api.json("POST", f"{SCHEDULE}/render/{_quoted(args.task_id)}")
    if args.wait:
        status = wait_for(api, f"{SCHEDULE}/status/{_quoted(args.task_id)}", args.interval)
        download_audio(api, status, args.output)
    elif args.json:
        print_json(answer)
    else:
        err.print(f"{answer['task_id']} {answer['status']}", highlight=False)


def task_status(api: ApiClient, args: argparse.Namespace) -> None:
    status = api.json("GET", f"{SCHEDULE}/status/{_quoted(args.task_id)}")
    if args.json:
        print_json(status)
    else:
        print_record(status)


def list_tasks(api: ApiClient, args: argparse.Namespace) -> None:
    query: dict[str, Any] = {"limit": args.limit}
    for key in ("status", "priority"):
        if getattr(args, key):
            query[key] = getattr(args, key)
    answer = api.json("GET", f"{SCHEDULE}/tasks", params=query)
    if args.json:
        print_json(answer)
    else:
        print_tasks(answer["tasks"], f"{answer['total']} scheduled tasks")


def queue_stats(api: ApiClient, args: argparse.Namespace) -> None:
    stats = api.json("GET", f"{SCHEDULE}/queue-stats")
    if args.json:
        print_json(stats)
    else:
        print_record(stats, title="schedule queue")


def remove_task(api: ApiClient, args: argparse.Namespace) -> None:
    answer = api.json("DELETE", f"{SCHEDULE}/task/{_quoted(args.task_id)}")
    err.print(answer.get("message", "done"), highlight=False)


def run(argv: list[str]) -> None:
    run_command(parser(), argv)
