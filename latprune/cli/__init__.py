"""The ``latprune`` command: parses arguments, calls the pipeline, prints a table or JSON.

One module per concern: ``options`` (argument types and shared option groups), ``requests`` (arguments ->
the pipeline's request objects, one set of defaults), ``text`` (tables), ``registry`` (commands by name),
the command modules (each command's options, action and formatter side by side) and ``app`` (the entry point).
Building the parser imports no torch: the stages load when a command runs.
"""

from latprune.cli.app import build_parser, main
from latprune.cli.registry import COMMANDS

__all__ = ["COMMANDS", "build_parser", "main"]
