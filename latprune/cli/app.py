"""The ``latprune`` entry point: builds the parser from the registered commands, runs one, prints its result.

With ``--json`` a command prints exactly one JSON object on stdout; progress bars and logs go to stderr.
A ``LatpruneError`` is printed as one line with a non-zero exit; so are Ctrl-C (130) and SIGTERM (143).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Sequence

from latprune.allocator import keep_large_buffers
from latprune.cli import (latency_commands, model_commands, plan_commands, run_command,  # noqa: F401 (registers)
                          size_command)
from latprune.cli.registry import COMMANDS
from latprune.errors import LatpruneError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (and exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from latprune import __version__

    parser = _Parser(prog="latprune", description="Latency-aware pruning for CNNs.")
    parser.add_argument("--version", action="version", version=f"latprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        formatter = argparse.RawDescriptionHelpFormatter if cmd.raw_description else argparse.HelpFormatter
        cmd.options(sub.add_parser(name, help=cmd.help, description=cmd.action.__doc__, formatter_class=formatter))
    return parser


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so that every ``finally`` (temporary files) runs."""


def _terminate(signum, frame) -> None:
    raise _Terminated()


def _finite(value):
    """``value`` with non-finite floats as None: the JSON printed is always valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    cmd = COMMANDS[args.command]
    keep_large_buffers()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = cmd.action(args)
    except LatpruneError as exc:
        print(f"latprune {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"latprune {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"latprune {args.command}: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:  # a typed result (the run summary) prints as its JSON
        print(json.dumps(_finite(result.to_json() if hasattr(result, "to_json") else result), allow_nan=False))
    else:
        print(cmd.formatter(result))
    return 0
