"""Model keys: the identity of an architecture at an input shape, for timing purposes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class _HasSpec(Protocol):
    spec: str
    input_shape: Sequence[int]


def model_key(model: _HasSpec) -> str:
    """Architecture identity for timing purposes: spec and input shape (not weights)."""
    return f"{model.spec}@{'x'.join(map(str, model.input_shape))}"
