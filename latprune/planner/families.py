"""Families of plans where residual branches can be removed: depth and width, width only, depth only.

Removal damages do not add up (two removed blocks hurt more than the sum of each alone), so the calibrated search
starts from, and searches, each family apart (:mod:`latprune.planner.search`); a plan's structure names the family
it belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from latprune.planner.api import PlanningInputs


def plan_families(candidates: Sequence[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Per family of plans, which candidate widths of each group it forbids. Without a removable branch (no
    group has a width-0 candidate) there is one family; else depth and width, width only, depth only. Families
    forbidding the same widths are one, named by the later (narrower) name: where every candidate is 0 or the
    full width, depth and width is depth only."""
    free = [np.zeros(len(c), dtype=bool) for c in candidates]
    if not any((np.asarray(c) == 0).any() for c in candidates):
        return {"": free}
    families = {"depth and width": free,
                "width only": [np.asarray(c) == 0 for c in candidates],
                "depth only": [(np.asarray(c) != 0) & (np.asarray(c) != c[-1]) for c in candidates]}
    names: dict[bytes, str] = {}
    for name, forbidden in families.items():
        names[b"|".join(f.tobytes() for f in forbidden)] = name
    return {name: families[name] for name in names.values()}


def structure_of(inputs: PlanningInputs, widths: Sequence[int]) -> str:
    """What a plan does, by the names of :func:`plan_families`: depth and width, depth only or width only."""
    removes = bool(inputs.removed_at(widths))
    narrows = any(0 < w < full for w, full in zip(widths, inputs.full_widths))
    return "depth and width" if removes and narrows else "depth only" if removes else "width only"
