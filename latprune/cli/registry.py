"""Subcommands registered by name: each with its options, its action and its text formatter side by side."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

Action = Callable[[argparse.Namespace], dict]
Options = Callable[[argparse.ArgumentParser], None]
Formatter = Callable[[dict], str]


@dataclass(frozen=True)
class Command:
    """A subcommand: ``options`` adds its arguments, ``action(args)`` returns a JSON-able result that
    ``formatter`` turns into text (or that ``--json`` prints as it is). Its description is the action's docstring."""

    name: str
    help: str
    options: Options
    action: Action
    formatter: Formatter
    raw_description: bool = False


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, options: Options, formatter: Formatter, raw_description: bool = False):
    """Register ``action(args) -> dict`` as subcommand ``name``."""

    def register(action: Action) -> Action:
        COMMANDS[name] = Command(name, help, options, action, formatter, raw_description)
        return action

    return register
