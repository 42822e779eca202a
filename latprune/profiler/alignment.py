"""Detect a backend's channel alignment step from layer timings.

On CPUs with wide vector units latency is a staircase in the channel count: a conv with
cin = 127 can run like (or slower than) one with 128. For each candidate step, each
layer family (same layer, varying widths) is fitted with latency ~ a + b * MACs where
channels are rounded up to the step; the step whose fits leave the smallest relative
residuals is the detected alignment (1 means no staircase).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from latprune.network import LayerSignature

CANDIDATE_STEPS = (1, 2, 4, 8, 16, 32)


def detect_alignment_step(
    timings: Sequence[tuple[LayerSignature, float]], min_points: int = 8, min_gain: float = 0.05
) -> tuple[int | None, dict[int, float]]:
    """Return the detected step (None if inconclusive) and each step's median relative fit error.

    A step is only claimed when its fit beats the no-staircase fit (step 1) by at least
    ``min_gain``, and "no staircase" (1) only when every step fits that much worse; on a
    noisy host all steps fit about equally and nothing is claimed.
    """
    families: dict[tuple, list[tuple[LayerSignature, float]]] = defaultdict(list)
    for signature, ms in timings:
        if signature.kind == "conv" and ms > 0:
            families[signature.family()].append((signature, ms))
    usable = [f for f in families.values() if len(f) >= min_points]
    if not usable:
        return None, {}
    scores = {}
    for step in CANDIDATE_STEPS:
        errors = []
        for family in usable:
            x = np.array([s.padded_macs(step) for s, _ in family])
            y = np.array([ms for _, ms in family])
            design = np.stack([np.ones_like(x), x], axis=1)
            coef, *_ = np.linalg.lstsq(design, y, rcond=None)
            errors.append(float(np.median(np.abs(design @ coef - y) / y)))
        scores[step] = statistics.median(errors)
    best = min(scores.values())
    # Prefer the smallest step whose fit is within 2% of the best one.
    chosen = min(s for s, e in scores.items() if e <= best * 1.02 + 1e-12)
    if chosen != 1 and best > scores[1] * (1 - min_gain):
        return None, scores  # a staircase fits no better than a smooth line
    if chosen == 1 and min(e for s, e in scores.items() if s != 1) < scores[1] * (1 + min_gain):
        return None, scores  # a smooth line fits no better than a staircase
    return chosen, scores
