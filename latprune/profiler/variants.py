"""Which pruned variants to time: widths that cover every group's candidate grid.

Each group gets a list of candidate widths (always the full width, evenly spaced
multiples of the alignment step, and off-grid widths to expose the misalignment
penalty). Variants cycle through every group's candidates in independent shuffled
orders, so every layer sees as many distinct (input, output) width pairs as there
are variants.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from latprune.groups import ChannelGroup


@dataclass(frozen=True)
class Variant:
    key: str
    widths: dict[str, int]

    @classmethod
    def of(cls, widths: dict[str, int]) -> "Variant":
        text = json.dumps(sorted(widths.items()), separators=(",", ":"))
        return cls(key=hashlib.sha1(text.encode()).hexdigest()[:16], widths=dict(widths))

    def kept(self, groups: Sequence[ChannelGroup]) -> dict[str, list[int]]:
        """The leading channels of every group (timing does not depend on which ones)."""
        return {g.id: g.leading_channels(self.widths[g.id]) for g in groups if self.widths[g.id] < g.width}


def _spread(values: Sequence[int], count: int) -> list[int]:
    """``count`` values picked evenly across a sorted list (both ends included)."""
    if count >= len(values):
        return list(values)
    if count <= 1:
        return [values[-1]]
    return sorted({values[round(i * (len(values) - 1) / (count - 1))] for i in range(count)})


def candidate_widths(group: ChannelGroup, count: int, step: int, min_fraction: float = 0.1) -> list[int]:
    """Up to ``count`` widths for ``group``: full width, aligned multiples, then off-grid widths."""
    floor = max(group.divisor, math.ceil(min_fraction * group.width))
    legal = [w for w in group.candidate_widths() if w >= floor]
    if len(legal) <= count:
        return legal
    aligned = [w for w in legal if w % step == 0 and w != group.width]
    off_grid = [w for w in legal if w % step != 0 and w != group.width]
    n_aligned = min(len(aligned), (3 * (count - 1)) // 4)
    n_off = min(len(off_grid), count - 1 - n_aligned)
    n_aligned = min(len(aligned), count - 1 - n_off)
    return sorted({group.width, *_spread(aligned, n_aligned), *_spread(off_grid, n_off)})


def _distinct_neighbour_shifts(groups: Sequence[ChannelGroup]) -> dict[str, int]:
    """Greedy colouring: groups that set the input and output widths of one layer differ."""
    by_layer: dict[str, set[str]] = {}
    for group in groups:
        for layer in (*group.producers, *group.consumers):
            by_layer.setdefault(layer, set()).add(group.id)
    shifts: dict[str, int] = {}
    for group in groups:
        taken = {shifts[other] for layer in (*group.producers, *group.consumers)
                 for other in by_layer[layer] if other in shifts}
        shifts[group.id] = next(s for s in range(len(groups) + 1) if s not in taken)
    return shifts


def design_variants(
    groups: Sequence[ChannelGroup], widths_per_group: int, n_variants: int, step: int, seed: int = 0
) -> list[Variant]:
    """The dense network followed by ``n_variants`` pruned variants (deterministic for a seed)."""
    rng = random.Random(seed)
    sequences = {}
    shifts = _distinct_neighbour_shifts(groups)
    for group in groups:
        # One random order per group, rotated by a group-specific shift in every further cycle:
        # within a cycle a group repeats no width, and across cycles two groups repeat a
        # (width, width) pair only if their shifts coincide - and groups that meet in a layer
        # get different shifts, so every layer sees distinct (cin, cout) pairs.
        order = candidate_widths(group, widths_per_group, step)
        rng.shuffle(order)
        n = len(order)
        shift = 1 + shifts[group.id] % max(n - 1, 1)
        sequences[group.id] = [order[(i % n + (i // n) * shift) % n] for i in range(n_variants)]
    dense = Variant.of({g.id: g.width for g in groups})
    variants = [dense]
    seen = {dense.key}
    for i in range(n_variants):
        variant = Variant.of({g.id: sequences[g.id][i] for g in groups})
        if variant.key not in seen:
            seen.add(variant.key)
            variants.append(variant)
    return variants
