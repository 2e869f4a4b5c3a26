"""`cosyvoice-api COMMAND ...`: dispatch to the command's module.

Server commands:
  serve              the whole API on this machine (embedded profile by default)
  predictor          the KServe model server wrapping one engine
  function NAME      a Knative function: render or webhook
  jetstream-source   the JetStream source adapter feeding the functions

Client commands (talk to the API at $COSYVOICE_URL, default http://localhost:8012):
  say                synthesize text with a stored voice, streamed to a file or stdout
  voices             add, list, show and remove stored voices
  tasks              background renders: submit (with --wait), status, list, rm
  schedule           scheduled renders: register, render, status, tasks, stats, rm

`cosyvoice-api COMMAND --help` describes each one.
"""

from __future__ import annotations

import sys
from importlib import import_module

# Module of each command; each has `run(argv)`. Imported only when its command runs.
COMMANDS: dict[str, str] = {
    "serve": "cli.serve",
    "predictor": "cli.predictor",
    "function": "cli.function",
    "jetstream-source": "cli.jetstream_source",
    "say": "cli.client.say",
    "voices": "cli.client.voices",
    "tasks": "cli.client.tasks",
    "schedule": "cli.client.schedule",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(2)
    # Lines reach a log collector (or a test reading a pipe) as they are written, not when
    # a block buffer fills: what PYTHONUNBUFFERED gives, for this process alone.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    import_module(COMMANDS[argv[0]]).run(argv[1:])


if __name__ == "__main__":
    main()
