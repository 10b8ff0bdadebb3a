"""The command line's observability parts: ``--http``, ``--admin``, ``--log-format``,
``MALSTROM_*`` environment defaults for every flag, and ``status`` as a table."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from malstrom.observe._logs import LOG_FORMATS
from malstrom.observe._status import format_status

__all__ = [
    "add_http",
    "add_log_format",
    "apply_env_defaults",
    "env_name",
    "print_status",
    "watch_status",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def add_http(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus), /healthz and the live dashboard at / there "
        "(port 0: any free port, printed)",
    )


def add_log_format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text (default) or one JSON object each (worker logs carry job, "
        "worker and operator)",
    )


def env_name(action: argparse.Action) -> str:
    return "MALSTROM_" + action.dest.upper()


def apply_env_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option of ``parser`` (and its subcommands) defaults to ``$MALSTROM_<DEST>``
    (``--snapshot-interval`` <- ``MALSTROM_SNAPSHOT_INTERVAL``); the command line wins.
    Flags take 1/true/yes/on or 0/false/no/off."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                apply_env_defaults(sub)
            continue
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        name = env_name(action)
        if action.help and action.help is not argparse.SUPPRESS and name not in action.help:
            action.help += f" [env {name}]"
        raw = os.environ.get(name)
        if raw is None:
            continue
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            low = raw.strip().lower()
            if low not in _TRUE | _FALSE:
                parser.error(f"${name}={raw!r}: give 1/true/yes/on or 0/false/no/off")
            on = low in _TRUE
            action.default = on if isinstance(action, argparse._StoreTrueAction) else not on
        elif isinstance(action, argparse._CountAction):
            action.default = int(raw) if raw.isdigit() else len(raw)
        else:
            try:
                value: Any = action.type(raw) if callable(action.type) else raw
            except (TypeError, ValueError):
                parser.error(f"${name}={raw!r} is not a valid {action.option_strings[-1]}")
            if action.choices is not None and value not in action.choices:
                parser.error(f"${name}={raw!r}: choose from {', '.join(map(str, action.choices))}")
            action.default = value
            action.required = False


def print_status(reply: bytes, as_json: bool) -> None:
    data = json.loads(reply)
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(format_status(data))


def watch_status(client: Any, every: float, timeout: float) -> int:
    """``malstrom status --watch S``: clear the screen and print the table every S seconds
    until Ctrl-C (0) or the job cannot be reached any more (1)."""
    import sys
    import time

    if not every > 0:
        print("malstrom status: --watch needs a number of seconds > 0", file=sys.stderr)
        return 2
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                reply = client.call("status", b"{}", timeout=timeout)
            except Exception as e:
                print(f"malstrom status: {e}", file=sys.stderr)
                return 1
            text = format_status(json.loads(reply))
            print(("\x1b[H\x1b[2J" if tty else "") + text + ("" if tty else "\n"), flush=True)
            time.sleep(every)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
