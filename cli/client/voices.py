"""`cosyvoice-api voices add|list|show|rm`: the stored voice library."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from urllib.parse import quote

from core.domain import VoiceType

from .api import ApiClient
from .command import (
    URL_OPTION,
    add_json,
    client_parser,
    err,
    print_json,
    print_record,
    print_rows,
    run_command,
)

VOICES = "/api/v3/voices/"  # one library for every version
PAGE_SIZE = 100  # the API's largest page
CLIP_FORMATS = ("wav", "mp3", "flac")


def parser() -> argparse.ArgumentParser:
    p = client_parser("cosyvoice-api voices", "Manage stored voices.")
    commands = p.add_subparsers(title="commands", metavar="COMMAND")

    add = commands.add_parser(
        "add", parents=[URL_OPTION], help="create a voice from a speech clip (1–30 s)"
    )
    add.add_argument("clip", type=Path, help="wav, mp3 or flac file")
    add.add_argument("--id", required=True, help="voice id: 1–64 letters, digits, _ or -")
    add.add_argument("--name", required=True, help="display name")
    add.add_argument(
        "--type",
        choices=[t.value for t in VoiceType],
        default=VoiceType.cross_lingual.value,
        help="how the voice is used (default cross_lingual; zero_shot needs --prompt-text)",
    )
    add.add_argument("--prompt-text", default=None, help="transcript of the clip")
    add.add_argument("--language", default=None, help="zh, en, ja, ko, de, es, fr, it, ru, ...")
    add.add_argument("--description", default=None)
    add_json(add)
    add.set_defaults(handler=add_voice)

    listing = commands.add_parser(
        "list", parents=[URL_OPTION], help="the stored voices, as a table"
    )
    listing.add_argument("--type", choices=[t.value for t in VoiceType], default=None)
    listing.add_argument("--language", default=None)
    add_json(listing)
    listing.set_defaults(handler=list_voices)

    show = commands.add_parser("show", parents=[URL_OPTION], help="one voice's record")
    show.add_argument("voice_id")
    add_json(show)
    show.set_defaults(handler=show_voice)

    remove = commands.add_parser(
        "rm", parents=[URL_OPTION], help="delete voices and their stored samples"
    )
    remove.add_argument("voice_ids", nargs="+", metavar="voice_id")
    remove.set_defaults(handler=remove_voices)
    return p


def add_voice(api: ApiClient, args: argparse.Namespace) -> None:
    fields = {
        "voice_id": args.id,
        "name": args.name,
        "voice_type": args.type,
        "prompt_text": args.prompt_text,
        "language": args.language,
        "description": args.description,
    }
    suffix = args.clip.suffix.lstrip(".").lower()
    if suffix in CLIP_FORMATS:
        fields["audio_format"] = suffix
    data = {key: value for key, value in fields.items() if value is not None}
    with args.clip.open("rb") as clip:
        voice = api.json("POST", VOICES, data=data, files={"audio_file": (args.clip.name, clip)})
    if args.json:
        print_json(voice)
    else:
        err.print(
            f"created voice {voice['voice_id']} ({voice['duration']:.1f} s, {voice['voice_type']})",
            highlight=False,
        )


def list_voices(api: ApiClient, args: argparse.Namespace) -> None:
    query = {
        key: value
        for key, value in (("voice_type", args.type), ("language", args.language))
        if value
    }
    voices: list[dict[str, Any]] = []
    page = 1
    while True:
        answer = api.json("GET", VOICES, params={**query, "page": page, "page_size": PAGE_SIZE})
        voices.extend(answer["voices"])
        if not answer["voices"] or len(voices) >= answer["total"]:
            break
        page += 1
    if args.json:
        print_json(voices)
        return
    rows = [
        [
            voice["voice_id"],
            voice["name"],
            voice["voice_type"],
            voice.get("language") or "",
            f"{voice['duration']:.1f} s" if voice.get("duration") is not None else "",
            (voice.get("created_at") or "")[:16].replace("T", " "),
        ]
        for voice in voices
    ]
    columns = ["voice_id", "name", "type", "language", "duration", "created"]
    print_rows(f"{len(voices)} voices", columns, rows, right=("duration",))


def show_voice(api: ApiClient, args: argparse.Namespace) -> None:
    voice = api.json("GET", VOICES + quote(args.voice_id, safe=""))
    if args.json:
        print_json(voice)
    else:
        print_record(voice)


def remove_voices(api: ApiClient, args: argparse.Namespace) -> None:
    for voice_id in args.voice_ids:
        api.json("DELETE", VOICES + quote(voice_id, safe=""))
        err.print(f"deleted voice {voice_id}", highlight=False)


def run(argv: list[str]) -> None:
    run_command(parser(), argv)
