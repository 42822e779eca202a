"""The dense network's quiet-host time, and how much slower a round ran than that.

The profiler and the closed loop divide each round's layer times by how much slower than its
quiet time the dense network ran beside them, so a slow minute does not become a slow layer;
paired ratios count only the rounds near it (:func:`~latprune.network.measurement.quiet_rounds`).
Measured on the 2-core AVX2 host: each timing visit (a fresh ONNX Runtime worker process) of cifar
resnet20 runs either at about 0.82 ms or, in about one visit in seven, at 0.62 ms, independently of
the visits before and after it. With the fastest check as the quiet time, every variant timed after
one fast check was stored 1.3x too fast (the closed loop then measured resnet20 plans 49-62% over
their predictions, and the README's `plan --speedup 2` failed), and a fast check says nothing about
the visits after it. So the quiet time is the lower quartile of the checks
(slow spells, even half of the time, stay out of it; a fast minority changes nothing), and a
round is only ever scaled down for running slow, never up for a fast check.
"""

from __future__ import annotations

from collections.abc import Iterable

QUIET_QUANTILE = 0.25


def quiet_reference_ms(checks: Iterable[float]) -> float:
    """The quiet-host time of the dense network from its timed checks (ms): their lower quartile (nearest rank:
    the second fastest of three, the fastest of one or two)."""
    ordered = sorted(float(c) for c in checks)
    if not ordered:
        raise ValueError("no timed checks of the dense network")
    return ordered[int(QUIET_QUANTILE * (len(ordered) - 1) + 0.5)]


def slowdown_factor(check_ms: float, quiet_ms: float) -> float:
    """How much slower than quiet a round ran, judged by the dense network's time in it: at least 1."""
    return max(1.0, check_ms / quiet_ms)
