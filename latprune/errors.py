"""The one exception type that carries a user-facing message.

The CLI prints a ``LatpruneError`` as a single line and exits non-zero; any other
exception is a bug and keeps its traceback.
"""


class LatpruneError(Exception):
    """A problem with the user's input or environment, explained in one line."""
