"""Two small numeric steps the planner repeats: thinning a sorted list evenly, and bisecting for the largest
budget whose result fits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def thin_evenly(values: Sequence[T], count: int) -> list[T]:
    """At most ``count`` of ``values``, evenly spaced by position, the first and last kept (all when few)."""
    if len(values) <= count:
        return list(values)
    picks = np.linspace(0, len(values) - 1, count).round().astype(int)
    return [values[i] for i in sorted(set(picks))]


def bisect_largest(attempt: Callable[[float], T | None], fits: Callable[[T], bool], low: float, high: float,
                   steps: int, better: Callable[[T, T], bool] = lambda new, old: True) -> T | None:
    """The best fitting result of ``attempt`` over budgets in [``low``, ``high``], bisected for the largest
    budget whose result ``fits`` (``high`` first: when it fits, nothing is bisected). ``attempt`` returns None
    where nothing can be made at that budget (only a larger one can help); ``better(new, old)`` decides which
    fitting result to keep (by default the one at the larger budget). None when nothing fitted."""
    best, budget = None, high
    for _ in range(steps):
        result = attempt(budget)
        if result is not None and fits(result):
            if best is None or better(result, best):
                best = result
            if budget == high:
                break
            low = budget
        elif result is None:
            low = budget
        else:
            high = budget
        if low >= high:
            break
        budget = (low + high) / 2
    return best
