"""Candidate widths per group and the importance kept at each."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from latprune.groups import ChannelGroup
from latprune.planner.search_steps import thin_evenly


@dataclass(frozen=True)
class WidthPolicy:
    """Which widths the planner may choose.

    ``step``: the backend's alignment step (widths are multiples of it when ``aligned``; a
    group narrower than ``min_steps`` steps halves the step until it has that many, so a
    16-channel CIFAR layer is not frozen by a 16-channel grid);
    ``min_fraction``/``min_width``: the narrowest allowed width (default 10%, the profiler's
    narrowest timed width); ``max_count``: evenly thinned to at most this many per group;
    ``hold``: ids of groups kept at full width. The full width is always a candidate.
    ``depth``: a group whose width 0 removes a residual branch (``group.branch``) also gets width 0.
    """

    step: int = 16
    aligned: bool = True
    min_fraction: float = 0.1
    min_width: int = 1
    max_count: int = 32
    min_steps: int = 8
    hold: frozenset[str] = frozenset()
    depth: bool = True

    def unit(self, group: ChannelGroup) -> int:
        """The width granularity of ``group``."""
        if not self.aligned:
            return group.divisor
        step = self.step
        while step > 1 and group.width < self.min_steps * step:
            step //= 2
        return math.lcm(max(step, 1), group.divisor)

    def candidates(self, group: ChannelGroup) -> np.ndarray:
        if group.id in self.hold:
            return np.array([group.width], dtype=np.int64)
        unit = self.unit(group)
        floor = max(math.ceil(self.min_fraction * group.width), self.min_width, 1)
        widths = [w for w in range(unit, group.width, unit) if w >= floor]
        widths = thin_evenly(widths, self.max_count - 1)  # the full width makes max_count
        removal = [0] if self.depth and group.branch else []
        return np.array([*removal, *widths, group.width], dtype=np.int64)


def offset_scores(group: ChannelGroup, scores: np.ndarray) -> np.ndarray:
    """Scores per kept offset: summed over the ``divisor`` slices (grouped layers keep the same offsets)."""
    return np.asarray(scores, dtype=float).reshape(group.divisor, -1).sum(0)


def kept_value(group: ChannelGroup, scores: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Importance kept at each width: the sum of the best ``width`` channels (by offset)."""
    ranked = np.sort(offset_scores(group, scores))[::-1]
    cumulative = np.concatenate([[0.0], np.cumsum(ranked)])
    return cumulative[np.asarray(widths) // group.divisor]


def kept_channels(group: ChannelGroup, scores: np.ndarray, width: int) -> list[int]:
    """Root-relative indices of the best ``width`` channels, legal for the group's divisor."""
    per_slice = width // group.divisor
    best = np.argsort(-offset_scores(group, scores), kind="stable")[:per_slice]
    return group.slice_pattern(sorted(int(i) for i in best))


def uniform_width(group: ChannelGroup, ratio: float, unit: int) -> int:
    """``ratio`` of the group's width, rounded to ``unit`` (at least one unit, at most full)."""
    width = max(unit, round(group.width * ratio / unit) * unit)
    return min(width, group.width)
