"""Which pruned variants to time: widths that cover every group's candidate grid.

Each group gets a list of candidate widths (always the full width, evenly spaced
multiples of the alignment step, and off-grid widths to expose the misalignment
penalty). Variants use every group's candidates evenly while giving each layer a new
(input, output) width pair each time, so a layer sees as many distinct pairs as there
are variants.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from latprune.branches import Branch
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


def _coupled_layers(groups: Sequence[ChannelGroup]) -> dict[str, list[tuple[str, str]]]:
    """For each group, the (input group, output group) of every layer it shares with another group."""
    input_group = {layer: g.id for g in groups for layer in g.consumers}
    output_group = {layer: g.id for g in groups for layer in g.producers}
    coupled: dict[str, list[tuple[str, str]]] = {g.id: [] for g in groups}
    for layer in set(input_group) & set(output_group):
        pair = (input_group[layer], output_group[layer])
        if pair[0] != pair[1]:
            coupled[pair[0]].append(pair)
            coupled[pair[1]].append(pair)
    return coupled


def _only_new_pairs(gid: str, width: int, widths: dict[str, int], pairs: Sequence[tuple[str, str]],
                    seen: set[tuple[str, str, int, int]]) -> bool:
    """Whether giving group ``gid`` this width repeats no layer's (cin, cout) pair seen before."""
    for a, b in pairs:
        wa = width if a == gid else widths.get(a)
        wb = width if b == gid else widths.get(b)
        if wa is not None and wb is not None and (a, b, wa, wb) in seen:
            return False
    return True


def design_variants(
    groups: Sequence[ChannelGroup], widths_per_group: int, n_variants: int, step: int, seed: int = 0,
    branches: Sequence[Branch] = (), depth_share: float = 0.25, removal_rate: float = 0.4,
) -> list[Variant]:
    """The dense network followed by ``n_variants`` pruned variants (deterministic for a seed), then, for a
    model with removable residual ``branches``, ``depth_share`` as many again with branches removed.

    Built greedily: in each variant every group takes its least-used candidate width for
    which each layer it shares with an already placed group gets a (cin, cout) pair it has
    not seen yet, so candidates are used evenly and layers see distinct width pairs. A depth
    variant takes the widths of one of those and removes each branch with probability
    ``removal_rate`` (at least one), so the bias layers that replace branches are timed at many hub widths.
    """
    rng = random.Random(seed)
    candidates = {g.id: candidate_widths(g, widths_per_group, step) for g in groups}
    coupled = _coupled_layers(groups)
    all_pairs = {pair for pairs in coupled.values() for pair in pairs}
    uses = {g.id: dict.fromkeys(candidates[g.id], 0) for g in groups}
    seen: set[tuple[str, str, int, int]] = set()
    dense = Variant.of({g.id: g.width for g in groups})
    variants, keys = [dense], {dense.key}
    for _ in range(n_variants):
        widths: dict[str, int] = {}
        order = [g.id for g in groups]
        rng.shuffle(order)
        for gid in order:
            ranked = sorted(candidates[gid], key=lambda w, g=gid: (uses[g][w], rng.random()))
            widths[gid] = next((w for w in ranked if _only_new_pairs(gid, w, widths, coupled[gid], seen)), ranked[0])
            uses[gid][widths[gid]] += 1
        seen.update((a, b, widths[a], widths[b]) for a, b in all_pairs)
        variant = Variant.of({g.id: widths[g.id] for g in groups})
        if variant.key not in keys:
            keys.add(variant.key)
            variants.append(variant)
    known = {g.id for g in groups}
    branches = [b for b in branches if set(b.groups) <= known]
    depth_rng = random.Random(seed + 1)  # apart, so the width-only variants stay those of earlier profiles
    for i in range(round(n_variants * depth_share) if branches else 0):
        widths = dict(variants[1 + i % (len(variants) - 1)].widths if len(variants) > 1 else dense.widths)
        removed = [b for b in branches if depth_rng.random() < removal_rate] or [depth_rng.choice(branches)]
        widths.update({gid: 0 for b in removed for gid in b.groups})
        variant = Variant.of(widths)
        if variant.key not in keys:
            keys.add(variant.key)
            variants.append(variant)
    return variants
